"""The discrete-event pipeline of one GEMM: its separate vector passes, then the DMA, the MAC
array and the scaling unit running concurrently over its tiles (simpy processes wired by the
SRAM's Stores and Containers, sharing the DRAM channel).

Events, not cycles: one event per tile movement or tile computation, so the cost of a simulation
grows with the number of tiles. With ``compress`` silent stretches are one event each
(`fourbit.hwsim.blocks.dma`), tested equal to tile-by-tile simulation. Each GEMM runs in a fresh
Environment and ends with every block idle, so its timing depends on nothing before it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import simpy

from fourbit.hwsim.blocks.dma import Dma
from fourbit.hwsim.blocks.dram import Dram
from fourbit.hwsim.blocks.mac_array import MacArray
from fourbit.hwsim.blocks.scaling_unit import ScalingUnit, op_cost
from fourbit.hwsim.blocks.sram import Sram
from fourbit.hwsim.config import ChipConfig
from fourbit.hwsim.jobs import Job
from fourbit.traces.errors import SimulationError
from fourbit.traces.formats import get_format

__all__ = ["Timing", "run_env", "simulate_gemm", "simulate_passes", "vector_pass"]


def vector_pass(env: simpy.Environment, dram: Dram, lanes: float, ops: list):
    """One separate pass of the scaling unit over memory for consecutive unfused ops of a
    (layer, phase): it reads the first op's input once (plus any op's extra state), runs every
    op's lane work, and writes what the ops emit."""
    if not ops:
        return
    first_op, first_elements, first_in, _ = ops[0]
    read = first_elements * get_format(first_in).bytes_per_value
    lane = write = 0.0
    for op, elements, _, fout in ops:
        c = op_cost(op)
        read += elements * c.extra_read_bytes
        lane += elements * c.lane_ops
        write += elements * c.extra_write_bytes + (elements * get_format(fout).bytes_per_value if c.emits else 0)
    yield from dram.transfer(read, write=False)
    if not math.isinf(lanes):
        busy = math.ceil(lane / lanes - 1e-9)
        if busy:
            yield env.timeout(busy)
    yield from dram.transfer(write, write=True)


@dataclass(frozen=True)
class Timing:
    """What the discrete-event run of one GEMM (or vector pass) measured: cycles in all, of the
    separate vector passes before it, and of the array waiting for operands; DRAM bytes in all
    and of the vector passes alone; simpy events and steady-state batches."""

    total_cycles: int
    pass_cycles: int
    memory_stall_cycles: int
    dram_read_bytes: float
    dram_write_bytes: float
    events: int
    batches: int
    pass_read_bytes: float = 0.0
    pass_write_bytes: float = 0.0


def run_env(env: simpy.Environment, procs: list, what: str, blocks: dict) -> int:
    """Run ``env`` to the end, counting events; a process still alive then is a deadlock."""
    events = 0
    while env.peek() != math.inf:
        env.step()
        events += 1
    if any(p.is_alive for p in procs):
        sram = blocks.get("sram")
        state = ""
        if sram is not None:
            state = (f" (free input halves {sram.free.level}, tiles loaded {len(sram.loaded.items)}, "
                     f"outputs waiting {len(sram.outputs.items)})")
        raise SimulationError(f"deadlock at cycle {env.now} in {what}{state}")
    return events


def simulate_gemm(job: Job, chip: ChipConfig, compress: bool) -> Timing:
    """One GEMM in a fresh Environment: its separate vector passes, then the DMA, the array and
    the scaling unit running concurrently over its tiles. GEMMs run one after another and each
    ends with every block idle, so a GEMM's timing depends on nothing before it."""
    env = simpy.Environment()
    # one core's share: the cores run in lockstep and split the DRAM channel evenly
    dram = Dram(env, chip.bytes_per_cycle / job.cores, chip.dram.latency_cycles)
    sram = Sram(env, chip.sram.double_buffered)
    scaling = ScalingUnit(env, sram, dram, chip.scaling.lanes, job.path)
    dma = Dma(env, dram, sram, chip.dma.setup_cycles, compress,
              quiet=lambda: scaling.waiting and not sram.outputs.items and dram.idle())
    array = MacArray(env, sram)
    n_out = job.plan.output_tiles
    marks = {}

    share = [(op, -(-elements // job.cores), fin, fout) for op, elements, fin, fout in job.passes]

    def gemm():
        yield from vector_pass(env, dram, chip.scaling.lanes, share)
        marks["passes"] = (env.now, dram.read_bytes, dram.write_bytes)
        procs = [env.process(dma.run(job.plan.segments)), env.process(array.run(job.plan.tiles)),
                 env.process(scaling.run(n_out))]
        marks["procs"] = procs
        yield simpy.AllOf(env, procs)

    top = env.process(gemm())
    what = f"GEMM {job.row['layer']} {job.row['phase']}"
    events = run_env(env, [top, *marks.get("procs", [])], what,
                      {"dma": dma, "array": array, "scaling": scaling, "sram": sram})
    if array.busy_cycles != job.plan.compute_cycles:
        raise SimulationError(f"{what}: the array was busy {array.busy_cycles} cycles, the plan has "
                              f"{job.plan.compute_cycles}")
    pass_cycles, pass_read, pass_write = marks["passes"]
    return Timing(int(env.now), int(pass_cycles), int(array.operand_wait_cycles), dram.read_bytes,
                  dram.write_bytes, events, dma.batches, pass_read, pass_write)


def simulate_passes(ops: list, chip: ChipConfig) -> Timing:
    """Separate vector passes on their own (ops whose GEMM is not simulated)."""
    env = simpy.Environment()
    dram = Dram(env, chip.bytes_per_cycle, chip.dram.latency_cycles)
    top = env.process(vector_pass(env, dram, chip.scaling.lanes, ops))
    events = run_env(env, [top], "a vector pass", {})
    return Timing(int(env.now), int(env.now), 0, dram.read_bytes, dram.write_bytes, events, 0, dram.read_bytes,
                  dram.write_bytes)

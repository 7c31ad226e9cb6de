"""The discrete-event pipeline of one GEMM: the DMA, the MAC array and the scaling unit running
concurrently over its tiles (simpy processes wired by the SRAM's Stores and Containers, sharing
the DRAM channel); and the separate vector passes that run before it (`simulate_passes`: they
end with the channel idle, so the GEMM's timing is the same whatever came before it, and
`Timing.after` adds the two).

Events, not cycles: one event per tile movement or tile computation, so the cost of a simulation
grows with the number of tiles walked. With ``compress`` silent stretches are one event each
(`fourbit.hwsim.blocks.dma`) and whole periods of a repeating plan are jumped over once the
pipeline's state recurs (`fourbit.hwsim.periodic`), both tested equal to tile-by-tile simulation. Each GEMM runs in a fresh
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
from fourbit.hwsim.periodic import Periodic
from fourbit.traces.errors import SimulationError
from fourbit.traces.formats import get_format

__all__ = ["Abandoned", "Timing", "run_env", "simulate_gemm", "simulate_passes", "vector_pass"]


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

    def after(self, passes: Timing) -> Timing:
        """This GEMM's timing run after the vector ``passes`` (a `simulate_passes` timing)."""
        return Timing(passes.total_cycles + self.total_cycles, passes.total_cycles, self.memory_stall_cycles,
                      passes.dram_read_bytes + self.dram_read_bytes, passes.dram_write_bytes + self.dram_write_bytes,
                      passes.events + self.events, self.batches, passes.dram_read_bytes, passes.dram_write_bytes)


class Abandoned(Exception):  # noqa: N818 (an outcome, not an error)
    """A simulation stopped once it passed its cycle limit (``until``): it cannot finish sooner.
    ``events``: the events it ran."""

    def __init__(self, events: int) -> None:
        super().__init__(events)
        self.events = events


def run_env(env: simpy.Environment, procs: list, what: str, blocks: dict, until: int | None = None) -> int:
    """Run ``env`` to the end, counting events; a process still alive then is a deadlock.

    Raises `Abandoned` as soon as the next event lies past ``until`` cycles (the run would end
    later), SimulationError on a deadlock."""
    events = 0
    while env.peek() != math.inf:
        if until is not None and env.peek() > until:
            raise Abandoned(events)
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


def simulate_gemm(job: Job, chip: ChipConfig, compress: bool, until: int | None = None) -> Timing:
    """The GEMM of ``job`` (its tiles; not its vector passes) in a fresh Environment: the DMA,
    the array and the scaling unit running concurrently. It ends with every block idle, so a
    GEMM's timing depends on nothing before it. Raises `Abandoned` once it passes ``until``
    cycles (the mapper's cut-off: the candidate cannot beat the best found)."""
    env = simpy.Environment()
    # one core's share: the cores run in lockstep and split the DRAM channel evenly
    dram = Dram(env, chip.bytes_per_cycle / job.cores, chip.dram.latency_cycles)
    sram = Sram(env, chip.sram.double_buffered)
    scaling = ScalingUnit(env, sram, dram, chip.scaling.lanes, job.path)
    dma = Dma(env, dram, sram, chip.dma.setup_cycles, compress,
              quiet=lambda: scaling.waiting and not sram.outputs.items and dram.idle())
    array = MacArray(env, sram)
    procs = {"dma": env.process(dma.run(job.plan.segments)), "array": env.process(array.run(job.plan.tiles)),
             "scaling": env.process(scaling.run(job.plan.output_tiles))}
    if compress:  # whole periods of a repeating plan at once (exact; tested against the walk)
        dma.periodic = Periodic(env, procs, {"free": sram.free, "loaded": sram.loaded, "outputs": sram.outputs,
                                             "channel": dram.channel},
                                [dma, array, scaling, sram, dram],
                                {"array": array.state, "scaling": scaling.state, "dram": dram.state})
    what = f"GEMM {job.row['layer']} {job.row['phase']}"
    events = run_env(env, list(procs.values()), what,
                     {"dma": dma, "array": array, "scaling": scaling, "sram": sram}, until)
    if array.busy_cycles != job.plan.compute_cycles:
        raise SimulationError(f"{what}: the array was busy {array.busy_cycles} cycles, the plan has "
                              f"{job.plan.compute_cycles}")
    jumps = dma.periodic.jumps if dma.periodic else 0
    return Timing(int(env.now), 0, int(array.operand_wait_cycles), dram.read_bytes, dram.write_bytes, events,
                  dma.batches + jumps)


def simulate_passes(ops: list, chip: ChipConfig, cores: int = 1) -> Timing:
    """Separate vector passes on their own: one core's share of them when ``cores`` split the
    work and the DRAM channel (the passes before a GEMM), else the whole chip's."""
    env = simpy.Environment()
    dram = Dram(env, chip.bytes_per_cycle / cores, chip.dram.latency_cycles)
    share = [(op, -(-elements // cores), fin, fout) for op, elements, fin, fout in ops]
    top = env.process(vector_pass(env, dram, chip.scaling.lanes, share))
    events = run_env(env, [top], "a vector pass", {})
    return Timing(int(env.now), int(env.now), 0, dram.read_bytes, dram.write_bytes, events, 0, dram.read_bytes,
                  dram.write_bytes)

"""The engine: builds the blocks from a `ChipConfig`, runs one training step of a trace through
them in a simpy Environment, detects deadlock, and accounts energy.

GEMMs run one after another in trace order (forward layers, then the backward layers); inside
a GEMM the DMA, the MAC array and the scaling unit are concurrent processes wired by the SRAM's
Stores and Containers and sharing the DRAM channel. Events, not cycles: one event per tile
movement or tile computation, so the cost of a simulation grows with the number of tiles. A
run of identical tiles is simulated tile by tile unless ``compress`` lets `_steady_state` skip
whole periods of an exactly periodic schedule (tested equal to tile-by-tile simulation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import simpy

from hwsim.blocks.dma import Dma
from hwsim.blocks.dram import Dram
from hwsim.blocks.mac_array import MacArray
from hwsim.blocks.scaling_unit import OutputPath, ScalingUnit, op_cost, output_path
from hwsim.blocks.sram import Sram
from hwsim.config import ChipConfig
from hwsim.energy import energy_table, sram_pj_per_bit
from hwsim.mapping import TilePlan, plan_gemm
from hwsim.report import GemmResult, SimReport
from hwsim.units import add_energy_pj, mac_energy_pj, select_unit
from traces.errors import SimulationError
from traces.formats import get_format
from traces.io import Trace

__all__ = ["simulate"]

_PSUM_BYTES = {"int32": 4, "fp32": 4, "fp16": 2, "dlfloat16": 2}


@dataclass
class _Job:
    """One GEMM of the trace, mapped."""

    row: dict
    unit: object
    plan: TilePlan
    path: OutputPath
    passes: list  # unfused ops: (op, elements, in_format, out_format)


def _peak_pj_per_cycle(chip: ChipConfig, table: dict) -> float:
    """Dynamic energy per cycle of the PE array at full rate in its most expensive mode."""
    best = 0.0
    for kind, unit in chip.units.items():
        p = chip.unit_macs_per_pe(kind)
        best = max(best, p * (mac_energy_pj(kind, chip, table) + add_energy_pj(kind, unit.accumulator, table) / p))
    return best * chip.array.rows * chip.array.cols


MAX_TILES = 20_000_000
"""Tiles one simulation may walk (about an hour of simulation); a larger GEMM is refused."""


def _jobs(trace: Trace, chip: ChipConfig, table: dict, input_grad: bool) -> tuple[list[_Job], list]:
    ops = trace.ops
    fused: dict[tuple[str, str], list] = {}
    passes: dict[tuple[str, str], list] = {}
    for r in ops.itertuples(index=False):
        key = (r.layer, r.phase)
        if bool(r.fused):
            fused.setdefault(key, []).append((r.op, int(r.elements), r.out_format))
        else:
            passes.setdefault(key, []).append((r.op, int(r.elements), r.in_format, r.out_format))
    jobs = []
    a = chip.array
    rows = trace.gemms.to_dict("records")
    fwd = [r["layer"] for r in rows if r["phase"] == "fwd"]
    input_layer = fwd[0] if fwd else None
    total_tiles = 0
    for row in rows:
        if not input_grad and row["phase"] == "bwd_data" and row["layer"] == input_layer:
            fused.pop((row["layer"], row["phase"]), None)
            passes.pop((row["layer"], row["phase"]), None)
            continue  # training never needs the gradient of the input data
        unit = select_unit(chip, row["a_format"], row["b_format"])
        psum = _PSUM_BYTES[unit.accumulator]
        plan = plan_gemm(int(row["M"]), int(row["N"]), int(row["K"]), int(row["groups"]),
                         a.rows, a.cols, unit.macs_per_pe, a.dataflow, unit.a_bits / 8,
                         unit.b_bits / 8, psum, chip.sram.ifmap_bytes, chip.sram.filter_bytes,
                         chip.sram.ofmap_bytes, a.overlap_fill_drain)
        total_tiles += plan.tiles
        if total_tiles > MAX_TILES:
            raise SimulationError(
                f"GEMM {row['layer']} {row['phase']} (M={row['M']}, N={row['N']}, K={row['K']}) brings the "
                f"step to {total_tiles:,} tiles on this chip, more than {MAX_TILES:,} (hours of "
                f"simulation); use a larger array or larger SRAM buffers"
            )
        key = (row["layer"], row["phase"])
        out_elems = int(row["M"]) * int(row["N"]) * int(row["groups"])
        # mixed precision: FP32 results of FP16 units are stored as FP16, like their operands
        store = "fp16" if unit.kind == "fp16" and row["out_format"] == "fp32" else row["out_format"]
        path = output_path(fused.pop(key, []), out_elems, store, table)
        jobs.append(_Job(row, unit, plan, path, passes.pop(key, [])))
    leftovers = [(k, v) for k, v in passes.items()] + [(k, [(o, e, "fp32", f) for o, e, f in v]) for k, v in fused.items()]
    return jobs, leftovers


def _tiles(plan: TilePlan):
    for tile, repeat in plan.runs:
        for _ in range(repeat):
            yield tile


def _vector_pass(env: simpy.Environment, dram: Dram, lanes: float, op: str, elements: int,
                 in_format: str, out_format: str):
    """A separate pass of the scaling unit over memory: read, compute, write."""
    c = op_cost(op)
    yield from dram.transfer(elements * (get_format(in_format).bytes_per_value + c.extra_read_bytes), write=False)
    if not math.isinf(lanes):
        busy = math.ceil(elements * c.lane_ops / lanes - 1e-9)
        if busy:
            yield env.timeout(busy)
    out = elements * c.extra_write_bytes + (elements * get_format(out_format).bytes_per_value if c.emits else 0)
    yield from dram.transfer(out, write=True)


class _Runner:
    """Runs the jobs in order and collects one `GemmResult` per job."""

    def __init__(self, env: simpy.Environment, chip: ChipConfig, table: dict) -> None:
        self.env = env
        self.chip = chip
        self.table = table
        self.dram = Dram(env, chip.bytes_per_cycle, chip.dram.latency_cycles)
        self.results: list[GemmResult] = []
        self.current: str = ""
        self.blocks: dict = {}

    def run(self, jobs: list[_Job], leftovers: list):
        for job in jobs:
            yield from self._job(job)
        for (layer, phase), ops in leftovers:
            start = self.env.now
            r0, w0 = self.dram.read_bytes, self.dram.write_bytes
            for op, elements, fin, fout in ops:
                yield from _vector_pass(self.env, self.dram, self.chip.scaling.lanes, op, elements, fin, fout)
            self.results.append(GemmResult.vector(layer, phase, self.env.now - start,
                                                  self.dram.read_bytes - r0, self.dram.write_bytes - w0,
                                                  self._pass_energy(ops)))

    def _pass_energy(self, ops) -> float:
        return sum(sum(self.table[e] for e in op_cost(op).events) * elements for op, elements, *_ in ops)

    def _job(self, job: _Job):
        env, chip = self.env, self.chip
        self.current = f"{job.row['layer']} {job.row['phase']}"
        start = env.now
        r0, w0 = self.dram.read_bytes, self.dram.write_bytes
        for op, elements, fin, fout in job.passes:
            yield from _vector_pass(env, self.dram, chip.scaling.lanes, op, elements, fin, fout)
        pass_cycles = env.now - start
        sram = Sram(env, chip.sram.double_buffered)
        dma = Dma(env, self.dram, sram, chip.dma.setup_cycles)
        array = MacArray(env, sram)
        scaling = ScalingUnit(env, sram, self.dram, chip.scaling.lanes, job.path)
        n_tiles = job.plan.tiles
        n_out = sum(r for t, r in job.plan.runs if t.out_elements or t.spill_psum_bytes)
        self.blocks = {"dma": dma, "array": array, "scaling": scaling, "sram": sram}
        procs = [env.process(dma.run(_tiles(job.plan))), env.process(array.run(n_tiles)),
                 env.process(scaling.run(n_out))]
        yield simpy.AllOf(env, procs)
        total = env.now - start
        if array.busy_cycles != job.plan.compute_cycles:
            raise SimulationError(f"{self.current}: array busy {array.busy_cycles} != plan {job.plan.compute_cycles}")
        self.results.append(self._result(job, total, pass_cycles, array.operand_wait_cycles,
                                         self.dram.read_bytes - r0, self.dram.write_bytes - w0))

    def _result(self, job: _Job, total: int, pass_cycles: int, memory_stall: int,
                dram_read: float, dram_write: float) -> GemmResult:
        chip, table, plan, unit, row = self.chip, self.table, job.plan, job.unit, job.row
        macs = plan.macs
        gate = 0.0
        if chip.energy.gate_zeros:
            za, zb = row.get("a_zero_frac"), row.get("b_zero_frac")
            za = 0.0 if za is None or za != za else float(za)
            zb = 0.0 if zb is None or zb != zb else float(zb)
            gate = za + zb - za * zb
        mac_pj = macs * (1 - gate) * mac_energy_pj(unit.kind, chip, table)
        adds = math.ceil(macs / unit.macs_per_pe)
        acc_pj = adds * add_energy_pj(unit.kind, unit.accumulator, table)
        psum_bits = 8 * _PSUM_BYTES[unit.accumulator]
        reg_pj = (macs * (unit.a_bits + unit.b_bits) + adds * 2 * psum_bits) * table["reg.bit"]
        sizes = {"ifmap": chip.sram.ifmap_bytes, "filter": chip.sram.filter_bytes, "ofmap": chip.sram.ofmap_bytes}
        sram_pj = sum(bits["read"] * sram_pj_per_bit(sizes[b], table) + bits["write"] * sram_pj_per_bit(sizes[b], table, True)
                      for b, bits in plan.sram_bits.items())
        dram_pj = (dram_read + dram_write) * 8 * table[f"dram.bit.{chip.dram.kind}"]
        out_elems = int(row["M"]) * int(row["N"]) * int(row["groups"])
        scaling_pj = out_elems * job.path.energy_pj + self._pass_energy(job.passes)
        leak_pj = chip.energy.leakage_fraction * _peak_pj_per_cycle(chip, table) * total
        compulsory_read = (row["M"] * row["K"] * unit.a_bits / 8 + row["K"] * row["N"] * unit.b_bits / 8) * row["groups"]
        compulsory_read += out_elems * job.path.read_bytes
        compulsory_write = out_elems * job.path.write_bytes
        return GemmResult(
            layer=row["layer"], phase=row["phase"], unit=unit.kind, note=unit.note,
            M=int(row["M"]), N=int(row["N"]), K=int(row["K"]), groups=int(row["groups"]),
            macs=macs, folds=plan.folds, tiles=plan.tiles, compute_cycles=plan.compute_cycles,
            total_cycles=int(total), memory_stall_cycles=int(memory_stall),
            scaling_stall_cycles=int(total - plan.compute_cycles - memory_stall),
            vector_pass_cycles=int(pass_cycles),
            peak_macs_per_cycle=chip.array.rows * chip.array.cols * unit.macs_per_pe,
            dram_read_bytes=float(dram_read), dram_write_bytes=float(dram_write),
            compulsory_read_bytes=float(compulsory_read), compulsory_write_bytes=float(compulsory_write),
            sram_read_bytes=sum(b["read"] for b in plan.sram_bits.values()) / 8,
            sram_write_bytes=sum(b["write"] for b in plan.sram_bits.values()) / 8,
            energy_mac_pj=mac_pj, energy_acc_pj=acc_pj, energy_reg_pj=reg_pj, energy_sram_pj=sram_pj,
            energy_dram_pj=dram_pj, energy_scaling_pj=scaling_pj, energy_leakage_pj=leak_pj,
        )


def simulate(trace: Trace, chip: ChipConfig, step: int | None = None, *,
             input_grad: bool = False) -> SimReport:
    """Simulate one training step of ``trace`` on ``chip``.

    Parameters
    ----------
    trace : Trace
        A training trace (`traces.read`); shape-only traces are fine.
    chip : ChipConfig
    step : int, optional
        The recorded step to simulate (default: the last one).
    input_grad : bool
        Also simulate ``bwd_data`` of the input layer (the gradient of the data, which training
        never needs; the trace records it for completeness). Default False.

    Returns
    -------
    SimReport

    Raises
    ------
    ConfigError
        A GEMM whose formats no unit of the chip supports, or a buffer too small for a tile.
    SimulationError
        The processes deadlocked (the message names the GEMM and the blocks' states), or the step
        has more than `MAX_TILES` tiles on this chip.
    TraceError
        The step was not recorded.
    """
    t = trace.step(step)
    table = energy_table(chip.energy.table, chip.energy.overrides)
    jobs, leftovers = _jobs(t, chip, table, input_grad)
    env = simpy.Environment()
    runner = _Runner(env, chip, table)
    top = env.process(runner.run(jobs, leftovers))
    env.run()
    if top.is_alive:
        sram = runner.blocks.get("sram")
        state = ""
        if sram is not None:
            state = (f" (free input halves {sram.free.level}, tiles loaded {len(sram.loaded.items)}, "
                     f"outputs waiting {len(sram.outputs.items)})")
        raise SimulationError(f"deadlock at cycle {env.now} in GEMM {runner.current}{state}")
    return SimReport(chip, runner.results, dict(trace.meta))

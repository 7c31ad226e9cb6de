"""The engine: builds the blocks from a `ChipConfig`, runs one training step of a trace through
them in a simpy Environment, detects deadlock, and accounts energy.

GEMMs run one after another in trace order (forward layers, then the backward layers); inside
a GEMM the DMA, the MAC array and the scaling unit are concurrent processes wired by the SRAM's
Stores and Containers and sharing the DRAM channel. Events, not cycles: one event per tile
movement or tile computation, so the cost of a simulation grows with the number of tiles. A
run of identical tiles is simulated tile by tile unless ``compress``: then silent stretches are
one event each (`fourbit.hwsim.blocks.dma`), tested equal to tile-by-tile simulation. With
``extrapolate`` (sweeps use it), long runs and repeated segments are measured on short probes and
extended by their steady-state increments (`_extended`): total cycles, DRAM bytes and energy are
tested equal to the full simulation; how the stall splits between memory and scaling unit may
differ where the blocks settle into their period later than the probes reach.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass

import simpy

from fourbit.hwsim.blocks.dma import Dma
from fourbit.hwsim.blocks.dram import Dram
from fourbit.hwsim.blocks.mac_array import MacArray
from fourbit.hwsim.blocks.scaling_unit import OutputPath, ScalingUnit, op_cost, output_path
from fourbit.hwsim.blocks.sram import Sram
from fourbit.hwsim.config import ChipConfig, load_chip
from fourbit.hwsim.energy import energy_table, sram_pj_per_bit
from fourbit.hwsim.mapping import TilePlan, plan_gemm
from fourbit.hwsim.report import GemmResult, SimReport
from fourbit.hwsim.units import add_energy_pj, mac_energy_pj, select_unit
from fourbit.traces.errors import ConfigError, SimulationError
from fourbit.traces.formats import get_format
from fourbit.traces.io import Trace, read

__all__ = ["simulate"]

_PSUM_BYTES = {"int32": 4, "fp32": 4, "fp16": 2, "dlfloat16": 2}


@dataclass
class _Job:
    """One GEMM of the trace, mapped."""

    row: dict
    unit: object
    plan: TilePlan  # of one core's share of the GEMM
    path: OutputPath
    passes: list  # unfused ops: (op, elements, in_format, out_format)
    cores: int = 1


def _peak_pj_per_cycle(chip: ChipConfig, table: dict) -> float:
    """Dynamic energy per cycle of the PE array at full rate in its most expensive mode."""
    best = 0.0
    for kind, unit in chip.units.items():
        p = chip.unit_macs_per_pe(kind)
        best = max(best, p * (mac_energy_pj(kind, chip, table) + add_energy_pj(kind, unit.accumulator, table) / p))
    return best * chip.array.rows * chip.array.cols


MAX_TILES = 5_000_000
"""Tiles one simulation may walk one by one (tens of minutes of simulation); more is refused."""


def _too_many(row: dict, tiles: int, what: str) -> SimulationError:
    return SimulationError(
        f"GEMM {row['layer']} {row['phase']} (M={row['M']}, N={row['N']}, K={row['K']}) brings {what} to "
        f"{tiles:,} tiles to simulate one by one on this chip, more than {MAX_TILES:,}; use a larger "
        "array, larger SRAM buffers or steady-state extrapolation (--extrapolate)")


def _jobs(trace: Trace, chip: ChipConfig, table: dict, input_grad: bool,
          compress: bool = True) -> tuple[list[_Job], list]:
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
        m, n = int(row["M"]), int(row["N"])
        cores = chip.chip.cores
        if cores > 1:  # the cores split the larger output dimension evenly
            m, n = (-(-m // cores), n) if m >= n else (m, -(-n // cores))
        plan = plan_gemm(m, n, int(row["K"]), int(row["groups"]),
                         a.rows, a.cols, unit.macs_per_pe, a.dataflow, unit.a_bits / 8,
                         unit.b_bits / 8, psum, chip.sram.ifmap_bytes, chip.sram.filter_bytes,
                         chip.sram.ofmap_bytes, a.overlap_fill_drain, chip.bytes_per_cycle / cores)
        if not compress:  # every tile walked: refuse a step that would take tens of minutes
            total_tiles += plan.tiles
            if total_tiles > MAX_TILES:
                raise _too_many(row, total_tiles, "the step")
        key = (row["layer"], row["phase"])
        out_elems = int(row["M"]) * int(row["N"]) * int(row["groups"])
        # mixed precision: FP32 results of FP16 units are stored as FP16, like their operands
        store = "fp16" if unit.kind == "fp16" and row["out_format"] == "fp32" else row["out_format"]
        path = output_path(fused.pop(key, []), out_elems, store, table)
        jobs.append(_Job(row, unit, plan, path, passes.pop(key, []), cores))
    leftovers = [(k, v) for k, v in passes.items()] + [(k, [(o, e, "fp32", f) for o, e, f in v]) for k, v in fused.items()]
    return jobs, leftovers


def _vector_pass(env: simpy.Environment, dram: Dram, lanes: float, ops: list):
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
class _Timing:
    """What the discrete-event run of one GEMM (or vector pass) measured."""

    total_cycles: int
    pass_cycles: int
    memory_stall_cycles: int
    dram_read_bytes: float
    dram_write_bytes: float
    events: int
    batches: int


def _run_env(env: simpy.Environment, procs: list, what: str, blocks: dict) -> int:
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


def _simulate_gemm(job: _Job, chip: ChipConfig, compress: bool) -> _Timing:
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
        yield from _vector_pass(env, dram, chip.scaling.lanes, share)
        marks["passes"] = env.now
        procs = [env.process(dma.run(job.plan.segments)), env.process(array.run(job.plan.tiles)),
                 env.process(scaling.run(n_out))]
        marks["procs"] = procs
        yield simpy.AllOf(env, procs)

    top = env.process(gemm())
    what = f"GEMM {job.row['layer']} {job.row['phase']}"
    events = _run_env(env, [top, *marks.get("procs", [])], what,
                      {"dma": dma, "array": array, "scaling": scaling, "sram": sram})
    if array.busy_cycles != job.plan.compute_cycles:
        raise SimulationError(f"{what}: the array was busy {array.busy_cycles} cycles, the plan has "
                              f"{job.plan.compute_cycles}")
    return _Timing(int(env.now), int(marks["passes"]), int(array.operand_wait_cycles), dram.read_bytes,
                   dram.write_bytes, events, dma.batches)


# ---------------------------------------------------------------------------------------------
# steady state: long runs and many repetitions measured on a few, then extended exactly
# ---------------------------------------------------------------------------------------------
PROBE = 4
"""Tiles per run and repetitions per segment that the probe simulations keep (then 8, 16, 32)."""
EXTEND_ABOVE = 1024
"""Plans with more output tiles than this are extended from probes; others simulated whole."""
MAX_PROBE = 32
"""The longest probe; a plan whose increments do not settle by then is simulated tile by tile."""
MAX_INCREMENTS = 8
"""Most runs and repeated segments a plan may have for probing to pay off."""


@dataclass(frozen=True)
class _PlanView:
    """A tile plan with other run counts and repeats (what `_simulate_gemm` reads of a plan)."""

    segments: list

    def _sum(self, value) -> int:
        return int(sum(sum(value(t) * k for t, k in pat) * r for pat, r in self.segments))

    @property
    def tiles(self) -> int:
        return self._sum(lambda t: 1)

    @property
    def output_tiles(self) -> int:
        return self._sum(lambda t: 0 if t.silent else 1)

    @property
    def compute_cycles(self) -> int:
        return self._sum(lambda t: t.compute_cycles)


def _counters(t: _Timing) -> tuple:
    return (t.total_cycles, t.memory_stall_cycles, t.dram_read_bytes, t.dram_write_bytes)


def _probe(job: _Job, chip: ChipConfig, compress: bool, counts: list, repeats: list) -> tuple:
    segments = [(tuple((tile, counts[s][j]) for j, (tile, _) in enumerate(pat)), repeats[s])
                for s, (pat, _) in enumerate(job.plan.segments)]
    view = _Job(job.row, job.unit, _PlanView(segments), job.path, job.passes, job.cores)
    t = _simulate_gemm(view, chip, compress)
    return _counters(t), t


def _extended(job: _Job, chip: ChipConfig, compress: bool, probe: int = PROBE) -> _Timing | None:
    """The timing of ``job`` from probe simulations in which every run keeps at most ``probe``
    tiles and every segment at most ``probe`` repetitions, or None when it does not apply.

    A pipeline of finite buffers fed identical tiles settles into a period: once there, one more
    period of a run (or of a segment's repetitions) adds the same amount to every counter.
    Each such increment is measured over a period of 1 or 2 tiles and checked at 2, ``probe``
    and 2 * ``probe`` periods, for every counter (cycles, memory stall, DRAM bytes); then

        T = T(probe) + sum_s [Rep_s(R_s - r_s) + R_s / r_s * sum_j Run_sj(k_sj - r_sj)]

    where Rep_s(n) is what n more repetitions of segment s add and Run_sj(n) what n more tiles
    in run j of each of its r_s probed repetitions add, and r = the count, or ``probe`` (+1 when
    that leaves an odd number to extend: a period of 2 then keeps its phase). Otherwise a
    longer probe is tried (8, 16, 32); past that, None (the caller simulates every tile). Tests
    check the totals equal the full simulation on random plans. The checks cannot see what
    happens past the probes: a transient longer than them can shift the stall's split between
    memory and scaling unit, and a run whose end meets the other blocks on an irregular beat
    can move the total by a few cycles (`simulate`, ``extrapolate``)."""
    if job.plan.output_tiles <= EXTEND_ABOVE:
        return None  # silent stretches are batched anyway: few tiles walked, no probes needed
    segs = job.plan.segments

    def kept(count: int) -> int:  # at most about ``probe``, leaving an even number to extend:
        return count if count <= probe else probe + (count - probe) % 2  # periods of 2 stay in phase

    base_counts = [[kept(k) for _, k in pat] for pat, _ in segs]
    base_reps = [kept(r) for _, r in segs]
    increments = sum(r > br for (_, r), br in zip(segs, base_reps, strict=True)) + sum(
        k > kk for (pat, _), row in zip(segs, base_counts, strict=True) for (_, k), kk in zip(pat, row, strict=True))
    if increments > MAX_INCREMENTS:
        return None  # many short segments: several probes each would cost more than the walk
    if all(k == kk for (pat, _), row in zip(segs, base_counts, strict=True)
           for (_, k), kk in zip(pat, row, strict=True)) and base_reps == [r for _, r in segs]:
        return None  # nothing to extend
    base, t0 = _probe(job, chip, compress, base_counts, base_reps)
    total = list(base)
    events, batches = t0.events, t0.batches

    def increment(counts, reps):
        """``grow(n)``, what ``n`` more tiles (or repetitions) add to every counter, or None.

        The schedule may settle into a period of q = 1 or 2 tiles: d = T(base + q) - T(base)
        must give T(base + m*q) = T(base) + m*d for m = 2, ``probe`` and 2 * ``probe`` (a
        transient still in the probe shows as a mismatch); then T(base + a*q + b) = T(base + b)
        + a*d."""
        seen = {0: base}

        def at(n: int) -> tuple:
            nonlocal events, batches
            if n not in seen:
                c, t = _probe(job, chip, compress, counts(n), reps(n))
                seen[n] = c
                events += t.events
                batches += t.batches
            return seen[n]

        def close(x: float, y: float) -> bool:
            return abs(x - y) <= 1e-9 * max(1.0, abs(y))

        for q in (1, 2):
            d = [b - a for a, b in zip(base, at(q), strict=True)]
            if all(close(a + m * x, b) for m in (2, probe, 2 * probe)
                   for a, x, b in zip(base, d, at(m * q), strict=True)):
                part = {b: [y - a for a, y in zip(base, at(b), strict=True)] for b in range(q)}
                return lambda n, d=d, q=q, part=part: [n // q * x + y for x, y in zip(d, part[n % q], strict=True)]
        return None

    for s, (pat, repeat) in enumerate(segs):
        if repeat > base_reps[s]:
            grow = increment(lambda n, s=s: base_counts,
                             lambda n, s=s: [r + n if i == s else r for i, r in enumerate(base_reps)])
            if grow is None:
                return _extended(job, chip, compress, probe * 2) if probe < MAX_PROBE else None
            total = [t + x for t, x in zip(total, grow(repeat - base_reps[s]), strict=True)]
        for j, (_, k) in enumerate(pat):
            if k > base_counts[s][j]:
                grow = increment(lambda n, s=s, j=j: [[c + n if (i, jj) == (s, j) else c for jj, c in enumerate(row)]
                                                        for i, row in enumerate(base_counts)],
                                 lambda n: base_reps)
                # the probes grew this run in each of its base_reps[s] repetitions: scaled to
                # all ``repeat`` of them, the cycle counts must stay whole
                d = [x * repeat / base_reps[s] for x in grow(k - base_counts[s][j])] if grow else None
                if d is None or any(abs(x - round(x)) > 1e-6 for x in d[:2]):
                    return _extended(job, chip, compress, probe * 2) if probe < MAX_PROBE else None
                total = [t + x for t, x in zip(total, d, strict=True)]
    cycles, stall, read, write = total
    return _Timing(int(round(cycles)), t0.pass_cycles, int(round(stall)), float(read), float(write), events, batches)


def _simulate_passes(ops: list, chip: ChipConfig) -> _Timing:
    env = simpy.Environment()
    dram = Dram(env, chip.bytes_per_cycle, chip.dram.latency_cycles)
    top = env.process(_vector_pass(env, dram, chip.scaling.lanes, ops))
    events = _run_env(env, [top], "a vector pass", {})
    return _Timing(int(env.now), int(env.now), 0, dram.read_bytes, dram.write_bytes, events, 0)


_TIMINGS: OrderedDict = OrderedDict()
"""GEMM timings already simulated in this process, keyed by everything a timing depends on
(`_timing_key`): identical GEMMs in one step, and in the points of a sweep that change only
energy or numerics (log base, energy table), are simulated once. Least recently used first out."""
_TIMINGS_MAX = 50_000


def clear_timing_cache() -> None:
    """Forget the GEMM timings simulated so far (benchmarks time cold simulations)."""
    _TIMINGS.clear()


def _timing_key(job: _Job, chip: ChipConfig, compress: bool) -> tuple:
    """What `_simulate_gemm` reads: the tile plan, the unit, the output path, the vector passes,
    the cores, and the chip's DRAM, SRAM, DMA and scaling-unit timing fields."""
    plan = job.plan
    return (tuple(plan.segments), plan.tiles, plan.output_tiles, plan.compute_cycles, job.unit, job.path,
            tuple(job.passes), job.cores, compress, chip.bytes_per_cycle, chip.dram.latency_cycles,
            chip.sram.double_buffered, chip.scaling.lanes, chip.dma.setup_cycles)


class _Runner:
    """Simulates the jobs one after another (a GEMM whose timing is known, once) and collects
    one `GemmResult` per job."""

    def __init__(self, chip: ChipConfig, table: dict, compress: bool, extrapolate: bool) -> None:
        self.chip = chip
        self.table = table
        self.compress = compress
        self.extrapolate = extrapolate
        self.extrapolated = 0
        self.results: list[GemmResult] = []
        self.events = 0
        self.batches = 0

    def run(self, jobs: list[_Job], leftovers: list) -> None:
        for job in jobs:
            key = (*_timing_key(job, self.chip, self.compress), self.extrapolate)
            timing = _TIMINGS.get(key)
            if timing is None:
                timing = _extended(job, self.chip, self.compress) if self.extrapolate else None
                self.extrapolated += timing is not None
                if timing is None:
                    if self.compress and job.plan.output_tiles > MAX_TILES:
                        raise _too_many(job.row, job.plan.output_tiles, "it")
                    timing = _simulate_gemm(job, self.chip, self.compress)
                _TIMINGS[key] = timing
                self.events += timing.events
                self.batches += timing.batches
                if len(_TIMINGS) > _TIMINGS_MAX:
                    _TIMINGS.popitem(last=False)
            else:
                _TIMINGS.move_to_end(key)
            self.results.append(self._result(job, timing))
        for (layer, phase), ops in leftovers:
            timing = _simulate_passes(ops, self.chip)
            self.events += timing.events
            self.results.append(GemmResult.vector(layer, phase, timing.total_cycles, timing.dram_read_bytes,
                                                  timing.dram_write_bytes, self._pass_energy(ops)))

    def _pass_energy(self, ops) -> float:
        return sum(sum(self.table[e] for e in op_cost(op).events) * elements for op, elements, *_ in ops)

    def _result(self, job: _Job, timing: _Timing) -> GemmResult:
        chip, table, plan, unit, row = self.chip, self.table, job.plan, job.unit, job.row
        total, pass_cycles, memory_stall = timing.total_cycles, timing.pass_cycles, timing.memory_stall_cycles
        cores = job.cores
        dram_read, dram_write = timing.dram_read_bytes * cores, timing.dram_write_bytes * cores
        macs = int(row["M"]) * int(row["N"]) * int(row["K"]) * int(row["groups"])
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
        sram_pj = cores * sum(bits["read"] * sram_pj_per_bit(sizes[b], table)
                              + bits["write"] * sram_pj_per_bit(sizes[b], table, True)
                              for b, bits in plan.sram_bits.items())
        dram_pj = (dram_read + dram_write) * 8 * table[f"dram.bit.{chip.dram.kind}"]
        out_elems = int(row["M"]) * int(row["N"]) * int(row["groups"])
        scaling_pj = out_elems * job.path.energy_pj + self._pass_energy(job.passes)
        leak_pj = chip.energy.leakage_fraction * _peak_pj_per_cycle(chip, table) * cores * total
        compulsory_read = (row["M"] * row["K"] * unit.a_bits / 8 + row["K"] * row["N"] * unit.b_bits / 8) * row["groups"]
        compulsory_read += out_elems * job.path.read_bytes
        compulsory_write = out_elems * job.path.write_bytes
        return GemmResult(
            layer=row["layer"], phase=row["phase"], unit=unit.kind, note=unit.note,
            M=int(row["M"]), N=int(row["N"]), K=int(row["K"]), groups=int(row["groups"]),
            macs=macs, folds=plan.folds * cores, tiles=plan.tiles * cores, compute_cycles=plan.compute_cycles,
            total_cycles=int(total), memory_stall_cycles=int(memory_stall),
            scaling_stall_cycles=int(total - plan.compute_cycles - memory_stall),
            vector_pass_cycles=int(pass_cycles),
            peak_macs_per_cycle=chip.array.rows * chip.array.cols * unit.macs_per_pe * cores,
            dram_read_bytes=float(dram_read), dram_write_bytes=float(dram_write),
            compulsory_read_bytes=float(compulsory_read), compulsory_write_bytes=float(compulsory_write),
            sram_read_bytes=cores * sum(b["read"] for b in plan.sram_bits.values()) / 8,
            sram_write_bytes=cores * sum(b["write"] for b in plan.sram_bits.values()) / 8,
            energy_mac_pj=mac_pj, energy_acc_pj=acc_pj, energy_reg_pj=reg_pj, energy_sram_pj=sram_pj,
            energy_dram_pj=dram_pj, energy_scaling_pj=scaling_pj, energy_leakage_pj=leak_pj,
        )


def simulate(trace: Trace | str | os.PathLike, chip: ChipConfig | str | os.PathLike, step: int | None = None, *,
             input_grad: bool = False, compress: bool = True, extrapolate: bool = False) -> SimReport:
    """Simulate one training step of ``trace`` on ``chip``.

    Parameters
    ----------
    trace : Trace or path
        A training trace, or the run directory holding one (`fourbit.traces.io.read`); shape-only
        traces are fine.
    chip : ChipConfig, preset name or TOML path
        The chip (`fourbit.hwsim.config.load_chip` loads a name or a path).
    step : int, optional
        The recorded step to simulate (default: the last one).
    input_grad : bool
        Also simulate ``bwd_data`` of the input layer (the gradient of the data, which training
        never needs; the trace records it for completeness). Default False.
    compress : bool
        Simulate steady-state runs of identical silent tiles as one event (`fourbit.hwsim.blocks.dma`);
        False walks every tile. Both give the same counters (tested).
    extrapolate : bool
        Measure GEMMs of more than `EXTEND_ABOVE` output tiles on short probes and extend them
        by their steady-state increments (`_extended`); needs ``compress``. An approximation:
        total cycles, DRAM bytes and energy equal the full simulation when the pipeline settles
        into a period of 1 or 2 tiles that the probes' checks see (property-tested on random
        GEMMs); a run whose end falls on an irregular beat can be off by a few cycles, and the
        split of the stall between ``memory_stall_cycles`` and ``scaling_stall_cycles`` may
        differ when the blocks settle later than the longest probe (both pinned in tests).
        Default False (exact).

    Returns
    -------
    SimReport

    Raises
    ------
    ConfigError
        A GEMM whose formats no unit of the chip supports, or a buffer too small for a tile.
    SimulationError
        The processes deadlocked (the message names the GEMM and the blocks' states), or a GEMM
        (the step, without ``compress``) has more than `MAX_TILES` tiles to walk on this chip.
    TraceError
        The step was not recorded, or the run directory is not a valid trace.
    """
    if not isinstance(trace, Trace):
        trace = read(trace)
    if not isinstance(chip, ChipConfig):
        chip = load_chip(chip)
    t = trace.step(step)
    table = energy_table(chip.energy.table, chip.energy.overrides)
    jobs, leftovers = _jobs(t, chip, table, input_grad, compress)
    if extrapolate and not compress:
        raise ConfigError("extrapolate needs compress: the probes batch silent stretches like the full run")
    runner = _Runner(chip, table, compress, extrapolate)
    runner.run(jobs, leftovers)
    return SimReport(chip, runner.results, dict(trace.meta),
                     {"events": runner.events, "steady_state_batches": runner.batches,
                      "compress": compress, "extrapolate": extrapolate,
                      "extrapolated_gemms": runner.extrapolated, "overlap_fill_drain": chip.array.overlap_fill_drain,
                      "input_grad": input_grad})

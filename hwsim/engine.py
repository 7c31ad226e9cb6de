"""The engine: ``simulate(trace, chip)`` runs one training step of a trace on a chip.

It plans the jobs (`fourbit.hwsim.jobs`), takes each GEMM's timing from the cache
(`fourbit.hwsim.timing_cache`) or simulates it (`fourbit.hwsim.pipeline`, or extrapolated from
probes, `fourbit.hwsim.steady_state`), runs the leftover vector passes, and accounts traffic and
energy (`fourbit.hwsim.accounting`) into a `SimReport`.
"""

from __future__ import annotations

import os

from fourbit.hwsim import steady_state
from fourbit.hwsim.accounting import gemm_result, pass_energy_pj
from fourbit.hwsim.config import ChipConfig, load_chip
from fourbit.hwsim.energy import energy_table, leakage_pj_per_cycle
from fourbit.hwsim.jobs import MAX_TILES, Job, plan_jobs, too_many
from fourbit.hwsim.mapper import Pipeline, choose
from fourbit.hwsim.mapping import TilePlan
from fourbit.hwsim.pipeline import Abandoned, Timing, simulate_gemm, simulate_passes
from fourbit.hwsim.report import GemmResult, SimReport
from fourbit.hwsim.timing_cache import TimingCache, chip_timing_view, clear_timing_cache, timings
from fourbit.traces.errors import ConfigError
from fourbit.traces.io import Trace, read

__all__ = ["clear_timing_cache", "mapped_jobs", "simulate"]


class _Runner:
    """Maps and simulates the jobs one after another (a GEMM whose timing is known, once) and
    collects one `GemmResult` per job."""

    def __init__(self, chip: ChipConfig, table: dict, compress: bool, extrapolate: bool,
                 cache: TimingCache) -> None:
        self.chip, self.table, self.cache = chip, table, cache
        self.compress, self.extrapolate = compress, extrapolate
        self.chip_view = chip_timing_view(chip)
        self.leak_pj_per_cycle = leakage_pj_per_cycle(chip, table)
        self.extrapolated = 0
        self.results: list[GemmResult] = []
        self.events = 0
        self.batches = 0
        self.walked = 0  # tiles walked one by one (without compress)

    def budget(self) -> int:
        """Tiles one more simulation may walk: `MAX_TILES` (with ``compress``: tiles with outputs,
        the others are batched), else what the step has left of it (every tile walked)."""
        return MAX_TILES if self.compress else MAX_TILES - self.walked

    def walk(self, plan) -> int:
        """Tiles a simulation of ``plan`` walks one by one (at most)."""
        return plan.output_tiles if self.compress else plan.tiles

    def timing(self, job: Job, until: int | None = None) -> Timing | None:
        """The timing of ``job``'s GEMM (its plan chosen; without its vector passes), from the
        cache or simulated; None when its plan has more tiles to walk than the `budget`, or when
        its simulation passed ``until`` cycles (then it would end later)."""
        key = self.cache.key(job, self.chip_view, self.compress, self.extrapolate)
        timing = self.cache.get(key)
        if timing is None:
            timing = steady_state.extended(job, self.chip, self.compress) if self.extrapolate else None
            self.extrapolated += timing is not None
            if timing is None:
                if self.walk(job.plan) > self.budget():
                    return None
                try:
                    timing = simulate_gemm(job, self.chip, self.compress, until)
                except Abandoned as stop:
                    self.events += stop.events
                    return None
            self.cache.put(key, timing)
            self.events += timing.events
            self.batches += timing.batches
        return timing

    def mapped(self, job: Job) -> tuple[Job, Timing]:
        """``job`` with the fastest of its candidate plans (`fourbit.hwsim.mapper.choose`), and
        its timing; the choice is cached like a timing."""
        key = self.cache.choice_key(job, self.chip_view, self.compress, self.extrapolate)
        plan = self.cache.get(key)
        if plan is None:
            chip = self.chip
            pipe = Pipeline(chip.bytes_per_cycle / job.cores, chip.dram.latency_cycles, chip.dma.setup_cycles,
                            chip.scaling.lanes, job.path)

            def cycles(plan: TilePlan, limit: int | None) -> int | None:
                timing = self.timing(job.with_plan(plan), limit)
                return None if timing is None else timing.total_cycles

            chosen = choose(job.gemm, job.candidates, pipe, cycles, chip.mapping.objective)
            if chosen is None:  # every candidate has too many tiles to walk
                fewest = min(self.walk(job.gemm.plan(c)) for c in job.candidates)
                if self.compress:
                    raise too_many(job.row, fewest, "it")
                raise too_many(job.row, self.walked + fewest, "the step")
            plan = chosen[0]
            self.cache.put(key, plan)
        job = job.with_plan(plan)
        passes = simulate_passes(job.passes, self.chip, job.cores)
        self.events += passes.events
        return job, self.timing(job).after(passes)

    def run(self, jobs: list[Job], leftovers: list) -> None:
        for job in jobs:
            job, timing = self.mapped(job)
            if not self.compress:  # the tiles walked count against the step's budget
                self.walked += job.plan.tiles
            self.results.append(gemm_result(job, timing, self.chip, self.table, self.leak_pj_per_cycle))
        for (layer, phase), ops in leftovers:
            timing = simulate_passes(ops, self.chip)
            self.events += timing.events
            self.results.append(GemmResult.vector(layer, phase, timing.total_cycles, timing.dram_read_bytes,
                                                  timing.dram_write_bytes, pass_energy_pj(ops, self.table),
                                                  self.leak_pj_per_cycle * timing.total_cycles))


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
        Simulate steady-state runs of identical silent tiles as one event (`fourbit.hwsim.blocks.dma`)
        and jump over whole periods once the pipeline's state recurs (`fourbit.hwsim.periodic`);
        False walks every tile. Both give the same counters (tested).
    extrapolate : bool
        Measure GEMMs of more than `fourbit.hwsim.steady_state.EXTEND_ABOVE` output tiles on short probes and extend them
        by their steady-state increments (`fourbit.hwsim.steady_state.extended`); needs ``compress``. An approximation:
        total cycles, DRAM bytes and energy equal the full simulation when the pipeline settles
        into a period of 1 or 2 tiles that the probes' checks see (property-tested on random
        GEMMs); a run whose end falls on an irregular beat can be off by a few cycles, and the
        split of the stall between ``memory_stall_cycles`` and ``scaling_stall_cycles`` may
        differ when the blocks settle later than the longest probe (both pinned in tests). The
        mapper then ranks candidates by their extrapolated timings. Default False (exact).

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
    jobs, leftovers = plan_jobs(t, chip, table, input_grad)
    if extrapolate and not compress:
        raise ConfigError("extrapolate needs compress: the probes batch silent stretches like the full run")
    runner = _Runner(chip, table, compress, extrapolate, timings)
    runner.run(jobs, leftovers)
    return SimReport(chip, runner.results, dict(trace.meta),
                     {"events": runner.events, "steady_state_batches": runner.batches,
                      "compress": compress, "extrapolate": extrapolate,
                      "extrapolated_gemms": runner.extrapolated, "overlap_fill_drain": chip.array.overlap_fill_drain,
                      "input_grad": input_grad})


def mapped_jobs(trace: Trace, chip: ChipConfig, step: int | None = None, *, input_grad: bool = False) -> list[Job]:
    """The GEMM jobs of one step of ``trace`` on ``chip`` with the plans the mapper chooses
    (exact simulation, as `simulate` with its defaults): to inspect a mapping
    (``job.plan.candidate``) or to simulate one plan on its own.

    Raises ConfigError as `simulate` does."""
    table = energy_table(chip.energy.table, chip.energy.overrides)
    jobs, _ = plan_jobs(trace.step(step), chip, table, input_grad)
    runner = _Runner(chip, table, True, False, timings)
    return [runner.mapped(job)[0] for job in jobs]

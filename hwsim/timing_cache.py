"""The timing cache: GEMM timings already simulated in this process, so that identical GEMMs of
a step, and the points of a sweep that change only energy or numerics (the log base, the energy
table), are simulated once.

The key is a frozen view of everything a GEMM's timing depends on (its vector passes are timed
apart): the job's tile plan, unit, output path and cores, the simulation options, and the chip with the sections that
cannot change a timing left out (`TIMING_FREE`). Leaving out by name what cannot matter, rather
than listing what can, means a new chip field is part of the key without anyone adding it.
"""

from __future__ import annotations

from collections import OrderedDict

from fourbit.hwsim.config import ChipConfig
from fourbit.hwsim.jobs import Job
from fourbit.hwsim.pipeline import Timing  # noqa: F401 (the values it keeps)

__all__ = ["TIMING_FREE", "TimingCache", "chip_timing_view", "clear_timing_cache", "timings"]

TIMING_FREE = {"chip": {"name", "description"}, "array": {"pe_area_um2", "fp16_mode"}, "scaling": {"area_um2_per_lane"},
               "energy": True, "log_path": True}
"""Chip fields that no timing reads: names, areas, the energy model, the log path (its operand
widths are the unit's, in the job)."""


def chip_timing_view(chip: ChipConfig) -> str:
    """The chip without its `TIMING_FREE` fields, as canonical text (hashable)."""
    return chip.model_dump_json(exclude=TIMING_FREE)


class TimingCache:
    """A bounded least-recently-used map from (job, chip, options) to its `Timing`, and from
    (GEMM, candidates, chip, options) to the plan the mapper chose."""

    def __init__(self, max_entries: int = 50_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict = OrderedDict()

    @staticmethod
    def key(job: Job, chip_view: str, compress: bool, extrapolate: bool) -> tuple:
        """The key of ``job`` on the chip whose `chip_timing_view` is ``chip_view``."""
        plan = job.plan
        return (tuple(plan.segments), plan.tiles, plan.output_tiles, plan.compute_cycles, job.unit, job.path,
                job.cores, compress, extrapolate, chip_view)

    @staticmethod
    def choice_key(job: Job, chip_view: str, compress: bool, extrapolate: bool) -> tuple:
        """The key under which the plan chosen for ``job`` (`fourbit.hwsim.mapper.choose`) is kept:
        everything the choice reads (the GEMM, its candidates, unit, output path, cores, the
        options and the chip's `chip_timing_view`)."""
        return ("choice", job.gemm, job.candidates, job.unit, job.path, job.cores, compress, extrapolate, chip_view)

    def get(self, key: tuple):
        timing = self._entries.get(key)
        if timing is not None:
            self._entries.move_to_end(key)
        return timing

    def put(self, key: tuple, value) -> None:
        self._entries[key] = value
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


timings = TimingCache()
"""The process's cache (sweep workers keep theirs across the points they run)."""


def clear_timing_cache() -> None:
    """Forget the GEMM timings simulated so far (benchmarks time cold simulations)."""
    timings.clear()

"""Exact steady-state jumps (`fourbit.hwsim.periodic`): simulating a plan with jumps gives the
counters of walking every tile, with far fewer events."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fourbit.hwsim.config import load_chip
from fourbit.hwsim.energy import energy_table
from fourbit.hwsim.jobs import plan_jobs
from fourbit.hwsim.mapping import Candidate
from fourbit.hwsim.pipeline import simulate_gemm
from fourbit.traces.errors import ConfigError
from tests.hwsim.test_data_movement import conv_trace
from tests.hwsim.test_properties import chips, gemm_trace


def _job(trace, chip):
    jobs, _ = plan_jobs(trace.step(None), chip, energy_table(chip.energy.table, chip.energy.overrides), True)
    return jobs[0]


def _both(job, chip):
    """(with jumps, walked) timings of ``job``'s plan."""
    return simulate_gemm(job, chip, True), simulate_gemm(job, chip, False)


def _same(fast, walked) -> None:
    # cycles exactly; bytes to rounding (a region's bytes per element need not be dyadic, and n
    # periods' bytes are added as one product rather than tile by tile)
    assert (fast.total_cycles, fast.memory_stall_cycles) == (walked.total_cycles, walked.memory_stall_cycles)
    assert (fast.dram_read_bytes, fast.dram_write_bytes) == pytest.approx((walked.dram_read_bytes,
                                                                          walked.dram_write_bytes), rel=1e-12)


def test_a_long_gemm_with_outputs_in_every_tile_jumps_and_counts_exactly():
    # 8x8 ws, one K-fold per column fold, outputs leave after every tile: the scaling unit (4 lanes)
    # and the DRAM channel are busy throughout, so no silent stretch exists to batch
    chip = load_chip("fourbit", {"array.rows": 8, "array.cols": 8, "scaling.lanes": 4.0})
    job = _job(gemm_trace(4000, 64, 32, ops=True), chip)
    cand = next(c for c in job.candidates if c.order == "n-k-m" and c.tile == 64 and not c.x_resident
                and not c.psum_resident and c.group == 1)
    job = job.with_plan(job.gemm.plan(cand))
    assert job.plan.output_tiles == 63 * 8  # 4000 rows in tiles of 64 (62 full, one of 32), 8 column folds
    fast, walked = _both(job, chip)
    _same(fast, walked)
    assert fast.batches >= 1 and fast.events * 10 < walked.events


def test_segments_that_repeat_one_by_one_are_jumped_over_whole():
    # one PE, n-m-k with the weights resident: the plan is many segments (filling the weights in the
    # first row tile, then each later row tile's column folds), the later ones repeating one by one
    chip = load_chip("fourbit", {"array.rows": 1, "array.cols": 1, "scaling.lanes": 4.0})
    job = _job(conv_trace("fwd", 1, 8, 6, 6, 48, 3, 3, 1, 1), chip)
    cand = next(c for c in job.candidates if c.order == "n-m-k" and c.tile == 1 and c.s_resident and not c.x_resident)
    job = job.with_plan(job.gemm.plan(cand))
    assert len(job.plan.segments) == 96
    fast, walked = _both(job, chip)
    _same(fast, walked)
    assert fast.events * 5 < walked.events


def test_runs_that_repeat_within_a_pattern_are_jumped_over_whole():
    # one PE, os: each of the 200 output columns is 4 K-tiles (3 silent, then outputs), merged into one
    # pattern of 400 runs repeated for the 6 output rows: the column folds repeat run by run
    chip = load_chip("fourbit", {"array.rows": 1, "array.cols": 1, "array.dataflow": "os", "scaling.lanes": 4.0})
    job = _job(gemm_trace(6, 200, 16), chip)
    job = job.with_plan(job.gemm.plan(Candidate("m-n-k", 4)))
    assert [(len(pattern), repeat) for pattern, repeat in job.plan.segments] == [(400, 6)]
    fast, walked = _both(job, chip)
    _same(fast, walked)
    assert fast.events * 100 < walked.events


gemms = st.tuples(st.integers(100, 2500), st.integers(1, 80), st.integers(1, 400),
                  st.sampled_from(["int4", "fp4xint4", "fp16"]), st.booleans())


@settings(max_examples=25, deadline=None)
@given(chips, gemms, st.integers(0, 10_000))
def test_any_candidate_plan_with_jumps_counts_as_the_walk(over, g, pick):
    # every candidate, not just the mapper's choice: loop orders, residencies, groups
    M, N, K, unit, ops = g
    chip = load_chip("fourbit", over)
    try:
        job = _job(gemm_trace(M, N, K, 1, unit, ops), chip)
    except ConfigError as exc:
        assert "is too small" in str(exc)
        return
    job = job.with_plan(job.gemm.plan(job.candidates[pick % len(job.candidates)]))
    if job.plan.tiles > 20_000:
        return  # keep the walk short
    _same(*_both(job, chip))


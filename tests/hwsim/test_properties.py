"""The simulated chip against closed forms, invariants (property tests) and hand-derived cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fourbit.hwsim.blocks.log_path import LogPath
from fourbit.hwsim.config import LogPathConfig, load_chip
from fourbit.hwsim.engine import simulate
from fourbit.hwsim.mapping import compute_cycles
from fourbit.traces import schema
from fourbit.traces.errors import ConfigError, SimulationError
from fourbit.traces.io import Trace

FORMATS = {"int4": ("uint4", "int4", "int32"), "fp4xint4": ("fp4_r4_e3", "int4", "fp16/g4/c64"),
           "fp16": ("fp16", "fp16", "fp32/g1")}
UNLIMITED = {"dram.bandwidth_bytes_per_s": math.inf, "dram.latency_cycles": 0, "scaling.lanes": math.inf,
             "sram.ifmap_bytes": 1 << 40, "sram.filter_bytes": 1 << 40, "sram.ofmap_bytes": 1 << 40}


def gemm_trace(M: int, N: int, K: int, groups: int = 1, unit: str = "int4", ops: bool = False) -> Trace:
    a, b, acc = FORMATS[unit]
    row = {"step": 0, "layer": "L", "layer_type": "conv2d", "phase": "fwd", "M": M, "N": N, "K": K,
           "groups": groups, "a_format": a, "b_format": b, "acc_format": acc, "out_format": "fp16"}
    op_rows = []
    if ops:  # an output path with work and optimizer-like traffic
        e = M * N * groups
        op_rows = [{"step": 0, "layer": "L", "phase": "fwd", "op": "relu", "elements": e,
                    "in_format": "fp16", "out_format": "fp32", "fused": True},
                   {"step": 0, "layer": "L", "phase": "fwd", "op": "quantize_uniform", "elements": e,
                    "in_format": "fp32", "out_format": "uint4", "fused": True}]
    return Trace({"batch_size": 1}, schema.from_records("gemms", [row]), schema.from_records("ops", op_rows),
                 schema.from_records("metrics", []))


SHAPES = [  # (M, N, K): a 1x1 conv, a GEMV, K not a multiple of p*R, one MAC, a wide layer
    (8 * 7 * 7, 64, 32), (1, 100, 300), (64, 40, 130), (1, 1, 1), (37, 200, 515),
]


@pytest.mark.parametrize("dataflow", ["ws", "os", "is"])
@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_unlimited_memory_gives_the_closed_form(dataflow, overlap, shape):
    M, N, K = shape
    chip = load_chip("fourbit", {**UNLIMITED, "array.dataflow": dataflow, "array.rows": 8, "array.cols": 8,
                                 "array.overlap_fill_drain": overlap})
    row = simulate(gemm_trace(M, N, K), chip).to_frame().iloc[0]
    want = compute_cycles(M, N, K, 8, 8, 4, dataflow, overlap)
    assert row.compute_cycles == want == row.total_cycles
    assert row.stall_cycles == 0 and row.macs == M * N * K


def test_closed_forms_by_hand_for_the_paper_array():
    # 32 x 32 WS, p = 4: ceil(576/128) * ceil(64/32) = 10 folds of 2*32 + 32 + 3136 - 2 cycles
    assert compute_cycles(3136, 64, 576, 32, 32, 4, "ws") == 10 * 3230
    # the same on the FP16 chip (p = 1): 18 * 2 folds
    assert compute_cycles(3136, 64, 576, 32, 32, 1, "ws") == 36 * 3230


chips = st.fixed_dictionaries({
    "array.rows": st.integers(1, 12), "array.cols": st.integers(1, 12),
    "array.dataflow": st.sampled_from(["ws", "os", "is"]),
    "array.overlap_fill_drain": st.booleans(),
    "dram.bandwidth_bytes_per_s": st.sampled_from([2e8, 1e9, 8e9, 6.4e10, math.inf]),
    "dram.latency_cycles": st.sampled_from([0, 7, 100]),
    "dma.setup_cycles": st.sampled_from([0, 3]),
    "scaling.lanes": st.sampled_from([1.0, 4.0, 128.0, math.inf]),
    "sram.ifmap_bytes": st.sampled_from([512, 4096, 1 << 20]),
    "sram.filter_bytes": st.sampled_from([512, 4096, 1 << 20]),
    "sram.ofmap_bytes": st.sampled_from([1024, 8192, 1 << 20]),
    "sram.double_buffered": st.booleans(),
})
gemms = st.tuples(st.integers(1, 300), st.integers(1, 70), st.integers(1, 300), st.integers(1, 3),
                  st.sampled_from(["int4", "fp4xint4", "fp16"]), st.booleans())


def _sim(trace, over, **kw):
    try:
        return simulate(trace, load_chip("fourbit", over), **kw)
    except ConfigError as exc:  # a buffer too small for this GEMM's smallest tile
        assert "is too small" in str(exc)
        return None


@settings(max_examples=30, deadline=None)
@given(chips, gemms)
def test_invariants(over, g):
    M, N, K, groups, unit, ops = g
    trace = gemm_trace(M, N, K, groups, unit, ops)
    rep = _sim(trace, over)
    if rep is None:
        return
    df = rep.to_frame()
    row = df.iloc[0]
    numeric = df.select_dtypes("number")
    assert np.isfinite(numeric.to_numpy()).all() and (numeric.to_numpy() >= 0).all()
    assert row.stall_cycles == row.memory_stall_cycles + row.scaling_stall_cycles >= 0
    assert row.macs == groups * M * N * K
    # every product costs the unit's table energy (no zero gating by default)
    table = {"int4": 0.03, "fp4xint4": 0.035, "fp16": 0.72}[unit]
    assert row.energy_mac_pj / row.macs == pytest.approx(table, rel=1e-9)
    # steady-state batching changes nothing
    plain = _sim(trace, over, compress=False).to_frame()
    pd.testing.assert_frame_equal(df, plain)


@settings(max_examples=40, deadline=None)
@given(chips, gemms)
def test_more_bandwidth_never_costs_cycles(over, g):
    M, N, K, groups, unit, ops = g
    trace = gemm_trace(M, N, K, groups, unit, ops)
    slow = _sim(trace, {**over, "dram.bandwidth_bytes_per_s": 1e9})
    fast = _sim(trace, {**over, "dram.bandwidth_bytes_per_s": 4e9})
    if slow is not None and fast is not None:
        assert fast.totals().total_cycles <= slow.totals().total_cycles


@settings(max_examples=40, deadline=None)
@given(chips, gemms, st.sampled_from(["sram.ifmap_bytes", "sram.filter_bytes", "sram.ofmap_bytes"]))
def test_a_larger_buffer_never_costs_cycles(over, g, field):
    # the mapper takes the fastest feasible candidate, and a larger buffer only adds candidates
    M, N, K, groups, unit, ops = g
    trace = gemm_trace(M, N, K, groups, unit, ops)
    small = _sim(trace, over)
    big = _sim(trace, {**over, field: over[field] * 8})
    if small is not None:
        assert big is not None and big.totals().total_cycles <= small.totals().total_cycles


@settings(max_examples=30, deadline=None)
@given(chips, gemms)
def test_whole_layer_buffers_move_the_compulsory_traffic(over, g):
    M, N, K, groups, unit, ops = g
    over = {**over, "sram.ifmap_bytes": 1 << 40, "sram.filter_bytes": 1 << 40, "sram.ofmap_bytes": 1 << 40}
    row = simulate(gemm_trace(M, N, K, groups, unit, ops), load_chip("fourbit", over)).to_frame().iloc[0]
    assert row.dram_read_bytes == pytest.approx(row.compulsory_read_bytes)
    assert row.dram_write_bytes == pytest.approx(row.compulsory_write_bytes)


def test_memory_bound_layer_takes_bytes_over_bandwidth():
    # 0.25 bytes per cycle: the 4-bit operands of a 512 x 512 x 512 GEMM need ~2 M cycles of
    # transfers, the array ~18 k cycles of compute
    chip = load_chip("fourbit", {"dram.bandwidth_bytes_per_s": 2.5e8, "dram.latency_cycles": 0})
    row = simulate(gemm_trace(512, 512, 512), chip).to_frame().iloc[0]
    bound = (row.dram_read_bytes + row.dram_write_bytes) / 0.25
    assert row.compute_cycles < bound / 50
    assert row.total_cycles == pytest.approx(bound, rel=0.02)


def test_deadlock_is_detected(monkeypatch):
    from fourbit.hwsim.blocks import dma as dma_module

    def stuck(self, segments):  # a DMA that takes both buffer halves and never delivers a tile
        yield self.sram.free.get(1)
        yield self.sram.free.get(1)
        yield self.sram.free.get(1)

    monkeypatch.setattr(dma_module.Dma, "run", stuck)
    with pytest.raises(SimulationError, match=r"deadlock at cycle 0 in GEMM L fwd \(free input halves 0"):
        simulate(gemm_trace(64, 64, 64), load_chip("fourbit"))


@pytest.mark.parametrize("radix, ebits, width, stages", [(4, 3, 16, 3), (2, 3, 10, 3), (16, 3, 28, 3),
                                                         (16, 4, 60, 4), (4, 2, 8, 2)])
def test_log_path_width_energy_and_area(radix, ebits, width, stages):
    path = LogPath(LogPathConfig(radix=radix, exponent_bits=ebits))
    assert path.product_bits == 4 + (radix.bit_length() - 1) * (2**ebits - 2) == width
    assert path.shifter_stages == stages
    table = {"shift_add.shifter_per_bit_stage": 0.016 / 48, "shift_add.tree_per_bit": 0.019 / 16}
    assert path.mac_energy_pj(table) == pytest.approx(0.016 * width * stages / 48 + 0.019 * width / 16)
    if (radix, ebits) == (4, 3):
        assert path.mac_energy_pj(table) == pytest.approx(0.035) and path.area_factor() == pytest.approx(1.0)


def test_rapid_like_preset_matches_the_published_peaks():
    from fourbit.hwsim.energy import peak_throughput

    peaks = peak_throughput(load_chip("rapid")).set_index("unit").peak_tops
    assert peaks["int4"] == pytest.approx(104.9, rel=0.001)  # JSSC 2022: 104.9 TOPS INT4
    assert peaks["fp8"] == pytest.approx(26.2, rel=0.001)  # 26.2 TFLOPS HFP8


@pytest.mark.parametrize("field, value, message", [
    ("array.rows", 0, r"array.rows = 0 is out of range: allowed an integer >= 1"),
    ("array.cols", -3, r"array.cols = -3 is out of range"),
    ("array.dataflow", "rs", r"array.dataflow = 'rs' is out of range: allowed one of 'ws', 'os', 'is'"),
    ("dram.bandwidth_bytes_per_s", 0, r"dram.bandwidth_bytes_per_s = 0 is out of range: allowed a number >= 1"),
    ("sram.ofmap_bytes", 0, r"sram.ofmap_bytes = 0 is out of range"),
    ("units.int4.accumulator", "fp8", r"units.int4.accumulator = 'fp8' is out of range"),
    ("log_path.radix", 3, r"log_path.radix = 3 is out of range: allowed one of 2, 4, 8, 16"),
])
def test_bad_configs_name_the_field(field, value, message):
    with pytest.raises(ConfigError, match=message):
        load_chip("fourbit", {field: value})


def test_sram_smaller_than_a_tile_is_a_config_error():
    with pytest.raises(ConfigError, match=r"sram.filter_bytes is too small: the smallest tile needs 2048 bytes"):
        simulate(gemm_trace(64, 64, 512), load_chip("fourbit", {"sram.filter_bytes": 1024}))


def test_unsupported_formats_are_a_config_error():
    def with_formats(a: str, b: str) -> Trace:
        t = gemm_trace(8, 8, 8)
        return Trace({}, t.gemms.assign(a_format=a, b_format=b), t.ops, t.metrics)

    # radix-16 FP4 with 4 exponent bits reaches 2^-28: not an FP16 value, so no unit of fp16
    with pytest.raises(ConfigError, match=r"no unit of chip 'fp16' computes fp4_r16_e4 x int4; its units: fp16"):
        simulate(with_formats("fp4_r16_e4", "int4"), load_chip("fp16"))
    # the log path computes one radix: radix 8 on the radix-4 chip falls back to its FP16 mode
    row = simulate(with_formats("fp4_r8_e3", "int4"), load_chip("fourbit")).to_frame().iloc[0]
    assert row.unit == "fp16"
    fourbit = load_chip("fourbit")
    no_fp16 = fourbit.replace(units={k: u for k, u in fourbit.units.items() if k != "fp16"})
    with pytest.raises(ConfigError, match=r"fp4_r8_e3 x int4; its units: int4, fp4xint4 \(fp4xint4: its log "
                                          r"path is radix 4, 3 exponent bits\)"):
        simulate(with_formats("fp4_r8_e3", "int4"), no_fp16)


SPLIT = ["memory_stall_cycles", "scaling_stall_cycles"]


def _assert_extrapolated_equal(ext, full):
    """Every column equal, except how the (equal) stall splits between memory and scaling unit."""
    a, b = ext.to_frame(), full.to_frame()
    pd.testing.assert_frame_equal(a.drop(columns=SPLIT), b.drop(columns=SPLIT))
    assert (a[SPLIT].sum(axis=1) == b[SPLIT].sum(axis=1)).all()


def _extrapolated(trace, over, above=0):
    from fourbit.hwsim import steady_state
    from fourbit.hwsim.timing_cache import clear_timing_cache

    clear_timing_cache()
    saved = steady_state.EXTEND_ABOVE
    steady_state.EXTEND_ABOVE = above  # extrapolate plans this small too
    try:
        return _sim(trace, over, extrapolate=True)
    finally:
        steady_state.EXTEND_ABOVE = saved


@settings(max_examples=40, deadline=None)
@given(chips, gemms)
def test_extrapolation_equals_the_full_simulation(over, g):
    """Long runs and repeated segments measured on short probes and extended by their steady
    increments give the tile-by-tile totals (extrapolation forced on small plans), on the plan
    the mapper chose."""
    from fourbit.hwsim import steady_state
    from fourbit.hwsim.engine import mapped_jobs
    from fourbit.hwsim.pipeline import simulate_gemm

    M, N, K, groups, unit, ops = g
    trace = gemm_trace(M * 3, N, K, groups, unit, ops)  # taller: more repeated tiles
    chip = load_chip("fourbit", over)
    try:
        (job,) = mapped_jobs(trace, chip)
    except ConfigError as exc:  # a buffer too small for this GEMM's smallest tile
        assert "is too small" in str(exc)
        return
    saved = steady_state.EXTEND_ABOVE
    steady_state.EXTEND_ABOVE = 0  # extrapolate plans this small too
    try:
        ext = steady_state.extended(job, chip, True)
    finally:
        steady_state.EXTEND_ABOVE = saved
    if ext is None:  # nothing to extend, or no steady period within the longest probe
        return
    full = simulate_gemm(job, chip, compress=False)
    assert (ext.dram_read_bytes, ext.dram_write_bytes) == (full.dram_read_bytes, full.dram_write_bytes)
    # a run whose end meets the other blocks on an irregular beat can move the total by a few
    # cycles (`simulate`, ``extrapolate``; pinned in the tests below); e.g. os on a 5 x 1 array,
    # M = 171, N = 1, K = 5, m-n-k tile 5 with b resident: 4,152 extrapolated against 4,153
    assert abs(ext.total_cycles - full.total_cycles) <= 4
    assert ext.memory_stall_cycles <= ext.total_cycles


def test_extrapolation_when_the_blocks_settle_late():
    """A 1x1 array fed at 0.2 B/cycle behind a 1-lane scaling unit: the DMA drifts 8 cycles per
    tile towards the bottleneck and locks 13 tiles in, past the 4-tile probes' checks. Total
    cycles, bytes and energy stay exact; the stall's split is off by the transient (the
    documented limit of extrapolation), and the exact simulation is unaffected."""
    over = {"array.rows": 1, "array.cols": 1, "array.dataflow": "os", "dram.bandwidth_bytes_per_s": 2e8,
            "dram.latency_cycles": 100, "scaling.lanes": 1.0, "sram.double_buffered": False}
    trace = gemm_trace(15, 1, 2, 2)
    ext, full = _extrapolated(trace, over), _sim(trace, over, compress=False)
    _assert_extrapolated_equal(ext, full)
    assert full.to_frame().memory_stall_cycles.iloc[0] == 3172
    assert ext.to_frame().memory_stall_cycles.iloc[0] == 3160
    assert _sim(trace, over).to_frame().memory_stall_cycles.iloc[0] == 3172  # compress alone is exact


def test_extrapolation_off_by_a_beat_at_the_end_of_a_run():
    """Three groups of 17 output tiles on a 2x1 OS array behind one scaling lane: the totals of
    the full simulation step by 312 cycles per 3 tiles, except at 17 (and 24) tiles per group,
    where the end of each run meets the DMA on an irregular beat (+2). The probes (up to 13 tiles
    per run) see a clean period, so the extrapolated total misses those 2 cycles: the documented
    limit of extrapolation (hypothesis found this case; 600 random cases agree exactly)."""
    over = {"array.rows": 2, "array.cols": 1, "array.dataflow": "os", "dram.bandwidth_bytes_per_s": 8e9,
            "dram.latency_cycles": 100, "dma.setup_cycles": 0, "scaling.lanes": 1.0, "sram.ifmap_bytes": 512,
            "sram.filter_bytes": 512, "sram.ofmap_bytes": 1024, "sram.double_buffered": True}
    trace = gemm_trace(33, 1, 36, 3, "int4", True)
    ext, full = _extrapolated(trace, over).to_frame().iloc[0], _sim(trace, over, compress=False).to_frame().iloc[0]
    assert (full.total_cycles, ext.total_cycles) == (5567, 5565)
    assert (ext.dram_read_bytes, ext.dram_write_bytes) == (full.dram_read_bytes, full.dram_write_bytes)
    assert _sim(trace, over).to_frame().total_cycles.iloc[0] == 5567  # compress alone is exact


@pytest.mark.parametrize("dataflow", ["ws", "os", "is"])
def test_extrapolation_of_a_large_gemm(dataflow):
    """A conv-like GEMM of up to 25k tiles on an 8x8 array: extrapolated == every tile walked."""
    trace = gemm_trace(25088, 64, 144, 1, "fp4xint4", True)
    over = {"array.rows": 8, "array.cols": 8, "array.dataflow": dataflow}
    ext = _extrapolated(trace, over, above=100)  # every dataflow's plan (280 output tiles or more)
    full = _sim(trace, over, compress=False)
    assert ext.run_info["extrapolated_gemms"] == 1
    if full.to_frame().tiles.sum() > 10_000:  # OS and IS: probes, not the whole walk
        assert ext.run_info["events"] < full.run_info["events"] / 5
    _assert_extrapolated_equal(ext, full)

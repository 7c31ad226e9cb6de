"""Data movement: convolutions move their stored tensors, the mapper picks the fastest candidate
mapping, and growing a buffer never costs cycles (exact cases and property tests)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fourbit.hwsim.config import load_chip
from fourbit.hwsim.engine import simulate
from fourbit.hwsim.mapper import Pipeline, lower_bound
from fourbit.hwsim.mapping import Gemm, Operand
from fourbit.hwsim.tensors import ConvGeometry
from fourbit.traces import lowering, schema
from fourbit.traces.errors import ConfigError
from fourbit.traces.io import Trace

BUFFERS = ("sram.ifmap_bytes", "sram.filter_bytes", "sram.ofmap_bytes")
FREE = {"dram.bandwidth_bytes_per_s": math.inf, "dram.latency_cycles": 0, "dma.setup_cycles": 0,
        "scaling.lanes": math.inf}


def conv_trace(phase: str, batch: int, c: int, h: int, w: int, f: int, r: int, s: int, stride: int,
               padding: int, formats=("uint4", "int4", "int32")) -> Trace:
    """One GEMM of a convolution (its trace row with geometry) and no ops."""
    shape = lowering.conv2d(batch, c, h, w, f, r, s, stride, padding)[phase]
    a, b, acc = formats
    row = {"step": 0, "layer": "conv", "layer_type": "conv2d", "phase": phase, "M": shape.M, "N": shape.N,
           "K": shape.K, "groups": shape.groups, "a_format": a, "b_format": b, "acc_format": acc,
           "out_format": "fp16", "batch": batch, "in_channels": c, "out_channels": f, "in_h": h, "in_w": w,
           "kernel_h": r, "kernel_w": s, "stride": stride, "padding": padding}
    return Trace({"batch_size": batch}, schema.from_records("gemms", [row]), schema.from_records("ops", []),
                 schema.from_records("metrics", []))


def test_a_1d_convolution_reads_each_input_once():
    # 18 inputs, 3 taps, one PE, an ifmap buffer whose half holds the 18-value window (INT4:
    # 9 bytes): the input is read 18 times (9 bytes), the 3 weights once, nothing else
    chip = load_chip("fourbit", {**FREE, "array.rows": 1, "array.cols": 1, "sram.ifmap_bytes": 18,
                                 "sram.filter_bytes": 64, "sram.ofmap_bytes": 1024})
    row = simulate(conv_trace("fwd", 1, 1, 1, 18, 1, 1, 3, 1, 0), chip).to_frame().iloc[0]
    assert (row.M, row.N, row.K) == (16, 1, 3)
    assert row.dram_read_bytes == 18 * 0.5 + 3 * 0.5 == row.compulsory_read_bytes
    assert row.im2col_read_bytes == 16 * 3 * 0.5 + 3 * 0.5  # the column matrix would read 48


def test_a_larger_ifmap_buffer_is_no_slower_on_the_tall_int4_gemm():
    # M=3000, N=8, K=16 (INT4): with the old fixed tile rule, 4 kB -> 16 kB of ifmap buffer cut 12
    # tiles to 3 and rose from 3,373 to 3,661 cycles (a longer prologue and epilogue)
    from tests.hwsim.test_properties import gemm_trace

    small = simulate(gemm_trace(3000, 8, 16), load_chip("fourbit", {"sram.ifmap_bytes": 4096})).totals()
    big = simulate(gemm_trace(3000, 8, 16), load_chip("fourbit", {"sram.ifmap_bytes": 16384})).totals()
    assert small.compute_cycles == 3094
    assert big.total_cycles <= small.total_cycles


def test_a_buffer_too_small_for_any_candidate_names_the_size_that_works():
    with pytest.raises(ConfigError, match=r"conv fwd .* sram.ifmap_bytes is too small: .* allowed: sram.ifmap_bytes >= "):
        simulate(conv_trace("fwd", 1, 64, 8, 8, 8, 3, 3, 1, 1), load_chip("fourbit", {"sram.ifmap_bytes": 16}))


def _two_gemms(*shapes) -> Trace:
    rows = [{"step": 0, "layer": f"L{i}", "layer_type": "linear", "phase": "fwd", "M": m, "N": n, "K": k,
             "groups": 1, "a_format": "uint4", "b_format": "int4", "acc_format": "int32", "out_format": "fp16"}
            for i, (m, n, k) in enumerate(shapes)]
    return Trace({"batch_size": 1}, schema.from_records("gemms", rows), schema.from_records("ops", []),
                  schema.from_records("metrics", []))


def test_the_size_that_works_fits_every_gemm_of_the_step():
    # L0 (K = 64) fails first but needs less filter buffer than L1 (K = 512): the advice is L1's
    # need, so following it once is enough; 32x32 ws, p = 4: a 128 x 32 INT4 weight block = 2 kB
    trace = _two_gemms((64, 64, 64), (64, 64, 512))
    with pytest.raises(ConfigError, match=r"^GEMM L0 fwd .*: sram.filter_bytes is too small: the smallest tile "
                       r"needs 1024 bytes per buffer half, there are 128; allowed: sram.filter_bytes >= 4096 "
                       r"\(what every GEMM of this step needs; the most: GEMM L1 fwd"):
        simulate(trace, load_chip("fourbit", {"sram.filter_bytes": 256}))
    assert simulate(trace, load_chip("fourbit", {"sram.filter_bytes": 4096})).totals().macs == 64 * 64 * 576


def test_single_buffered_buffers_hold_a_whole_block():
    # without double buffering a block may fill the whole buffer: 2 kB of weights fit 2 kB
    trace = _two_gemms((64, 64, 512))
    with pytest.raises(ConfigError, match=r"needs 2048 bytes in the buffer \(single buffered\), there are 1024; "
                       r"allowed: sram.filter_bytes >= 2048$"):
        simulate(trace, load_chip("fourbit", {"sram.filter_bytes": 1024, "sram.double_buffered": False}))
    single = simulate(trace, load_chip("fourbit", {"sram.filter_bytes": 2048, "sram.double_buffered": False}))
    assert single.totals().macs == 64 * 64 * 512
    with pytest.raises(ConfigError, match=r"allowed: sram.filter_bytes >= 4096"):  # double buffered: two halves
        simulate(trace, load_chip("fourbit", {"sram.filter_bytes": 2048}))


def test_the_lower_bound_never_exceeds_the_simulation():
    chip = load_chip("fourbit")
    gemm = Gemm(500, 40, 300, 1, Operand(500, 300, 0.5), Operand(300, 40, 0.5), 8, 8, 4, "ws", 4)
    from fourbit.hwsim.blocks.scaling_unit import output_path
    from fourbit.hwsim.jobs import Job
    from fourbit.hwsim.pipeline import simulate_gemm
    from fourbit.hwsim.tensors import GemmTensors

    path = output_path([], 500 * 40, "fp16", {})
    pipe = Pipeline(chip.bytes_per_cycle, chip.dram.latency_cycles, chip.dma.setup_cycles, chip.scaling.lanes, path)
    row = {"layer": "L", "phase": "fwd", "M": 500, "N": 40, "K": 300}
    cands = gemm.candidates(4096, 4096, 8192)
    assert len({c.order for c in cands}) == 3
    for cand in cands:
        plan = gemm.plan(cand)
        job = Job(row, None, gemm, tuple(cands), plan, path, [], GemmTensors(0, 0, 0))
        assert lower_bound(plan, pipe) <= simulate_gemm(job, chip, True).total_cycles


def _region_geometry(draw) -> tuple:
    one_d = draw(st.booleans())
    h = 1 if one_d else draw(st.integers(1, 7))
    w = draw(st.integers(1, 12))
    r = 1 if one_d else draw(st.integers(1, min(3, h + 2)))
    s = draw(st.integers(1, min(3, w + 2)))
    padding = draw(st.integers(0, 1 if one_d else min(r, s) - 1 + 1))
    stride = draw(st.integers(1, 3))
    if h + 2 * padding < r or w + 2 * padding < s:
        padding = max(r, s)
    return draw(st.integers(1, 2)), draw(st.integers(1, 5)), h, w, draw(st.integers(1, 6)), r, s, stride, padding


convs = st.composite(_region_geometry)()
small_chips = st.fixed_dictionaries({
    "array.rows": st.integers(1, 6), "array.cols": st.integers(1, 6),
    "array.dataflow": st.sampled_from(["ws", "os", "is"]),
    "dram.bandwidth_bytes_per_s": st.sampled_from([1e9, 6.4e10, math.inf]),
    "dram.latency_cycles": st.sampled_from([0, 20]),
    "sram.ifmap_bytes": st.sampled_from([64, 256, 4096]),
    "sram.filter_bytes": st.sampled_from([64, 256, 4096]),
    "sram.ofmap_bytes": st.sampled_from([256, 1024, 8192]),
})
phases = st.sampled_from(["fwd", "bwd_data", "bwd_weight"])


def _sim(trace, over):
    try:
        return simulate(trace, load_chip("fourbit", over)).to_frame().iloc[0]
    except ConfigError as exc:  # a buffer too small for any candidate of this GEMM
        assert "is too small" in str(exc)
        return None


@settings(max_examples=40, deadline=None)
@given(convs, phases, small_chips, st.sampled_from(BUFFERS))
def test_a_larger_buffer_never_costs_cycles_and_never_beats_compulsory(geometry, phase, over, field):
    trace = conv_trace(phase, *geometry)
    small = _sim(trace, over)
    big = _sim(trace, {**over, field: over[field] * 4})
    for row in (small, big):
        if row is not None:
            assert row.dram_read_bytes >= row.compulsory_read_bytes - 1e-9
            assert row.dram_write_bytes >= row.compulsory_write_bytes - 1e-9
    if small is not None:
        assert big is not None and big.total_cycles <= small.total_cycles


@settings(max_examples=30, deadline=None)
@given(convs, phases, small_chips)
def test_buffers_that_hold_the_layer_move_exactly_the_compulsory_traffic(geometry, phase, over):
    over = {**over, **dict.fromkeys(BUFFERS, 1 << 30)}
    row = _sim(conv_trace(phase, *geometry), over)
    assert row.dram_read_bytes == pytest.approx(row.compulsory_read_bytes)
    assert row.dram_write_bytes == pytest.approx(row.compulsory_write_bytes)


@pytest.mark.parametrize("pixels, columns, want", [
    (16 * 16, 3 * 9, 3 * 18 * 18),  # the whole image, every column: the stored input (18 x 18, unpadded)
    # a run of 9 columns touches 1 + 8/9 channels on average (2 unless it starts at a channel)
    (16, 9, 17 / 9 * 3 * 18),  # one output row: 3 input rows of 18
    (32, 9, 17 / 9 * (2 + 2) * 18),  # two output rows: 4 input rows
    (4, 10, 2 * 3 * 6),  # four pixels of a row, 10 columns (2 channels): 3 rows of 4 + 2 columns
])
def test_region_of_a_block_of_the_column_matrix(pixels, columns, want):
    g = ConvGeometry(1, 3, 8, 18, 18, 3, 3, 1, 0, 1)
    assert g.region_elements(pixels, columns) == pytest.approx(want, rel=1e-12)


def test_column_folds_in_groups_share_each_block_of_the_streamed_operand():
    # INT4 8 x 8 x 24 on a 2 x 2 array (p = 4: K-folds of 8, 4 column folds of 2). x (96 bytes)
    # does not fit the 64-byte ifmap buffer, its K-fold block (8 x 8, 32 bytes) fits a half; the
    # weights (96 bytes) do not fit the filter buffer. Four column folds sharing each block read
    # x once: 96 + 96 bytes, the compulsory traffic; one fold at a time reads x four times.
    over = {**FREE, "array.rows": 2, "array.cols": 2, "sram.ifmap_bytes": 64, "sram.filter_bytes": 64,
            "sram.ofmap_bytes": 1024}
    from tests.hwsim.test_properties import gemm_trace

    fewest = simulate(gemm_trace(8, 8, 24), load_chip("fourbit", {**over, "mapping.objective": "dram_bytes"}))
    row = fewest.to_frame().iloc[0]
    assert row.dram_read_bytes == 96 + 96 == row.compulsory_read_bytes
    fastest = simulate(gemm_trace(8, 8, 24), load_chip("fourbit", over)).to_frame().iloc[0]
    assert fastest.total_cycles <= row.total_cycles and fastest.dram_read_bytes >= row.dram_read_bytes


@settings(max_examples=25, deadline=None)
@given(convs, phases, small_chips, st.sampled_from(BUFFERS))
def test_with_the_bytes_objective_a_larger_buffer_never_adds_dram_bytes(geometry, phase, over, field):
    over = {**over, "mapping.objective": "dram_bytes"}
    trace = conv_trace(phase, *geometry)
    small = _sim(trace, over)
    big = _sim(trace, {**over, field: over[field] * 4})
    if small is not None:
        assert big.dram_read_bytes + big.dram_write_bytes <= small.dram_read_bytes + small.dram_write_bytes + 1e-9


def test_bwd_data_holds_the_input_gradient_region_it_adds_into():
    # bwd_data of a 3x3 convolution over one 16 x 16 channel: a one-row tile of columns adds into
    # the 3 x 3 window of the input gradient, 9 FP32 values: an ofmap half of 4 bytes per output
    # value no longer suffices
    g = ConvGeometry(1, 1, 1, 16, 16, 3, 3, 1, 0, 1)
    from fourbit.hwsim.mapping import staged_bytes

    assert staged_bytes(1, 9, 4, g, False) == 9 * 4  # one pixel's 9 columns: its window
    assert staged_bytes(1, 1, 4, g, False) == 9 * 4  # one column still touches the channel's window
    assert staged_bytes(1, 1, 4, None, False) == 4
    # windows that do not overlap (1x1, stride 2): each column is its own element of dX
    assert staged_bytes(128, 128, 4, ConvGeometry(1, 256, 512, 14, 14, 1, 1, 2, 0, 1), False) == 128 * 128 * 4
    with pytest.raises(ConfigError, match=r"sram.ofmap_bytes is too small"):
        simulate(conv_trace("bwd_data", 1, 1, 16, 16, 1, 3, 3, 1, 0),
                 load_chip("fourbit", {"array.rows": 1, "array.cols": 1, "sram.ofmap_bytes": 40}))

"""The stored tensors behind a GEMM, the true compulsory traffic, and the traffic of the vector
passes reported apart."""

from __future__ import annotations

import pytest

from fourbit.hwsim.config import load_chip
from fourbit.hwsim.engine import simulate
from fourbit.hwsim.tensors import gemm_tensors
from fourbit.models.recipes import get_recipe
from fourbit.traces import lowering, schema
from fourbit.traces.io import Trace
from fourbit.traces.scalesim import import_topology

# B=2, C=3, 8x8 input, F=4 filters 3x3, stride 1, padding 1: output 8x8
GEOMETRY = {"batch": 2, "in_channels": 3, "out_channels": 4, "in_h": 8, "in_w": 8, "kernel_h": 3, "kernel_w": 3,
            "stride": 1, "padding": 1}
X, Y, W = 2 * 3 * 8 * 8, 2 * 4 * 8 * 8, 4 * 3 * 3 * 3  # input, output and weight elements


def _row(phase: str, **over) -> dict:
    shape = lowering.conv2d(2, 3, 8, 8, 4, 3, 3, 1, 1)[phase]
    return {"phase": phase, "M": shape.M, "N": shape.N, "K": shape.K, "groups": shape.groups, **GEOMETRY, **over}


@pytest.mark.parametrize("phase, a, b, out, flags", [
    ("fwd", X, W, Y, (True, False, False)),
    ("bwd_data", Y, W, X, (False, False, True)),
    ("bwd_weight", Y, X, W, (False, True, False)),
])
def test_the_stored_tensors_of_each_phase_of_a_convolution(phase, a, b, out, flags):
    t = gemm_tensors(_row(phase))
    assert (t.a_elements, t.b_elements, t.out_elements) == (a, b, out)
    assert (t.a_im2col, t.b_im2col, t.out_col2im) == flags
    # the column matrices are R*S = 9 times larger (with padding, edge taps read zeros)
    shape = lowering.conv2d(2, 3, 8, 8, 4, 3, 3, 1, 1)[phase]
    assert shape.M * shape.K * shape.groups in (a, 9 * 2 * 3 * 64) and shape.M * shape.N in (out, 9 * X)


def test_a_gemm_without_geometry_stores_what_it_multiplies():
    t = gemm_tensors({"phase": "fwd", "M": 5, "N": 7, "K": 3, "groups": 2})
    assert (t.a_elements, t.b_elements, t.out_elements, t.conv) == (30, 42, 70, None)


def test_a_depthwise_convolution_has_one_filter_per_channel():
    row = {**_row("fwd"), "in_channels": 4, "out_channels": 4, "groups": 4}
    assert gemm_tensors(row).b_elements == 4 * 1 * 3 * 3


def _conv_trace(phase: str, ops: list) -> Trace:
    row = {"step": 0, "layer": "conv", "layer_type": "conv2d", **_row(phase), "a_format": "fp16",
           "b_format": "fp16", "acc_format": "fp32/g1", "out_format": "fp16"}
    return Trace({"batch_size": 2}, schema.from_records("gemms", [row]), schema.from_records("ops", ops),
                 schema.from_records("metrics", []))


def test_compulsory_traffic_counts_each_tensor_once_in_its_format():
    row = simulate(_conv_trace("fwd", []), load_chip("fp16")).to_frame().iloc[0]
    assert row.compulsory_read_bytes == 2 * X + 2 * W  # FP16 input and weights
    assert row.compulsory_write_bytes == 2 * Y
    shape = lowering.conv2d(2, 3, 8, 8, 4, 3, 3, 1, 1)["fwd"]
    assert row.im2col_read_bytes == 2 * shape.M * shape.K + 2 * W  # the column matrix instead of the input
    assert row.im2col_write_bytes == 2 * Y


def test_bwd_data_writes_the_input_gradient_once_not_its_columns():
    """col2im on chip: the GEMM's 9*X columns are accumulated into dx, stored once in FP16."""
    col2im = [{"step": 0, "layer": "conv", "phase": "bwd_data", "op": "col2im_add", "elements": 9 * X,
               "in_format": "fp16", "out_format": "fp32", "fused": True}]
    row = simulate(_conv_trace("bwd_data", col2im), load_chip("fp16")).to_frame().iloc[0]
    assert row.compulsory_write_bytes == 2 * X
    assert row.dram_write_bytes == pytest.approx(2 * X)
    assert row.im2col_write_bytes == pytest.approx(2 * 9 * X)


def test_vector_passes_are_reported_apart_and_inside_the_totals():
    trace = import_topology("resnet18", 2, get_recipe("int4").describe())
    df = simulate(trace, load_chip("fourbit"), extrapolate=True).to_frame()
    passes = df[df.vector_read_bytes > 0]
    assert len(passes) > 10 and (passes.vector_read_bytes <= passes.dram_read_bytes).all()
    bn = df[(df.layer == "layer1.0.conv1") & (df.phase == "fwd")].iloc[0]  # BN, ReLU, quantize of conv1's output
    assert bn.vector_read_bytes > 0 and bn.vector_write_bytes > 0
    t = simulate(trace, load_chip("fourbit"), extrapolate=True).totals()
    assert t.vector_read_bytes == df.vector_read_bytes.sum()

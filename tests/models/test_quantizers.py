"""Quantizers as objects: what each says about itself, recipes built from them and validated at
construction, block scales (exact values by hand) and a GEMM of block-scaled operands."""

from __future__ import annotations

import numpy as np
import pytest

from fourbit.models.layers import Context, run_gemm
from fourbit.models.quantizers import PACT, SAWB, Block, Cast, Log, MaxScaled, MinMax, QTensor, quantizer
from fourbit.models.recipes import LayerPrecision, Recipe, get_recipe
from fourbit.models.recorder import Recorder
from fourbit.traces.block_formats import BlockFormat
from fourbit.traces.errors import ConfigError, NumericsError
from fourbit.traces.formats import Accumulator, FloatFormat, Scale, get_format, register_format
from fourbit.traces.lowering import linear
from tests import naive


def test_each_quantizer_says_its_format_op_and_update_work():
    cases = [  # quantizer, name, format, trace op, update ops, needs a GradScale
        (Cast(), "fp32", "fp32", None, (), False),
        (Cast(get_format("fp16")), "fp16", "fp16", "cast", (), True),
        (SAWB(4), "int4_sawb", "int4", "quantize_uniform", ("moments",), False),
        (PACT(4), "uint4_pact", "uint4", "quantize_uniform", (), False),
        (MinMax(4), "uint4_minmax", "uint4", "quantize_uniform", (), False),
        (MaxScaled(8), "int8_max", "int8", "quantize_uniform", (), False),
        (Log(get_format("fp4_r4_e3_odd")), "fp4_r4_e3_odd", "fp4_r4_e3_odd", "quantize_log", (), True),
        (Block(get_format("mxfp4")), "mxfp4", "fp4_e2m1", "quantize_block", (), False),
    ]
    for q, name, fmt, op, update, scaled in cases:
        assert (q.name, q.format.name, q.op, q.update_ops, q.needs_grad_scale) == (name, fmt, op, update, scaled)
    assert PACT(4).trained_clip and not SAWB(4).trained_clip
    assert PACT(4).signed() == SAWB(4) and MinMax(4).signed() == SAWB(4) and Cast().signed() == Cast()
    assert quantizer("int4_sawb") == SAWB(4) and quantizer("fp4_r2_e3", "down") == Log(get_format("fp4_r2_e3"), "down")
    assert quantizer("int8") == MaxScaled(8, "int8") and quantizer("fp8_e5m2") == Cast(get_format("fp8_e5m2"))
    assert quantizer("nvfp4_2d") == Block(get_format("nvfp4_2d"))


def test_bad_quantizers_and_layer_precisions_are_refused_at_construction():
    with pytest.raises(ConfigError, match="unknown quantizer 'int3'"):
        quantizer("int3")
    with pytest.raises(ConfigError, match="SAWB is modelled at 4 bits"):
        SAWB(8)
    with pytest.raises(ConfigError, match="a cast takes a float format, got 'int4'"):
        Cast(get_format("int4"))
    with pytest.raises(ConfigError, match="a block quantizer takes a block format"):
        Block(get_format("fp8_e4m3"))
    with pytest.raises(ConfigError, match="tie must be 'up' or 'down'"):
        Log(get_format("fp4_r4_e3"), "even")
    with pytest.raises(ConfigError, match="weight cannot be a log format"):
        LayerPrecision(weight="fp4_r4_e3")
    with pytest.raises(ConfigError, match="acc_fwd must be an Accumulator"):
        LayerPrecision(acc_fwd="fp16/g4/c64")
    with pytest.raises(ConfigError, match="out: unknown format 'fp5'"):
        LayerPrecision(out="fp5")
    with pytest.raises(ConfigError, match="grad_scaling must be one of"):
        Recipe("x", LayerPrecision(), LayerPrecision(), LayerPrecision(), LayerPrecision(), "sometimes")


def test_recipes_describe_their_quantizers_as_before():
    d = get_recipe("int4").describe()["hidden"]
    assert (d["weight"], d["act"], d["grad_data"], d["grad_weight"], d["out"], d["out_bwd"]) == \
        ("int4_sawb", "uint4_pact", "fp4_r4_e3", "fp4_r4_e3_odd", "fp16", "")
    assert d["gemm_formats"]["bwd_weight"] == ["fp4_r4_e3_odd", "uint4", "fp16/g4/c64", "fp16"]
    d8 = get_recipe("int8").describe()["hidden"]
    assert (d8["weight"], d8["grad_data"], d8["out_bwd"]) == ("int8_max", "int8", "fp32")


def test_block_quantizer_exact_values_by_hand():
    """Blocks of 4 along the last axis into E4M3 (max 448) with the ``ceil`` rule (the smallest
    power of two X with amax <= 448 X): block [1, -2, 3, 448]: X = 1, elements as given; block
    [0.5, 0.25, 0, 0.125]: 0.5/448 = 2^-9.8 -> X = 2^-9, elements x * 512 = 256, 128, 0, 64; the
    partial block [900]: 900/448 -> X = 4, element 225 -> E4M3 224 (ties to even: 224 and 240 are
    the neighbours, 225 is nearer 224); an all-zero block: scale 0, zeros."""
    fmt = BlockFormat("test_e4m3_b4", 8, element="fp8_e4m3", block=4, scale_format="e8m0", scale_rule="ceil")
    q = Block(fmt)(np.array([[1, -2, 3, 448, 0.5, 0.25, 0, 0.125, 900], [0, 0, 0, 0, 0, 0, 0, 0, 0]]))
    np.testing.assert_array_equal(q.scales, [[1.0, 2.0**-9, 4.0], [0, 0, 0]])
    np.testing.assert_array_equal(q.values[0], [1, -2, 3, 448, 256, 128, 0, 64, 224])
    np.testing.assert_array_equal(q.values[1], 0)
    assert q.scaling == Scale("block", 4, -1, "e8m0", True, "ceil")
    np.testing.assert_array_equal(q.real()[0], [1, -2, 3, 448, 0.5, 0.25, 0, 0.125, 896])
    # transposing carries the block axis and the scales along
    t = q.T
    assert t.scaling.axis == -2 and t.scales.shape == (3, 2)
    np.testing.assert_array_equal(t.real(), q.real().T)


def test_a_gemm_of_block_scaled_operands_is_the_block_gemm():
    """A Linear-shaped GEMM with both operands block scaled along K (a user's E3M2 elements)
    runs the block-scaled GEMM: its result equals the literal twin; an accumulator whose group is
    not the block is refused."""
    rng = np.random.default_rng(0)
    e3m2 = register_format(FloatFormat("test_e3m2", 6, exponent_bits=3, mantissa_bits=2, bias=3, has_inf=False,
                                       has_nan=False, max_value=28.0, min_normal=0.25, saturates=True))
    quant = Block(BlockFormat("test_e3m2_b8", 6, element=e3m2.name, block=8, scale_format="e8m0", scale_rule="ceil"))
    x, w = rng.standard_normal((5, 20)), rng.standard_normal((3, 20))
    a, b = quant(x), quant(w).T
    shape = linear(5, 20, 3)["fwd"]

    class _Layer:
        name, layer_type, role = "fc", "linear", "hidden"

    ctx = Context(get_recipe("fp32"), Recorder())
    acc = Accumulator("fp32", 8, None)
    y = run_gemm(ctx, _Layer(), "fwd", a, b, acc, get_format("fp32"), shape)
    np.testing.assert_array_equal(y, naive.gemm_block(a.values, a.scales, b.values, b.scales, 8, "fp32"))
    assert not np.array_equal(a.values, a.real())  # the scales did something
    with pytest.raises(NumericsError, match="accumulator must be FORMAT/g8 without chunks, got int32"):
        run_gemm(ctx, _Layer(), "fwd", a, b, Accumulator("int32"), get_format("fp32"), shape)
    with pytest.raises(NumericsError, match="use .scales"):
        _ = a.scale


def test_per_tensor_qtensor_keeps_its_one_scale():
    q = QTensor(np.array([[1, 2]], np.int8), get_format("int4"), 0.25)
    assert q.scale == 0.25 and q.scales.shape == () and q.T.scale == 0.25
    np.testing.assert_array_equal(q.real(), [[0.25, 0.5]])

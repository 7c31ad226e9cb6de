"""The formats block-scaled training uses (E2M1, E8M0, E4M3, BF16) against ml_dtypes, every code;
the block formats' names, parameters and errors."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from fourbit.models.numerics import quantize_float
from fourbit.traces.block_formats import BlockFormat
from fourbit.traces.errors import FormatError
from fourbit.traces.formats import format_from_spec, format_names, format_spec, get_format


@pytest.mark.parametrize("name, numpy_type, bits", [
    ("fp4_e2m1", "float4_e2m1fn", 4), ("e8m0", "float8_e8m0fnu", 8), ("fp8_e4m3", "float8_e4m3fn", 8),
    ("bf16", "bfloat16", 16)])
def test_every_code_decodes_and_encodes_as_ml_dtypes(name, numpy_type, bits):
    fmt = get_format(name)
    dt = np.dtype(getattr(ml_dtypes, numpy_type))
    codes = np.arange(2**bits, dtype=np.uint32).astype(np.uint8 if bits <= 8 else np.uint16)
    with np.errstate(invalid="ignore"):
        ref = codes.view(dt).astype(np.float64)
    ours = fmt.decode(codes)
    np.testing.assert_array_equal(ours, ref)  # NaN where ml_dtypes has NaN
    finite = np.isfinite(ref)
    back = fmt.encode(ref[finite])
    np.testing.assert_array_equal(back, codes[finite])  # -0 and +0 keep their own codes
    assert fmt.dtype == dt


def test_the_element_and_scale_grids_by_hand():
    e2m1 = get_format("fp4_e2m1")
    assert sorted(set(np.abs(e2m1.values()))) == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert (e2m1.has_nan, e2m1.has_inf, e2m1.saturates, e2m1.max_value) == (False, False, True, 6.0)
    e8m0 = get_format("e8m0")
    assert (e8m0.min_value, e8m0.max_value) == (2.0**-127, 2.0**127)
    assert e8m0.holds([2.0**-127, 1.0, 2.0**127, 3.0, 0.0, 2.0**128]).tolist() == [True, True, True, False, False,
                                                                                    False]
    with pytest.raises(FormatError, match="not exactly representable"):
        e8m0.encode(np.array([3.0]))
    assert get_format("bf16").max_value == float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)


def test_rounding_onto_e2m1_and_bf16_agrees_with_ml_dtypes():
    """Round to nearest even; E2M1 saturates at 6 (ml_dtypes' float4_e2m1fn saturates too)."""
    x = np.concatenate([np.arange(-8, 8, 2.0**-6), [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -5.0, 6.5, 1e9]])
    ours, _ = quantize_float(x, "fp4_e2m1")
    np.testing.assert_array_equal(ours, x.astype(ml_dtypes.float4_e2m1fn).astype(np.float64))
    assert ours[-10:].tolist() == [0, 1, 1, 2, 2, 4, 4, -4, 6, 6]
    np.testing.assert_array_equal(quantize_float(x.astype(np.float32), "fp4_e2m1")[0], ours)  # float32 path
    rng = np.random.default_rng(0)
    with np.errstate(over="ignore"):  # values beyond binary32 become +-inf (inputs that pass through)
        y = (rng.standard_normal(100_000) * 2.0 ** rng.integers(-140, 130, 100_000)).astype(np.float32)
    y[:4] = [3.3961514e38, -3.4028235e38, 1e-45, -0.0]  # overflow (no saturation), subnormals, signed zero
    with np.errstate(over="ignore"):
        want = y.astype(ml_dtypes.bfloat16).astype(np.float64)
    got, stats = quantize_float(y, "bf16")
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))
    assert stats.clipped == np.count_nonzero(np.isinf(want) & np.isfinite(y)) > 0  # finite values rounded to inf
    assert stats.flushed == np.count_nonzero((want == 0) & (y != 0)) > 0


@pytest.mark.parametrize("name, element, block, scale, rule, two_d, bits", [
    ("mxfp4", "fp4_e2m1", 32, "e8m0", "floor", False, 4.25),
    ("nvfp4", "fp4_e2m1", 16, "fp8_e4m3", "two_level", False, 4.5),
    ("nvfp4_2d", "fp4_e2m1", 16, "fp8_e4m3", "two_level", True, 4 + 8 / 256),
    ("int4_block", "int4", 16, "fp8_e4m3", "two_level", False, 4.5),
    ("int4_block_b32_e8m0", "int4", 32, "e8m0", "ceil", False, 4.25),
    ("mxfp4_b16_ceil", "fp4_e2m1", 16, "e8m0", "ceil", False, 4.5),
    ("nvfp4_e8m0", "fp4_e2m1", 16, "e8m0", "ceil", False, 4.5),
    ("int4_block_bf16", "int4", 16, "bf16", "amax", False, 5.0),
])
def test_block_format_names(name, element, block, scale, rule, two_d, bits):
    fmt = get_format(name)
    assert isinstance(fmt, BlockFormat) and fmt.name == name
    assert (fmt.element, fmt.block, fmt.scale_format, fmt.scale_rule, fmt.block_2d) == (element, block, scale, rule, two_d)
    assert fmt.bits == 4 and fmt.bits_per_element == bits
    assert format_from_spec(format_spec(fmt)) == fmt  # traces can define it
    assert fmt.scaling(-1).kind == ("block2d" if two_d else "block")
    assert get_format(name).element_format.name == element


def test_names_are_canonical_and_listed():
    assert get_format("mxfp4_b32").name == "mxfp4" and get_format("nvfp4_e4m3").name == "nvfp4"
    assert get_format("mxfp4_floor") == get_format("mxfp4")
    assert {"mxfp4", "nvfp4", "int4_block", "nvfp4_2d", "fp4_e2m1", "e8m0", "bf16"} <= set(format_names())


@pytest.mark.parametrize("kwargs, match", [
    ({"scale_rule": "round"}, r"scale_rule must be one of \('floor', 'ceil', 'two_level', 'amax'\), got 'round'"),
    ({"block": 0}, r"block must be an integer in 1\.\.4096, got 0"),
    ({"block": 1.5}, r"block must be an integer in 1\.\.4096, got 1\.5"),
    ({"element": "uint4"}, "float or signed integer format"),
    ({"scale_format": "e8m0", "scale_rule": "two_level"}, "cannot store its scales in 'e8m0'"),
    ({"scale_format": "fp32", "scale_rule": "two_level"}, "cannot store its scales in 'fp32'"),
])
def test_bad_block_formats_say_what_is_allowed(kwargs, match):
    base = dict(element="fp4_e2m1", block=32, scale_format="e8m0", scale_rule="floor")
    with pytest.raises(FormatError, match=match):
        BlockFormat("test_block", 4, **{**base, **kwargs})


def test_a_bad_block_name_lists_the_grammar():
    with pytest.raises(FormatError, match="block must be an integer in 1..4096, got 0"):
        get_format("mxfp4_b0")
    with pytest.raises(FormatError, match=r"mxfp4, nvfp4 or int4_block with optional _b<N>"):
        get_format("mxfp5")


@pytest.mark.parametrize("name, saturate", [("bf16", False), ("fp4_e2m1", True)])
def test_the_ml_dtypes_cast_path_equals_the_kernel(name, saturate):
    """float32 inputs to BF16 (overflow to inf) and to E2M1 (saturating) go through ml_dtypes'
    cast; the general kernel (float64 inputs) gives the same values and statistics on ties,
    subnormals, overflow and the largest finite values."""
    fmt = get_format(name)
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(20_000) * 2.0 ** rng.integers(-140, 128, 20_000),
                        [0.25, 0.75, 2.5, 5.0, 7.0, 6.99, -7.0, 1e-45, -1e-45, 3.4e38, -3.4e38, 0.0, -0.0]])
    with np.errstate(over="ignore"):  # some exceed binary32: +-inf, overflow inputs too
        x32 = x.astype(np.float32)
    fast, fast_stats = quantize_float(x32, fmt, saturate=saturate)
    slow, slow_stats = quantize_float(x32.astype(np.float64), fmt, saturate=saturate)
    np.testing.assert_array_equal(fast, slow)
    np.testing.assert_array_equal(np.signbit(fast), np.signbit(slow))
    assert fast_stats == slow_stats

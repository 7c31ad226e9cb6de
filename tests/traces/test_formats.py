"""Every code of every format, the paper's representable sets, the accumulator descriptor."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from fourbit.traces.errors import FormatError
from fourbit.traces.formats import (
    Accumulator,
    FloatFormat,
    LogFormat,
    format_names,
    get_format,
    pack_nibbles,
    unpack_nibbles,
)

SMALL = [n for n in format_names() if get_format(n).bits <= 16]


@pytest.mark.parametrize("name", SMALL)
def test_every_code_round_trips(name):
    fmt = get_format(name)
    codes = np.arange(2**fmt.bits).astype(fmt.code_dtype)
    values = fmt.decode(codes)
    ok = ~np.isnan(values)
    back = fmt.encode(values[ok])
    np.testing.assert_array_equal(fmt.decode(back), values[ok])
    # distinct codes of distinct values map back to themselves (+-0 and the int4 sign aside)
    if isinstance(fmt, LogFormat) or fmt.kind == "int":
        np.testing.assert_array_equal(back, codes[ok])


def test_float_formats_match_ml_dtypes_and_numpy():
    for name, dt in (("fp8_e4m3", ml_dtypes.float8_e4m3fn), ("fp8_e5m2", ml_dtypes.float8_e5m2)):
        ref = np.arange(256, dtype=np.uint8).view(dt).astype(np.float64)
        np.testing.assert_array_equal(get_format(name).values(), ref)
    ref16 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float64)
    np.testing.assert_array_equal(get_format("fp16").values(), ref16)


def test_dlfloat16_layout():
    f = get_format("dlfloat16")
    assert isinstance(f, FloatFormat) and (f.exponent_bits, f.mantissa_bits, f.bias) == (6, 9, 31)
    assert not f.subnormals and f.ties == "away"
    v = f.decode(np.array([0x0000, 0x0001, 0x0200, 0x3E00, 0x7FFE, 0x7FFF, 0x8001], np.uint16))
    np.testing.assert_array_equal(v, [0.0, 2.0**-31 * (1 + 2**-9), 2.0**-30, 1.0,
                                      2.0**32 * (2 - 2**-8), np.inf, -(2.0**-31) * (1 + 2**-9)])
    assert f.max_value == 2.0**32 * (2 - 2**-8) and f.min_positive == 2.0**-31 * (1 + 2**-9)


def test_paper_fp4_sets():
    even = get_format("fp4_r4_e3")
    assert even.layout.startswith("1-3-0") and even.bits == 4 and even.bias == 4
    assert sorted(set(np.abs(even.values()))) == [0.0] + [4.0**n for n in range(-3, 4)]
    odd = get_format("fp4_r4_e3_odd")
    assert sorted(set(np.abs(odd.values()))) == [0.0] + [0.5 * 4.0**n for n in range(-3, 4)]
    np.testing.assert_array_equal(even.thresholds(), [0.009765625, 0.0390625, 0.15625, 0.625, 2.5, 10, 40])


@pytest.mark.parametrize("r", [2, 4, 8, 16])
@pytest.mark.parametrize("e", [2, 3, 4])
def test_log_format_sets(r, e):
    f = LogFormat.make(r, e)
    b = r.bit_length() - 1
    np.testing.assert_array_equal(f.levels(), [2.0 ** (b * (c - 2 ** (e - 1))) for c in range(1, 2**e)])
    assert len(f.values()) == 2 ** (e + 1)
    # thresholds are the arithmetic midpoints (1 + 1/r)/2 * r * v between v and r*v
    np.testing.assert_array_equal(f.thresholds()[1:], (1 + 1 / r) / 2 * f.levels()[1:])


def test_odd_phase_only_for_radix_4_and_16():
    for r in (2, 8):
        with pytest.raises(FormatError, match="no odd phase"):
            LogFormat.make(r, 3, "odd")
    with pytest.raises(FormatError, match="radix must be one of"):
        LogFormat.make(3)
    with pytest.raises(FormatError, match="exponent_bits must be one of"):
        LogFormat.make(4, 5)


def test_unknown_format_names_the_allowed_ones():
    with pytest.raises(FormatError, match="unknown format 'fp5'.*allowed: int4"):
        get_format("fp5")
    with pytest.raises(ValueError):
        get_format("fp4_r3_e3")


def test_encode_refuses_unrepresentable_values():
    with pytest.raises(FormatError, match="not exactly representable"):
        get_format("fp4_r4_e3").encode(np.array([0.5]))
    with pytest.raises(FormatError, match="allowed -8..7"):
        get_format("int4").encode(np.array([8]))
    with pytest.raises(FormatError, match="not exactly representable in format 'fp16'"):
        get_format("fp16").encode(np.array([1 + 2**-12]))


def test_fp32_values_refused_but_encode_works():
    f = get_format("fp32")
    with pytest.raises(FormatError, match="2\\*\\*32 codes"):
        f.values()
    np.testing.assert_array_equal(f.decode(f.encode(np.array([1.5, -2.0**-149]))), [1.5, -(2.0**-149)])


def test_pack_nibbles_round_trip():
    codes = np.random.default_rng(0).integers(0, 16, 1001).astype(np.uint8)
    packed = pack_nibbles(codes)
    assert packed.dtype == np.uint8 and packed.size == 501
    np.testing.assert_array_equal(unpack_nibbles(packed, 1001), codes)
    assert pack_nibbles([1, 2]).tolist() == [0x21]
    with pytest.raises(FormatError, match="0..15"):
        pack_nibbles([16])


def test_accumulator_descriptor():
    acc = Accumulator()
    assert (acc.format, acc.group, acc.chunk, acc.name) == ("fp16", 4, 64, "fp16/g4/c64")
    for name in ("fp16/g4/c64", "fp32/g1", "dlfloat16/g2/c8", "int32", "exact", "fp16/g4/carray"):
        assert Accumulator.parse(name).name == name
    assert Accumulator("fp16", 4, "array").resolve(32, 4).chunk == 128
    assert Accumulator("int32", 4, 64) == Accumulator("int32")  # order-free: one canonical object
    with pytest.raises(FormatError, match="multiple of group=4"):
        Accumulator("fp16", 4, 6)
    with pytest.raises(FormatError, match="accumulator format must be one of"):
        Accumulator("bf16")
    with pytest.raises(FormatError, match="group must be an integer >= 1"):
        Accumulator("fp16", 0)


@pytest.mark.parametrize("name", SMALL)
def test_a_formats_dtype_holds_exactly_its_values(name):
    """Where a format names a numpy or ml_dtypes type, that type's finite values are exactly the
    format's (every code, compared as float64), so code that asks for the dtype gets the format."""
    fmt = get_format(name)
    if fmt.dtype is None:
        return
    dt = fmt.dtype
    if fmt.kind == "int":  # every integer of the range survives the dtype, and no other fits it
        ref = np.arange(fmt.min_value, fmt.max_value + 1).astype(dt).astype(np.float64)
        assert (ml_dtypes.iinfo(dt).min, ml_dtypes.iinfo(dt).max) == (fmt.min_value, fmt.max_value)
    else:
        with np.errstate(invalid="ignore"):  # NaN codes
            ref = np.arange(2**fmt.bits).astype(f"u{dt.itemsize}").view(dt).astype(np.float64)
    np.testing.assert_array_equal(np.unique(ref[np.isfinite(ref)]), np.unique(fmt.values()[np.isfinite(fmt.values())]))


def test_behaviour_comes_from_properties():
    fp16, e4m3, e5m2 = get_format("fp16"), get_format("fp8_e4m3"), get_format("fp8_e5m2")
    assert (fp16.saturates, fp16.has_inf, fp16.has_nan) == (False, True, True)
    assert (e4m3.saturates, e4m3.has_inf, e4m3.has_nan) == (True, False, True)
    assert e5m2.saturates and e5m2.has_inf
    assert get_format("int4").saturates and get_format("fp4_r4_e3").saturates
    assert fp16.ieee_dtype == np.float16 and get_format("fp32").ieee_dtype == np.float32
    assert e4m3.ieee_dtype is None and get_format("dlfloat16").ieee_dtype is None
    assert get_format("int4").dtype == ml_dtypes.int4 and get_format("uint4").dtype == ml_dtypes.uint4
    np.testing.assert_array_equal(fp16.holds([1.0, 2.0**-24, 2.0**-25, 65504.0, 65520.0, np.inf, 1 + 2**-10]),
                                  [True, True, False, True, False, True, True])
    np.testing.assert_array_equal(e4m3.holds([448.0, 464.0, np.inf]), [True, False, False])
    np.testing.assert_array_equal(get_format("int4").holds([-8, 7, 8, 0.5]), [True, True, False, False])
    # which formats FP16 units compute exactly: INT4, INT8, FP8 and radix-4 FP4 values are FP16
    # values; DLFloat16 (9 mantissa bits, range 2^32) and FP32 are not
    for name, fits in (("int4", True), ("int8", True), ("fp8_e4m3", True), ("fp8_e5m2", True),
                       ("fp4_r4_e3", True), ("fp4_r16_e4", False), ("dlfloat16", False), ("fp32", False),
                       ("int32", False)):
        assert get_format(name).representable_in(fp16) is fits, name
    assert get_format("fp16").representable_in(get_format("fp32"))
    assert get_format("int4").bits_per_element == 4 and get_format("int4").bytes_per_value == 0.5


def test_scales_per_tensor_per_block_and_2d():
    from fourbit.traces.formats import Scale

    assert Scale().bits_per_element == 0 and Scale().shape((3, 5)) == ()
    s = Scale("block", 4, -1, "fp8_e4m3", rule="amax")
    assert s.bits_per_element == 2.0 and s.shape((3, 10)) == (3, 3)
    np.testing.assert_array_equal(s.expand(np.array([[1.0, 2.0, 4.0]]), (1, 10)),
                                  [[1, 1, 1, 1, 2, 2, 2, 2, 4, 4]])
    assert s.transposed(2).axis == -2 and s.transposed(2).shape((10, 3)) == (3, 3)
    two = Scale("block2d", 2, format="fp32")
    assert two.shape((3, 5)) == (2, 3) and two.bits_per_element == 8.0
    np.testing.assert_array_equal(two.expand(np.array([[1.0, 2.0], [3.0, 4.0]]), (3, 4)),
                                  [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4]])
    with pytest.raises(FormatError, match="needs a block size"):
        Scale("block")
    with pytest.raises(FormatError, match="scale kind must be one of"):
        Scale("row")
    with pytest.raises(FormatError, match="unknown format"):
        Scale("block", 32, format="e9m9")


def test_a_format_definition_that_contradicts_itself_is_refused():
    from fourbit.traces.formats import IntFormat, register_format

    ok = dict(exponent_bits=3, mantissa_bits=2, bias=3, has_inf=False, has_nan=False, max_value=28.0,
              min_normal=0.25, saturates=True, numpy_type="float6_e3m2fn")
    assert FloatFormat("ok_e3m2", 6, **ok).max_value == 28.0
    for change, message in (({"max_value": 1e9}, "numpy_type float6_e3m2fn has 2 mantissa bits, max 28.0"),
                            ({"numpy_type": "nosuchtype"}, "neither an ml_dtypes nor a numpy type"),
                            ({"ties": "sideways"}, "ties must be 'even' or 'away'"),
                            ({"exponent_bits": 5}, "bits 6 is not 1 \\+ exponent_bits"),
                            ({"min_normal": 0.0}, "min_normal must be a finite number > 0"),
                            ({"max_value": float("nan")}, "max_value must be a finite number > 0")):
        with pytest.raises(FormatError, match=message):
            FloatFormat("bad_e3m2", 6, **{**ok, **change})
    with pytest.raises(FormatError, match="bits must be an integer in 1..64"):
        FloatFormat("bad", "6", **ok)
    with pytest.raises(FormatError, match="a format name is lower-case"):
        register_format(FloatFormat("fp16/g4", 6, **ok))
    with pytest.raises(FormatError, match="bits must be an integer in 1..64"):
        IntFormat("int0", 0)
    with pytest.raises(FormatError, match="radix 3"):
        LogFormat("fp4_r3_e3", 4, radix=3)

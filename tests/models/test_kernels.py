"""Kernels against their plain twins (tests/naive.py), bit for bit.

This module also runs in the CI leg with NUMBA_DISABLE_JIT=1 (kernel bodies as plain Python),
so its shapes stay small.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from fourbit.models import _kernels as K
from fourbit.models import numerics
from fourbit.traces.formats import Accumulator, LogFormat
from tests import naive

LOG_FORMATS = [LogFormat.make(r, e, p) for r in (2, 4, 8, 16) for e in (2, 3, 4) for p in ("even", "odd")
               if not (p == "odd" and r not in (4, 16))]


def same_bits(x: np.ndarray, y: np.ndarray) -> bool:
    """Equal values (NaN == NaN), zeros compared by value (the twin does not track -0.0)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return bool(np.all((x == y) | (np.isnan(x) & np.isnan(y))))


@pytest.mark.parametrize("fmt", LOG_FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("tie", ["up", "down"])
def test_log_kernel_matches_twin_at_every_threshold(fmt, tie):
    t = fmt.thresholds()
    lv = fmt.levels()
    pts = np.concatenate([t, np.nextafter(t, 0), np.nextafter(t, np.inf), lv, lv * 3, [0.0, 1e300, np.inf, 5e-324]])
    x = np.concatenate([pts, -pts])
    got = numerics.quantize_fp4(x, fmt.radix, fmt.exponent_bits, fmt.phase, tie)
    want = naive.quantize_log(x, fmt, tie)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(x))


@given(st.lists(st.floats(allow_nan=False, width=64), min_size=1, max_size=40),
       st.sampled_from(LOG_FORMATS), st.sampled_from(["up", "down"]))
def test_log_kernel_property(xs, fmt, tie):
    x = np.array(xs)
    got, codes, _ = numerics.quantize_fp4_codes(x, fmt, tie)
    np.testing.assert_array_equal(got, naive.quantize_log(x, fmt, tie))
    np.testing.assert_array_equal(fmt.decode(codes), got)  # codes decode to the values
    np.testing.assert_array_equal(numerics.quantize_fp4_codes(got, fmt, tie)[0], got)  # idempotent
    np.testing.assert_array_equal(numerics.quantize_fp4_codes(-x, fmt, tie)[0], -got)  # symmetric


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=1, max_size=30),
       st.sampled_from(["fp16", "fp32", "dlfloat16", "fp8_e4m3", "fp8_e5m2"]))
def test_round_float_kernel_matches_twin(xs, fmt):
    x = np.array(xs)
    got, _ = numerics.quantize_float(x, fmt)
    sat = fmt.startswith("fp8")
    want = np.array([naive.round_float(v, fmt, sat) for v in xs])
    assert same_bits(got, want)


@njit
def _nearest_even(x, frac_bits, emin, max_value, saturate):
    return K.round_nearest_even(x, frac_bits, emin, max_value, saturate)


@given(st.lists(st.floats(allow_nan=False, width=64), min_size=1, max_size=30),
       st.sampled_from(["fp4_e2m1", "fp8_e4m3", "fp8_e5m2", "fp16", "bf16", "fp32"]), st.booleans())
def test_round_nearest_even_equals_round_float(xs, name, saturate):
    """The branch-free rounding (the magic-number add) is `round_float` wherever it applies
    (subnormals, ties to even), ties, signed zeros and overflow included."""
    from fourbit.traces.formats import get_format

    fmt = get_format(name)
    frac, emin, mx = fmt.mantissa_bits, fmt.emin, fmt.max_value
    q = 2.0 ** (emin - frac)  # the subnormal quantum: ties at odd multiples of q / 2
    ties = [k * q / 2 for k in (1, 3, 5, -7)] + [mx + 2.0 ** (np.frexp(mx)[1] - 2 - frac), 2 * mx, -0.0, np.inf]
    for v in [*xs, *ties]:
        want = K.round_float(v, frac, emin, True, False, mx, 0.0, saturate)
        got = _nearest_even(v, frac, emin, mx, saturate)
        assert got[:2] == want[:2] and np.signbit(got[0]) == np.signbit(want[0]), (v, got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fmt", ["bf16", "dlfloat16"])  # the branch-free and the general loop
def test_round_float_array_counts_by_hand(dtype, fmt):
    """counts: [0] overflows, [1] non-zero values rounded to zero, [2] zeros of the output, [3]
    NaNs of the input (passed through), each summed across chunks (bf16: quantum 2^-133, max
    (2 - 2^-7) * 2^127; dlfloat16: no subnormals, smallest normal 2^-31)."""
    from fourbit.traces.formats import get_format

    f = get_format(fmt)
    n = 3 * K._ROUND_CHUNK + 7
    x = np.full(n, 1.5, dtype)
    x[K._ROUND_CHUNK - 1] = np.nan  # last of chunk 0
    x[K._ROUND_CHUNK] = 2.0**-140 if f.subnormals else 2.0**-40  # flushed to zero (first of chunk 1)
    x[-1] = -0.0
    x[-2] = np.finfo(np.float32).max  # rounds beyond both formats: overflows
    out = np.empty_like(x)
    counts = np.zeros(4, np.int64)
    K.round_float_array(x, out, f.mantissa_bits, f.emin, f.subnormals, f.ties == "away", f.max_value,
                        f.min_normal, False, counts)
    assert counts.tolist() == [1, 1, 2, 1]
    assert np.isnan(out[K._ROUND_CHUNK - 1]) and out[-2] == np.inf and out[0] == 1.5


def test_round_float_matches_numpy_and_ml_dtypes():
    import ml_dtypes

    x = np.random.default_rng(0).standard_normal(20000) * np.exp2(np.random.default_rng(1).integers(-30, 20, 20000))
    with np.errstate(over="ignore"):  # numpy's cast overflows to inf, as IEEE says
        ref16 = x.astype(np.float16).astype(np.float64)
    np.testing.assert_array_equal(numerics.quantize_float(x, "fp16")[0], ref16)
    np.testing.assert_array_equal(numerics.quantize_float(x, "fp32")[0], x.astype(np.float32).astype(np.float64))
    for name, dt, mx in (("fp8_e4m3", ml_dtypes.float8_e4m3fn, 448.0), ("fp8_e5m2", ml_dtypes.float8_e5m2, 57344.0)):
        ref = np.clip(x, -mx, mx).astype(dt).astype(np.float64)
        np.testing.assert_array_equal(numerics.quantize_float(x, name)[0], ref)


ACCS = [Accumulator("fp16", 4, 64), Accumulator("fp16", 4, 8), Accumulator("fp16", 1, None),
        Accumulator("fp32", 1, None), Accumulator("fp32", 4, 16), Accumulator("dlfloat16", 4, 64),
        Accumulator("dlfloat16", 2, 2), Accumulator("exact")]


def _fp4_int4(draw_shape, rng, fmt=None):
    m, k, n = draw_shape
    fmt = fmt or LogFormat.make()
    a = rng.integers(-7, 8, (m, k)).astype(np.float64)
    scale = np.exp2(rng.integers(-2 * fmt.log2_radix * fmt.bias, 2 * fmt.log2_radix * fmt.bias + 1, (k, n)) / 2)
    b = numerics.quantize_fp4(rng.standard_normal((k, n)) * scale, fmt.radix, fmt.exponent_bits, fmt.phase)
    return a, b


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 19), st.integers(1, 5), st.integers(0, 2**31),
       st.sampled_from(ACCS), st.sampled_from(["shift_add", "fp16_ops", "big"]))
def test_grouped_gemms_equal_one_gemm_per_group(g, m, k, n, seed, acc, kind):
    """`gemm_groups_with_stats` (one plan from all groups' bounds) gives each group's
    `gemm_with_stats` result bit for bit, and the sum of their events, for groups whose ranges
    differ (each group scaled by its own power of two)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(g):
        if kind == "shift_add":
            a, b = _fp4_int4((m, k, n), rng)
        elif kind == "fp16_ops":
            a = (rng.standard_normal((m, k)) * 2.0 ** (rng.integers(-20, 10, (m, k)) - 3 * i)).astype(np.float16)
            b = (rng.standard_normal((k, n)) * np.exp2(rng.integers(-20, 10, (k, n)))).astype(np.float16)
        else:
            a, b = rng.integers(-15, 16, (m, k)) * 1024.0 * 2.0**i, numerics.quantize_fp4(rng.standard_normal((k, n)) * 40)
        pairs.append((np.asarray(a, np.float64), np.asarray(b, np.float64)))
    a3, b3 = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    out, stats = numerics.gemm_groups_with_stats(a3, b3, acc)
    each = [numerics.gemm_with_stats(a, b, acc) for a, b in pairs]
    for got, (want, _) in zip(out, each, strict=True):
        assert same_bits(got, want)
    assert (stats.overflows, stats.underflows, stats.nonfinite_outputs) == tuple(
        sum(getattr(s, f) for _, s in each) for f in ("overflows", "underflows", "nonfinite_outputs"))


@given(st.integers(1, 5), st.integers(1, 19), st.integers(1, 5), st.integers(0, 2**31),
       st.sampled_from(ACCS), st.sampled_from(["shift_add", "fp16_ops", "big"]),
       st.sampled_from(LOG_FORMATS), st.booleans())
def test_gemm_kernels_match_twin(m, k, n, seed, acc, kind, fmt, swap):
    rng = np.random.default_rng(seed)
    if kind == "shift_add":
        a, b = _fp4_int4((m, k, n), rng, fmt)
        if swap:  # the log operand on the left, as in bwd_data and bwd_weight
            a, b = b.T.copy(), a.T.copy()
    elif kind == "fp16_ops":
        a = (rng.standard_normal((m, k)) * np.exp2(rng.integers(-20, 10, (m, k)))).astype(np.float16).astype(np.float64)
        b = (rng.standard_normal((k, n)) * np.exp2(rng.integers(-20, 10, (k, n)))).astype(np.float16).astype(np.float64)
    else:  # values that overflow fp16 accumulators
        a = rng.integers(-15, 16, (m, k)) * 1024.0
        b = numerics.quantize_fp4(rng.standard_normal((k, n)) * 40)
    want = naive.gemm(a, b, acc)
    paths = ["general"]
    ao, bo = numerics._scan(a, "a"), numerics._scan(b, "b")
    plan = numerics._plan(ao, bo, a.shape[1], acc)
    if plan not in paths:
        paths.append(plan)
    if numerics._log_side(ao, bo, acc.group) and acc.format != "exact" and "shift_add" not in paths:
        paths.append("shift_add")
    fmt_acc = acc.value_format if acc.format != "exact" else None
    if plan == "native32":  # the float64-lane kernel must agree too
        paths.append("ieee64")
    if plan in ("ieee32", "ieee64") and 2.0 ** (ao.low + bo.low) >= fmt_acc.min_normal:
        # the bit-trick lanes must agree where they are valid too (no subnormal group sums)
        paths.append("fast32" if plan == "ieee32" else "fast64")
    ref_stats = numerics.gemm_with_stats(a, b, acc, path="general")[1]
    for path in paths:
        got, stats = numerics.gemm_with_stats(a, b, acc, path=path)
        assert same_bits(got, want), (path, got, want)
        assert (stats.overflows, stats.underflows) == (ref_stats.overflows, ref_stats.underflows), path


@given(st.integers(1, 4), st.integers(1, 40), st.integers(1, 4), st.integers(0, 2**31))
def test_int_paths_agree(m, k, n, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 16, (m, k)).astype(np.uint8)
    b = rng.integers(-8, 8, (k, n)).astype(np.int8)
    want = a.astype(np.int64) @ b.astype(np.int64)
    for path in ("blas32", "blas64", "int"):
        np.testing.assert_array_equal(numerics.gemm_with_stats(a, b, Accumulator("int32"), path=path)[0], want)


def test_fast_paths_agree_on_a_large_shape():
    rng = np.random.default_rng(3)
    a, b = _fp4_int4((37, 300, 41), rng)
    acc = Accumulator("fp16", 4, 64)
    ref = numerics.gemm_with_stats(a, b, acc, path="general")[0]
    for path in ("fast32", "fast64", "ieee32"):
        np.testing.assert_array_equal(numerics.gemm_with_stats(a, b, acc, path=path)[0], ref)


@given(st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=300),
       st.sampled_from(["fp16", "fp32"]))
def test_hardware_float32_cast_matches_the_reference(xs, fmt):
    """float32 inputs to fp16/fp32 take the CPU's conversion: same values and statistics."""
    x32 = np.array(xs, np.float32)
    got, got_stats = numerics.quantize_float(x32, fmt, dtype=np.float32)
    want, want_stats = numerics.quantize_float(x32.astype(np.float64), fmt)
    assert got.dtype == np.float32
    assert same_bits(got.astype(np.float64), want)
    assert got_stats == want_stats


def test_hardware_cast_exact_values():
    # 65520 is the fp16 overflow threshold (ties to even onto 2^16); 2^-25 ties to zero, 3 * 2^-26 up
    x = np.array([65519.0, 65520.0, -np.inf, 2.0**-25, 3 * 2.0**-26, 1 + 2.0**-11, 1 + 3 * 2.0**-11], np.float32)
    got, stats = numerics.quantize_float(x, "fp16", dtype=np.float32)
    np.testing.assert_array_equal(got, [65504.0, np.inf, -np.inf, 0.0, 2.0**-24, 1.0, 1 + 2.0**-9])
    assert (stats.clipped, stats.flushed) == (1, 1)


@pytest.mark.parametrize("acc", [Accumulator("fp32", 1, None), Accumulator("fp16", 4, 64), Accumulator("fp16", 1, 8)])
def test_narrow_outputs_run_transposed_with_the_same_bits(acc):
    """N < 8 runs the lane kernels on C^T = B^T A^T; every output keeps its k order."""
    rng = np.random.default_rng(4)
    a = rng.standard_normal((300, 25)).astype(np.float16).astype(np.float64)
    b = rng.standard_normal((25, 6)).astype(np.float16).astype(np.float64)
    ref, ref_stats = numerics.gemm_with_stats(a, b, acc, path="general")
    for path in ("fast32", "ieee32") if acc.format == "fp16" else ("ieee64", "fast64", "native32"):
        got, stats = numerics.gemm_with_stats(a, b, acc, path=path)
        assert same_bits(got, ref) and (stats.overflows, stats.underflows) == (ref_stats.overflows, ref_stats.underflows)
    # integers: no underflow check, so the transposed run is taken; fp16 accumulators overflow
    # in some outputs, and every row is recomputed to count the events
    a = rng.integers(-2047, 2048, (300, 25)).astype(np.float64)
    b = rng.integers(-15, 16, (25, 6)).astype(np.float64)
    ref, ref_stats = numerics.gemm_with_stats(a, b, acc, path="general")
    got, stats = numerics.gemm_with_stats(a, b, acc)
    assert same_bits(got, ref) and stats.overflows == ref_stats.overflows
    assert (ref_stats.overflows > 0) == (acc.format == "fp16")


FINITE = st.floats(allow_nan=False, allow_infinity=False, width=64, min_value=-1e6, max_value=1e6)
STEPS = st.floats(min_value=2.0**-20, max_value=1e3, allow_nan=False, allow_infinity=False)


@given(st.lists(FINITE, min_size=1, max_size=40), STEPS, st.sampled_from([(-7, 7), (0, 15), (-128, 127)]))
def test_uniform_kernel_matches_twin(xs, step, bounds):
    x = np.array(xs)
    lo, hi = bounds
    codes, stats = numerics.quantize_uniform(x, step, lo, hi, np.int16)
    want = naive.quantize_uniform(x, step, lo, hi)
    np.testing.assert_array_equal(codes, want)
    assert stats.clipped == int(np.count_nonzero((x / step < lo) | (x / step > hi)))
    assert stats.flushed == int(np.count_nonzero((want == 0) & (x != 0)))
    if lo == -hi:  # the symmetric (SAWB) range: sign symmetric
        np.testing.assert_array_equal(numerics.quantize_uniform(-x, step, lo, hi, np.int16)[0], -codes)
    again = numerics.quantize_uniform(codes * step, step, lo, hi, np.int16)[0]
    np.testing.assert_array_equal(again, codes)  # idempotent on its own grid


@given(st.lists(FINITE, min_size=1, max_size=40), STEPS)
def test_pact_and_sawb_match_their_twins(xs, alpha):
    x = np.array(xs)
    codes, step = numerics.quantize_uint4_pact(x, alpha)
    np.testing.assert_array_equal(codes, naive.pact_codes(x, alpha))
    assert step == alpha / 15
    w_codes, w_step = numerics.quantize_int4_sawb(x)
    if w_step:
        np.testing.assert_array_equal(w_codes, naive.quantize_uniform(x, w_step, -7, 7))
        np.testing.assert_array_equal(numerics.quantize_int4_sawb(-x)[0], -w_codes)


@njit(cache=True)
def _half64_all(xs, p, out):
    for i in range(xs.size):
        out[i] = K.round_half64(xs[i], p)


# halfway and near-halfway points around the binary16 grid: subnormals, the normal range, overflow
_HALF_EDGES = st.builds(lambda m, e, d, s: s * (m * 2.0 + 1) * 2.0 ** (e - 11) + d * 2.0 ** (e - 40),
                        st.integers(0, 1023), st.integers(-14, 16), st.integers(-2, 2), st.sampled_from([1.0, -1.0]))


@given(st.lists(st.one_of(st.floats(allow_nan=False, width=64), _HALF_EDGES), min_size=1, max_size=50))
def test_binary16_rounding_on_float64_lanes_matches_the_reference(xs):
    """`round_half64` (the half64 path's rounding) equals the reference `round_float` for
    binary16 (10 fraction bits, emin -14, subnormals, ties to even, overflow to inf), bit for bit."""
    x = np.array(xs, np.float64)
    got = np.empty_like(x)
    _half64_all(x, K.lane_params(np.float64, 10, False, 65504.0), got)
    want = np.array([K.round_float(v, 10, -14, True, False, 65504.0, 0.0, False)[0] for v in x])
    assert same_bits(got, want) and (np.signbit(got) == np.signbit(want)).all(), (x, got, want)


_SCAN_VALUES = st.one_of(
    st.floats(width=64), st.floats(width=32), st.sampled_from([0.0, -0.0, 2.0**-149, 2.0**-150, 3.0 * 2.0**-149,
                                                               2.0**127, 2.0**128, 16777217.0, 16777216.0]))


@given(st.lists(_SCAN_VALUES, min_size=0, max_size=50), st.booleans())
def test_operand_scan_matches_twin(xs, as_float32):
    """`scan_operand` (the GEMM's validation and plan inputs) equals its twin: count of values
    float32 does not hold, max |x|, and where the operand is valid the exponent of the lowest set
    bit, the count of values that are not +-2^e and the widest significand."""
    x = np.array(xs, np.float64)
    if as_float32:
        with np.errstate(over="ignore"):
            x = x.astype(np.float32)
    bad, low, high, not_pow2, width = K.scan_operand(x)
    want_bad, want_low, want_high = naive.scan_operand(x)
    assert bad == want_bad and same_bits(high, want_high)
    if bad == 0 and np.isfinite(high):
        assert (low, not_pow2, width) == (want_low, *naive.significand_stats(x))


def test_operand_scan_spans_blocks():
    """Several parallel blocks: the smallest low bit and the largest value in the last one."""
    x = np.full(3 * K._SCAN_BLOCK + 5, 0.75)
    x[-1], x[-2] = 2.0**-40, -96.0
    # 0.75 = 3 * 2^-2 and 96 = 3 * 2^5: two significant bits, not powers of two
    assert K.scan_operand(x) == (0, -40, 96.0, x.size - 1, 2)
    assert K.scan_operand(x.astype(np.float32)) == (0, -40, 96.0, x.size - 1, 2)  # int32 bit patterns
    x[7] = 5 * 2.0**-149  # a float32 subnormal: 3 significant bits, the lowest at 2^-149
    assert K.scan_operand(x.astype(np.float32)) == (0, -149, 96.0, x.size - 1, 3)
    assert K.scan_operand(np.zeros(0)) == (0, 100000, 0.0, 0, 0)
    assert K.scan_operand(np.zeros(3)) == (0, 100000, 0.0, 0, 0)


def test_exact_group_params_by_hand():
    # fp16 (11 significand bits, quantum 2^-24, max 65504), INT4 codes |b| <= 7, 4-way groups:
    # 28 * 2^d < 2^11 -> d <= 6; 28 * 2^(x - 1023) <= 65504 -> x <= 1034; 2^(x - 1023) >= 2^-24
    np.testing.assert_array_equal(K.exact_group_params(True, 0, 7.0, 11, -24, 65504.0), [1, 999, 6, 1034])
    # fp32 accumulator: 28 * 2^d < 2^24 -> d <= 19
    np.testing.assert_array_equal(K.exact_group_params(True, 0, 7.0, 24, -149, 3.4028234663852886e38),
                                  [1, 874, 19, 1146])
    assert not K.exact_group_params(False, 0, 7.0, 11, -24, 65504.0)[0]  # not a log operand
    assert not K.exact_group_params(True, 0, 7.0, 11, -24, 65504.0, group=2)[0]
    q = K.exact_group_params(True, 0, 7.0, 11, -24, 65504.0)
    f = np.float32
    assert K._group_exact(f(64), f(1), f(0), f(-4), q)  # exponents 6 apart
    assert not K._group_exact(f(128), f(1), f(0), f(0), q)  # 7 apart
    assert K._group_exact(f(0), f(0), f(0), f(0), q)
    assert K._group_exact(f(2.0**11), f(0), f(0), f(0), q) and not K._group_exact(f(2.0**12), f(0), f(0), f(0), q)
    assert K._group_exact(f(2.0**-24), f(0), f(0), f(0), q) and not K._group_exact(f(2.0**-25), f(0), f(0), f(0), q)
    # 7 * (128 + 1 + 128 + 128) = 2695 needs 12 bits: not a binary16 value, and not called exact
    fp16 = Accumulator("fp16").value_format
    assert naive.round_fraction(Fraction(2695), fp16) != 2695 and not K._group_exact(f(128), f(1), f(128), f(128), q)


_LOG_VALUES = st.one_of(st.just(0.0), st.builds(lambda s, e: s * 2.0**e, st.sampled_from([-1.0, 1.0]),
                                                st.integers(-30, 16)))


@given(st.lists(_LOG_VALUES, min_size=4, max_size=4), st.lists(st.integers(-7, 7), min_size=4, max_size=4))
def test_a_group_called_exact_sums_to_a_value_of_the_format(avals, bvals):
    """Soundness of the skipped rounding: whenever `_group_exact` says so, the exact sum of the
    group's products with any INT4 codes is a binary16 value."""
    q = K.exact_group_params(True, 0, 7.0, 11, -24, 65504.0)
    if K._group_exact(*(np.float32(v) for v in avals), q):
        total = sum((Fraction(v) * w for v, w in zip(avals, bvals, strict=True)), Fraction(0))
        assert naive.round_fraction(total, Accumulator("fp16").value_format) == total


@pytest.mark.parametrize("path", ["ieee32", "half64"])
@pytest.mark.parametrize("n", [5, 13, 130])
def test_blocked_rows_and_skipped_roundings_keep_the_bits(path, n):
    """Rows in blocks of four (and a tail), groups whose rounding is skipped next to groups that
    round (log values 2^-8 .. 2^8: exponent spreads on both sides of the bound), a partial chunk
    and a partial group: the general kernel's bits, and the kernel's own bits with the skip off."""
    rng = np.random.default_rng(5)
    a = numerics.quantize_fp4(rng.standard_normal((9, 70)) * np.exp2(rng.integers(-4, 5, (9, 70))))
    b = rng.integers(-7, 8, (70, n)).astype(np.float64)
    acc = Accumulator("fp16", 4, 64)
    ref, ref_stats = numerics.gemm_with_stats(a, b, acc, path="general")
    got, stats = numerics.gemm_with_stats(a, b, acc, path=path)
    assert same_bits(got, ref) and stats.overflows == ref_stats.overflows
    dt = np.float32 if path == "ieee32" else np.float64
    mode = K.LANE_NARROW if path == "ieee32" else K.LANE_HALF64
    lane_p = K.lane_params(np.float64, 10, False, 65504.0)
    q = K.exact_group_params(True, 0, 7.0, 11, -24, 65504.0)
    outs = []
    for params in (q, np.zeros(4, np.int64)):
        out, lost = np.empty((9, n), dt), np.zeros(9, np.int64)
        K.gemm_fast_ieee(*K.left_operand(a.astype(dt)), b.astype(dt), out, 4, 64, False, lost, mode, lane_p, params)
        outs.append(out.astype(np.float64))
    assert same_bits(outs[0], ref) and same_bits(outs[1], ref)
    groups = np.abs(a[:, :68]).reshape(9, 17, 4)
    e = np.where(groups > 0, np.log2(np.where(groups > 0, groups, 1)), np.nan)
    spread = np.nanmax(e, axis=2) - np.nanmin(e, axis=2)
    assert (spread <= 6).any() and (spread > 6).any()  # both kinds of group are present

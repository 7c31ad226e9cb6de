"""Exact values of the quantizers (hand-computed; Sun et al. 2020 Eq. 1, Fig. 2(c), section 3.3)."""

from __future__ import annotations

import numpy as np
import pytest

from fourbit.models.numerics import quantize_fp4, quantize_int4_sawb, quantize_uint4_pact, sawb_alpha
from fourbit.traces.errors import FourbitError

# radix-4 FP4 thresholds 0.625 * 4^n, n = -3..3 (flush threshold 0.009765625 = 5 * 2^-9)
THRESHOLDS = [0.009765625, 0.0390625, 0.15625, 0.625, 2.5, 10.0, 40.0]
LEVELS = [1 / 64, 1 / 16, 1 / 4, 1.0, 4.0, 16.0, 64.0]


def test_radix4_representable_sets():
    even = quantize_fp4(np.array(LEVELS + [-v for v in LEVELS] + [0.0]))
    assert sorted(set(np.abs(even))) == [0.0] + LEVELS
    odd_levels = [v / 2 for v in LEVELS]  # 1/128 .. 32
    odd = quantize_fp4(np.array(odd_levels), phase="odd")
    np.testing.assert_array_equal(odd, odd_levels)


@pytest.mark.parametrize("i", range(7))
def test_radix4_thresholds_ties_up(i):
    t = THRESHOLDS[i]
    below = np.nextafter(t, 0)
    above = np.nextafter(t, np.inf)
    lower = 0.0 if i == 0 else LEVELS[i - 1]
    got = quantize_fp4(np.array([below, t, above, -t]))
    np.testing.assert_array_equal(got, [lower, LEVELS[i], LEVELS[i], -LEVELS[i]])


@pytest.mark.parametrize("i", range(7))
def test_radix4_thresholds_ties_down(i):
    t = THRESHOLDS[i]
    lower = 0.0 if i == 0 else LEVELS[i - 1]
    got = quantize_fp4(np.array([t, np.nextafter(t, np.inf)]), tie="down")
    np.testing.assert_array_equal(got, [lower, LEVELS[i]])


def test_flush_keeps_sign_and_saturation():
    got = quantize_fp4(np.array([0.0097, -0.0097, 40.0, 1e30, -np.inf, np.inf]))
    assert got[0] == 0.0 and not np.signbit(got[0])
    assert got[1] == 0.0 and np.signbit(got[1])
    np.testing.assert_array_equal(got[2:], [64.0, 64.0, -64.0, 64.0])


def test_tpr_odd_phase_is_half_even_of_double():
    x = np.random.default_rng(0).standard_normal(5000) * np.exp2(np.random.default_rng(1).uniform(-12, 8, 5000))
    np.testing.assert_array_equal(quantize_fp4(x, phase="odd"), 0.5 * quantize_fp4(2 * x))


def test_odd_phase_thresholds_and_range():
    # odd phase: thresholds halve (flush below 0.0048828125), saturation at 32 from |x| >= 20
    got = quantize_fp4(np.array([0.0048828125, np.nextafter(0.0048828125, 0), 20.0, np.nextafter(20.0, 0)]), phase="odd")
    np.testing.assert_array_equal(got, [1 / 128, 0.0, 32.0, 8.0])


def test_bad_inputs_raise_value_errors():
    with pytest.raises(ValueError, match="NaN"):
        quantize_fp4(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="no odd phase"):
        quantize_fp4(np.ones(2), radix=2, phase="odd")
    with pytest.raises(FourbitError, match="radix"):
        quantize_fp4(np.ones(2), radix=3)


def test_sawb_exact_codes():
    w = np.array([-1.0, -0.5, 0.0, 0.25, 0.5, 2.0])
    alpha = 12.035 * np.sqrt(np.mean(w * w)) - 12.03 * np.mean(np.abs(w))
    codes, step = quantize_int4_sawb(w)
    assert step == alpha / 7
    np.testing.assert_array_equal(codes, np.rint(np.clip(w / step, -7, 7)).astype(np.int8))
    assert codes.dtype == np.int8 and codes.min() >= -7 and codes.max() <= 7


def test_sawb_all_zero_and_collapse():
    codes, step = quantize_int4_sawb(np.zeros(5))
    assert step == 0.0 and not codes.any()
    # the smallest subnormal: alpha = max|w| = 2^-1074, alpha/7 underflows to 0 -> zeros, no error
    codes, step = quantize_int4_sawb(np.array([5e-324, 0.0]))
    assert step == 0.0 and not codes.any()
    # nearly constant |w|: the published rule collapses alpha to ~0.005|w| (kept, pinned here)
    w = np.array([1.0, -1.0, 1.0, -1.0])
    assert sawb_alpha(w) == pytest.approx(12.035 - 12.03, abs=1e-12)
    codes, step = quantize_int4_sawb(w)
    np.testing.assert_array_equal(codes, [7, -7, 7, -7])
    # alpha <= 0 falls back to max|w|
    assert sawb_alpha(np.array([3.0, 3.0, -3.0])) == pytest.approx(3.0 * (12.035 - 12.03))


def test_sawb_negative_alpha_falls_back_to_max():
    # c1 < c2 makes alpha negative for constant |w|: the guard uses max|w|
    assert sawb_alpha(np.array([2.0, -2.0]), c1=1.0, c2=2.0) == 2.0


def test_pact_exact_codes_and_ties():
    alpha = 1.5  # step 0.1 (not exact in binary): compare with the literal formula
    x = np.array([-1.0, 0.0, 0.05, 0.15, 0.25, 1.5, 2.0, 0.7499999])
    codes, step = quantize_uint4_pact(x, alpha)
    assert step == alpha / 15
    np.testing.assert_array_equal(codes, np.rint(np.clip(x, 0, alpha) / step).astype(np.uint8))
    # exact halves with a power-of-two step: round half to even
    codes, _ = quantize_uint4_pact(np.array([0.5, 1.5, 2.5, 3.5, 14.5]), 15.0)
    np.testing.assert_array_equal(codes, [0, 2, 2, 4, 14])
    with pytest.raises(ValueError, match="alpha"):
        quantize_uint4_pact(x, 0.0)


@pytest.mark.parametrize("radix, ebits, phase", [
    (r, e, p) for r in (2, 4, 8, 16) for e in (2, 3, 4) for p in ("even", "odd") if p == "even" or r in (4, 16)
])
def test_every_threshold_of_every_radix(radix, ebits, phase):
    """At, just below and just above each threshold (1 + 1/r)/2 * r * v, both tie modes; the
    expected values come from the level list, not from a second implementation."""
    b = radix.bit_length() - 1
    bias = 2 ** (ebits - 1)
    shift = b // 2 if phase == "odd" else 0
    levels = [2.0 ** (b * (c - bias) - shift) for c in range(1, 2**ebits)]
    lower = [levels[0] / radix] + levels[:-1]
    for i, level in enumerate(levels):
        t = (radix + 1) / 2 * lower[i]
        below_value = 0.0 if i == 0 else lower[i]
        x = np.array([np.nextafter(t, 0), t, np.nextafter(t, np.inf), -t])
        up = quantize_fp4(x, radix, ebits, phase, "up")
        down = quantize_fp4(x, radix, ebits, phase, "down")
        np.testing.assert_array_equal(up, [below_value, level, level, -level])
        np.testing.assert_array_equal(down, [below_value, below_value, level, -below_value])
    top = quantize_fp4(np.array([levels[-1] * 1e6, np.inf]), radix, ebits, phase)
    np.testing.assert_array_equal(top, [levels[-1], levels[-1]])


def test_integer_quantizers_are_idempotent():
    rng = np.random.default_rng(5)
    w = rng.standard_normal(1000)
    codes, step = quantize_int4_sawb(w)
    from fourbit.models.numerics import quantize_float, quantize_uniform

    again, _ = quantize_uniform(codes * step, step, -7, 7)
    np.testing.assert_array_equal(again, codes)
    a, pstep = quantize_uint4_pact(np.abs(w), 2.0)
    np.testing.assert_array_equal(quantize_uint4_pact(a * pstep, 2.0)[0], a)
    for fmt in ("fp16", "fp8_e4m3", "fp8_e5m2", "dlfloat16"):
        q, _ = quantize_float(w * 100, fmt)
        np.testing.assert_array_equal(quantize_float(q, fmt)[0], q)
        np.testing.assert_array_equal(quantize_float(-w * 100, fmt)[0], -q)

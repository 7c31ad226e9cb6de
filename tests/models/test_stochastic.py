"""Stochastic rounding: unbiased, counter-based (keyed by seed, step, tensor, index), exact on
representable values, independent of the thread count."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fourbit.models.numerics import quantize_float
from fourbit.traces.formats import get_format
from tests import naive


def test_unbiased_and_between_neighbours():
    x = np.full(400_000, 1.0 + 2**-12)  # fp16 neighbours 1 and 1 + 2^-10: P(up) = 1/4
    v, _ = quantize_float(x, "fp16", rounding="stochastic", key=(7, 3, 1))
    assert set(np.unique(v)) == {1.0, 1.0 + 2**-10}
    assert abs(np.mean(v > 1) - 0.25) < 0.005  # 400k draws: sd 0.0007
    assert abs(v.mean() - x[0]) < 3e-6


@pytest.mark.parametrize("fmt", ["fp16", "fp32", "fp8_e5m2", "fp8_e4m3", "dlfloat16"])
def test_representable_values_never_move(fmt):
    rng = np.random.default_rng(0)
    x = np.array([naive.round_float(v, fmt, fmt.startswith("fp8")) for v in rng.standard_normal(500)])
    v, _ = quantize_float(x, fmt, rounding="stochastic", key=(1, 1, 1))
    np.testing.assert_array_equal(v, x)


def test_keyed_and_independent_of_threads():
    x = np.random.default_rng(2).standard_normal(10_000)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = quantize_float(x, "fp8_e5m2", rounding="stochastic", key=(1, 2, 3))[0]
        numba.set_num_threads(before)
        many = quantize_float(x, "fp8_e5m2", rounding="stochastic", key=(1, 2, 3))[0]
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one, many)
    other = quantize_float(x, "fp8_e5m2", rounding="stochastic", key=(1, 2, 4))[0]
    assert not np.array_equal(one, other)  # another tensor id draws other bits
    grid = np.unique(get_format("fp8_e5m2").values()[np.isfinite(get_format("fp8_e5m2").values())])
    lo = grid[np.searchsorted(grid, x, side="right") - 1]
    hi = grid[np.searchsorted(grid, x, side="left")]
    assert np.all((one == lo) | (one == hi))  # always one of the two neighbours


def test_subnormal_range_and_saturation():
    tiny = np.full(100_000, 2.0**-30)  # fp16 quantum 2^-24 below 2^-14: P(up) = 2^-6
    v, _ = quantize_float(tiny, "fp16", rounding="stochastic", key=(0, 0, 0))
    assert set(np.unique(v)) <= {0.0, 2.0**-24}
    assert abs(np.mean(v > 0) - 2.0**-6) < 0.002
    v, st = quantize_float(np.array([1e6]), "fp8_e4m3", rounding="stochastic", key=(0, 0, 0))
    assert v[0] == 448.0 and st.clipped == 1


def test_stochastic_needs_a_key():
    with pytest.raises(ValueError, match="key"):
        quantize_float(np.ones(3), "fp16", rounding="stochastic")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(allow_nan=False, width=64), min_size=1, max_size=30),
       st.sampled_from(["fp16", "fp32", "fp8_e5m2", "fp8_e4m3", "dlfloat16"]),
       st.tuples(*[st.integers(0, 2**40)] * 3))
def test_stochastic_kernel_matches_twin(xs, fmt, key):
    """Bit for bit against the twin: the same counter bits and the exact up/down decision."""
    sat = fmt.startswith("fp8")
    got, _ = quantize_float(np.array(xs), fmt, rounding="stochastic", key=key)
    want = [naive.round_stochastic(x, naive.counter_bits(*key, i), fmt, sat) for i, x in enumerate(xs)]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))

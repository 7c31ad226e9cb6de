"""Accumulator models on hand-computed cases: order effects, overflow, int32, bad input."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from fourbit.models.numerics import gemm, gemm_with_stats, quantize_fp4_codes, quantize_uniform
from fourbit.traces.errors import NumericsError
from fourbit.traces.formats import Accumulator, LogFormat

ALL_PATHS = ("general", "shift_add", "fast32", "fast64", "ieee32", "half64")


def dot(products, acc, paths=("general",)):
    """Products as a 1 x K times K x 1 GEMM (b = 1), through every path asked for."""
    a = np.array([products], dtype=np.float64)
    b = np.ones((len(products), 1))
    outs = {p: gemm_with_stats(a, b, acc, path=p)[0][0, 0] for p in paths}
    assert len(set(outs.values())) == 1, outs
    return next(iter(outs.values()))


def test_order_effects_in_fp16():
    # 1024 + 0.25 x 7: exact 1025.75; fp16 has ulp 1 at 1024
    prods = [1024.0] + [0.25] * 7
    assert dot(prods, Accumulator("exact")) == 1025.75
    assert dot(prods, Accumulator("fp16", 1, None)) == 1024.0  # each 0.25 is lost (ties to even)
    assert dot(prods, Accumulator("fp16", 1, 4)) == 1025.0  # the second chunk sums to 1 first
    assert dot(prods, Accumulator("fp16", 4, 8), ("general", "fast32", "ieee32", "half64")) == 1026.0  # 1024.75 -> 1025, + 1
    assert dot(prods, Accumulator("fp32", 1, None), ("general", "fast64", "ieee64", "native32")) == 1025.75


def test_fp32_accumulator_in_float32_lanes():
    # 1 + 2^-24 is a tie in binary32: ties to even keep 1.0 four times over (native float32 adds
    # are the accumulator's roundings); exact sum 1 + 2^-22; with groups of 4 the sum is exact
    prods = [1.0] + [2.0**-24] * 4
    assert dot(prods, Accumulator("exact")) == 1 + 2.0**-22
    assert dot(prods, Accumulator("fp32", 1, None), ("general", "ieee64", "native32")) == 1.0
    assert dot(prods[1:] + prods[:1], Accumulator("fp32", 4, None), ("general", "ieee64", "native32")) == 1 + 2.0**-22


def test_group_rounding_ties_to_even_vs_away():
    # 2048 + 1 + 1 + 1 = 2051 exactly; fp16 ulp at 2048 is 2: tie between 2050 and 2052
    prods = [2048.0, 1.0, 1.0, 1.0]
    assert dot(prods, Accumulator("fp16", 4, 4), ("general", "fast32", "ieee32", "half64")) == 2052.0  # even mantissa
    assert dot(prods, Accumulator("fp16", 1, None)) == 2048.0  # 2049 -> 2048 three times
    # DLFloat16 (9 fraction bits) ties away from zero: 1024 + 1 = 1025, ulp 2 -> 1026
    assert dot([1024.0, 1.0], Accumulator("dlfloat16", 2, 2), ("general", "fast32")) == 1026.0
    assert dot([1024.0, 1.0], Accumulator("fp16", 2, 2)) == 1025.0


def test_fp16_overflow_is_counted_not_hidden():
    a = np.array([[60000.0, 60000.0]])
    b = np.ones((2, 1))
    out, st = gemm_with_stats(a, b, Accumulator("fp16", 1, None))
    assert out[0, 0] == np.inf and st.overflows == 1 and st.nonfinite_outputs == 1
    out, st = gemm_with_stats(a, b, Accumulator("fp16", 2, 2))
    assert out[0, 0] == np.inf and st.overflows >= 1
    # 65519 rounds to 65504 (no overflow); 65520 is the IEEE overflow threshold
    out, st = gemm_with_stats(np.array([[65519.0 - 2048, 2048.0]]), b, Accumulator("fp16", 2, 2))
    assert out[0, 0] == 65504.0 and st.overflows == 0


def test_fast_path_overflow_rows_fall_back_to_exact_inf_semantics():
    # INT4 x FP4 operands take the vectorised path; a long K overflows fp16 in some rows only
    rng = np.random.default_rng(0)
    a = np.where(rng.random((6, 400)) < 0.5, 15.0, 1.0)
    a[0] = 1.0  # a row that never overflows
    b = np.full((400, 3), 64.0)
    ref, st_ref = gemm_with_stats(a, b, Accumulator("fp16", 4, 64), path="general")
    out, st = gemm_with_stats(a, b, Accumulator("fp16", 4, 64))
    assert st.path == "ieee32"
    for path in ("ieee32", "fast32"):
        out, st = gemm_with_stats(a, b, Accumulator("fp16", 4, 64), path=path)
        np.testing.assert_array_equal(out, ref)
        assert st.overflows == st_ref.overflows > 0 and np.isfinite(out[0]).all()


def test_int32_exact_and_overflow_is_an_error():
    a = np.full((1, 3), 1000, np.int16)
    b = np.full((3, 1), 1000, np.int16)
    assert gemm(a, b, Accumulator("int32"))[0, 0] == 3_000_000
    big = np.full((1, 3000), 2**12, np.int32)
    with pytest.raises(NumericsError, match="int32 accumulator overflow in row 0"):
        gemm(big, np.full((3000, 1), 2**12, np.int32), Accumulator("int32"))
    with pytest.raises(NumericsError, match="integer operands only"):
        gemm(np.array([[0.5]]), np.array([[1.0]]), Accumulator("int32"))


@pytest.mark.parametrize("a, b, message", [
    (np.zeros((2, 0)), np.zeros((0, 2)), "K = 0"),
    (np.zeros((2, 3)), np.zeros((4, 2)), "inner dimensions differ"),
    (np.zeros(3), np.zeros((3, 1)), "must be 2-D"),
    (np.array([[np.nan]]), np.ones((1, 1)), "NaN"),
    (np.array([[1 + 2**-30]]), np.ones((1, 1)), "not exact in fp32"),
])
def test_bad_gemm_input(a, b, message):
    with pytest.raises(NumericsError, match=message):
        gemm(a, b, Accumulator("fp16", 4, 64))


def test_unresolved_array_chunk_is_an_error():
    with pytest.raises(NumericsError, match="unresolved"):
        gemm(np.ones((1, 4)), np.ones((4, 1)), Accumulator("fp16", 4, "array"))


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="one thread only: nothing to compare")
def test_results_do_not_depend_on_thread_count():
    """Every kernel path, the integer GEMM and the fused quantizers give the same bits (and the
    same statistics) on 1 thread and on every thread numba has."""
    rng = np.random.default_rng(1)
    a = rng.integers(-7, 8, (64, 300)).astype(np.float64)
    b = np.exp2(rng.integers(-7, 7, (300, 48))) * rng.choice([-1.0, 1.0], (300, 48))
    acts = rng.integers(0, 16, (64, 300)).astype(np.float64)
    x = rng.standard_normal(50_000) * np.exp2(rng.integers(-12, 12, 50_000))
    acc = Accumulator("fp16", 4, 64)

    def everything():
        out = [gemm_with_stats(a, b, acc, path=p) for p in ALL_PATHS]
        out.append(gemm_with_stats(acts, a.T[:, :48].copy(), Accumulator("int32"), path="int"))
        out.append(quantize_fp4_codes(x, LogFormat.make(4, 3, "odd"), "up"))
        out.append(quantize_uniform(x, 0.01, -7, 7))
        return out

    before = numba.get_num_threads()
    try:
        runs = []
        for threads in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(threads)
            runs.append(everything())
    finally:
        numba.set_num_threads(before)
    for one, many in zip(*runs, strict=True):
        for u, v in zip(one, many, strict=True):
            if isinstance(u, np.ndarray):
                np.testing.assert_array_equal(u, v)
            else:
                assert u == v


def test_fp16_on_float64_lanes_rounds_subnormals_once():
    """FP8 (e5m2) x INT4 products span 2^-16 .. 2^15: too wide for exact float32 group sums, so
    the fp16 accumulator runs on float64 lanes (`half64`), rounding subnormal results itself."""
    paths = ("general", "half64")
    # 2^-25 is half the smallest subnormal: ties to even -> 0 (an underflow); 3 * 2^-26 -> 2^-24
    assert dot([2.0**-25], Accumulator("fp16", 1, None), paths) == 0.0
    assert dot([3 * 2.0**-26], Accumulator("fp16", 1, None), paths) == 2.0**-24
    # 2^-14 - 2^-26 lies between the largest subnormal (2^-14 - 2^-24) and 2^-14: nearer 2^-14
    assert dot([2.0**-14 - 2.0**-26], Accumulator("fp16", 1, None), paths) == 2.0**-14
    # a group of 4 whose exact sum (2^10 + 3 * 2^-16) needs 27 bits: one rounding to 1024
    assert dot([1024.0, 2.0**-16, 2.0**-16, 2.0**-16], Accumulator("fp16", 4, 4), paths) == 1024.0
    # 65520 ties to 2^16 and overflows to inf; 65519 rounds to 65504
    assert dot([65504.0, 15.0], Accumulator("fp16", 2, 2), paths) == 65504.0
    assert dot([65504.0, 16.0], Accumulator("fp16", 2, 2), paths) == np.inf
    a = np.array([[2.0**-16 * 1.5, 57344.0, 2.0**-16, 3.0]])
    b = np.array([[15.0], [1.0], [1.0], [-7.0]])
    out, st = gemm_with_stats(a, b, Accumulator("fp16", 4, 64))
    # exact 57323 + 23 * 2^-16; fp16's quantum there is 32: 57312
    assert st.path == "half64" and out[0, 0] == 57312.0 == gemm(a, b, Accumulator("fp16", 1, None))[0, 0]
    out, st = gemm_with_stats(np.array([[2.0**-16, 2.0**-16]]), np.array([[1.0], [-1.0]]), Accumulator("fp16", 1, 8))
    assert st.underflows == 0 and out[0, 0] == 0.0  # 2^-16 is a subnormal, kept; the sum is exactly 0
    out, st = gemm_with_stats(np.array([[2.0**-26, 57344.0]]), np.array([[1.0], [0.0]]), Accumulator("fp16", 1, 8))
    assert st.path == "half64" and st.underflows == 1 and out[0, 0] == 0.0

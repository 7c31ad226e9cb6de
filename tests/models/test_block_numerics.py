"""Block-scaled numerics: the scale rules by hand (MXFP4's floor and ceil, NVFP4's two levels, INT4
blocks), partial and 2-D blocks, the block-scaled GEMM and the Hadamard transform against their
twins, stochastic rounding of every element format, and the errors."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fourbit.models import numerics as N
from fourbit.traces.errors import FormatError, NumericsError
from fourbit.traces.formats import Accumulator, get_format
from tests import naive

FP32 = {16: Accumulator("fp32", 16, None), 32: Accumulator("fp32", 32, None)}


def _one_block(values, fmt="mxfp4"):
    return N.quantize_block(np.array(values, np.float64), fmt)


# ---------------------------------------------------------------------------------------------
# scale rules by hand
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("block, scale, elements", [
    ([6.0, 1.0, -0.5], 1.0, [6, 1, -0.5]),  # floor(log2 6) - 2 = 0
    ([7.99, 1.0, -0.5], 1.0, [6, 1, -0.5]),  # just below the next step: 7.99 saturates to 6
    ([8.0, 1.0, -0.5], 2.0, [4, 0.5, -0.0]),  # at the step: X = 2, -0.25 rounds to even 0
    ([4.0, 1.0, -0.5], 1.0, [4, 1, -0.5]),
    ([3.99, 1.0, -0.5], 0.5, [6, 2, -1]),  # just below 4: X = 2^-1, 7.98 saturates (the OCP rule)
    ([0.0, 0.0, -0.0], 0.0, [0, 0, 0]),  # an all-zero block: scale 0, zeros
    ([2.0**-140], 2.0**-127, [0]),  # floor(log2) - 2 = -142 clamps to E8M0's 2^-127; 2^-13 flushes
    ([3.4e38, 1.0], 2.0**125, [6, 0]),  # the largest binary32 range: 2^(127 - 2)
    ([np.inf, 1.0, -3.0], 2.0**125, [6, 0, -0.0]),  # inf counts as the largest binary32: saturates
])
def test_mxfp4_floor_rule(block, scale, elements):
    q = _one_block(block)
    assert q.scales.tolist() == [scale]
    np.testing.assert_array_equal(q.values, elements)
    assert q.tensor_scale == 1.0 and q.format.name == "fp4_e2m1"


@pytest.mark.parametrize("block, scale, elements", [
    ([6.0, 1.0], 1.0, [6, 1]),
    ([float(np.nextafter(np.float32(6), np.float32(7))), 1.0], 2.0, [3, 0.5]),  # just above 6: X = 2
    ([3.0, 1.0], 0.5, [6, 2]),  # 6 * 2^-1 >= 3 > 6 * 2^-2
    ([3.01, 1.0], 1.0, [3, 1]),
])
def test_ceil_rule_never_saturates(block, scale, elements):
    q = _one_block(block, "mxfp4_ceil")
    assert q.scales.tolist() == [scale] and q.stats.clipped == 0
    np.testing.assert_array_equal(q.values, elements)


def test_nvfp4_two_level_scale_by_hand():
    """amax_tensor 10.5: s_enc = 448 * 6 / 10.5 = 256, s_dec = 2^-8. Block 1 (amax 10.5):
    10.5 / 6 * 256 = 448 -> E4M3 448, e = 1 / (448 * 2^-8) = 4/7 in binary32, elements 10.5 e ->
    6, 5.25 e -> 3. Block 2 (amax 1): 1/6 * 256 = 42.67 -> E4M3 44 (neighbours 40 and 44), e =
    256/44, elements 5.82 -> 6, 2.91 -> 3, -1.45 -> -1.5; real values 6 * 44/256 = 1.03125,
    0.515625, -0.2578125."""
    x = np.zeros((1, 32))
    x[0, :2] = [10.5, 5.25]
    x[0, 16:19] = [1.0, 0.5, -0.25]
    q = N.quantize_block(x, "nvfp4")
    assert q.scales.tolist() == [[448.0, 44.0]] and q.tensor_scale == 2.0**-8
    np.testing.assert_array_equal(q.values[0, :2], [6, 3])
    np.testing.assert_array_equal(q.values[0, 16:19], [6, 3, -1.5])
    np.testing.assert_array_equal(q.real()[0, 16:19], [1.03125, 0.515625, -0.2578125])
    assert q.scaling.tensor_scale and q.scaling.format == "fp8_e4m3"


def test_nvfp4_block_scale_that_rounds_to_zero_gives_zeros():
    """A block of amax 2^-20 next to 10.5: 2^-20 / 6 * 256 < 2^-10 (half E4M3's smallest
    subnormal) rounds to scale 0: its elements are 0 (flushed)."""
    x = np.zeros((1, 32))
    x[0, 0], x[0, 16] = 10.5, 2.0**-20
    q = N.quantize_block(x, "nvfp4")
    assert q.scales.tolist() == [[448.0, 0.0]] and q.values[0, 16] == 0 and q.stats.flushed == 1


def test_nvfp4_all_zero_tensor():
    q = N.quantize_block(np.zeros((2, 16)), "nvfp4")
    assert q.tensor_scale == 1.0 and not q.scales.any() and not q.values.any()


def test_int4_blocks_two_level_by_hand():
    """M = 7: amax_tensor 12.25 -> s_enc = 448 * 7 / 12.25 = 256. Block 2 (amax 1): 1/7 * 256 =
    36.57 -> E4M3 36, e = 256/36: 7.11 -> 7, 3.56 -> 4, -1.78 -> -2 (symmetric -7..7)."""
    x = np.zeros((1, 32))
    x[0, 0] = 12.25
    x[0, 16:19] = [1.0, 0.5, -0.25]
    q = N.quantize_block(x, "int4_block")
    assert q.scales.tolist() == [[448.0, 36.0]] and q.tensor_scale == 2.0**-8
    np.testing.assert_array_equal(q.values[0, [0, 16, 17, 18]], [7, 7, 4, -2])
    assert q.format.name == "int4"


def test_partial_last_block_along_any_axis():
    """K = 20 with blocks of 16: the second block holds 4 elements and has its own scale."""
    x = np.zeros((20, 3))
    x[:16, 0] = 6.0
    x[16:, 0] = [0.75, 0.5, 0, 0]
    q = N.quantize_block(x, "mxfp4_b16", axis=0)
    assert q.scales.shape == (2, 3)
    assert q.scales[:, 0].tolist() == [1.0, 2.0**-3]  # floor(log2 0.75) - 2 = -3
    np.testing.assert_array_equal(q.values[16:, 0], [6, 4, 0, 0])
    values, scales = naive.quantize_block(x.T, get_format("mxfp4_b16"))
    np.testing.assert_array_equal(q.values, values.T)
    np.testing.assert_array_equal(q.scales, scales.T)


def test_two_d_blocks_share_one_scale_per_tile():
    x = np.zeros((20, 20))
    x[0, 0], x[15, 15], x[16, 0], x[19, 19] = 6.0, 1.0, 12.0, 0.5
    q = N.quantize_block(x, "nvfp4_2d")
    assert q.scales.shape == (2, 2) and q.scaling.kind == "block2d"
    assert q.scales[0, 1] == 0 and q.scales[1, 1] > 0
    # the transpose quantizes the same: one copy serves fwd and bwd_data
    qt = N.quantize_block(x.T, "nvfp4_2d")
    np.testing.assert_array_equal(qt.values, q.values.T)
    np.testing.assert_array_equal(qt.scales, q.scales.T)
    np.testing.assert_array_equal(q.T.real(), qt.real())


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["mxfp4", "mxfp4_ceil", "nvfp4", "int4_block", "int4_block_b32_e8m0", "int4_block_bf16",
                        "mxfp4_b16_e4m3"]),
       st.integers(1, 3), st.integers(1, 40), st.integers(0, 2**32 - 1), st.floats(-30, 30))
def test_quantize_block_equals_its_twin(name, rows, cols, seed, log_scale):
    fmt = get_format(name)
    x = np.random.default_rng(seed).standard_normal((rows, cols)) * 2.0**log_scale
    x[:, ::7] = 0
    q = N.quantize_block(x, fmt)
    values, scales = naive.quantize_block(x, fmt)
    np.testing.assert_array_equal(q.values, values)
    np.testing.assert_array_equal(q.scales, scales)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["mxfp4", "nvfp4", "int4_block", "nvfp4_2d", "mxfp4_b16_e4m3_2d", "int4_block_b32_e8m0",
                        "nvfp4_amax", "mxfp4_ceil"]),
       st.sampled_from([((3, 40), -1), ((40, 3), 0), ((2, 17, 5), 1), ((2, 18, 20), -1), ((33,), 0)]),
       st.sampled_from(["nearest", "stochastic"]), st.integers(0, 2**32 - 1), st.sampled_from([np.float32, np.float64]))
def test_quantize_block_any_axis_and_rounding_equals_its_twin(name, case, rounding, seed, dtype):
    """The tiled kernels (`block_amax`, `block_round`) against the block-at-a-time definition for
    every layout (last axis, another axis, 2-D tiles, partial blocks), both roundings, float32 and
    float64 inputs (+-inf as +-FLT_MAX), bit for bit, signed zeros included; and the statistics."""
    fmt = get_format(name)
    shape, axis = case
    if fmt.block_2d and len(shape) < 2:
        return
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2.0 ** rng.integers(-12, 12, shape)).astype(dtype)
    x.flat[::7] = 0
    x.flat[1] = -0.0
    x.flat[2] = -np.inf
    q = N.quantize_block(x, fmt, axis, rounding=rounding, key=(seed, 1, 2))
    values, scales = naive.quantize_block(x, fmt, axis, rounding, (seed, 1, 2))
    np.testing.assert_array_equal(q.values, values)
    np.testing.assert_array_equal(np.signbit(q.values), np.signbit(values))
    np.testing.assert_array_equal(q.scales, scales)
    assert q.stats.zeros == np.count_nonzero(values == 0)
    assert q.stats.flushed == np.count_nonzero((values == 0) & (x != 0))


# ---------------------------------------------------------------------------------------------
# block-scaled GEMM
# ---------------------------------------------------------------------------------------------
def _operands(seed: int, m: int, k: int, n: int, fmt_a: str, fmt_b: str):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((m, k)) * rng.uniform(0.1, 10), rng.standard_normal((k, n))
    return N.quantize_block(x, fmt_a), N.quantize_block(w, fmt_b, axis=0)


def _kernel_scales(q, side):
    s = q.scaling
    if s.kind == "block":
        return q.scales
    full = np.repeat(q.scales, s.block, axis=0 if side == "a" else 1)
    return full[: q.values.shape[0]] if side == "a" else full[:, : q.values.shape[1]]


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 5), st.integers(1, 70), st.integers(1, 6),
       st.sampled_from([("mxfp4", "mxfp4", "fp32"), ("nvfp4", "nvfp4", "fp32"), ("nvfp4", "nvfp4_2d", "fp32"),
                        ("int4_block", "int4_block", "fp32"), ("mxfp4", "mxfp4", "fp16"),
                        ("int4_block_bf16", "int4_block_bf16", "dlfloat16")]))
def test_block_gemm_kernel_equals_twin(seed, m, k, n, case):
    fa, fb, acc_format = case
    a, b = _operands(seed, m, k, n, fa, fb)
    block = get_format(fa).block
    out, stats = N.gemm_block_with_stats(a, b, Accumulator(acc_format, block, None))
    alpha = float(np.float32(np.float32(a.tensor_scale) * np.float32(b.tensor_scale)))
    ref = naive.gemm_block(a.values, _kernel_scales(a, "a"), b.values, _kernel_scales(b, "b"), block, acc_format,
                           alpha)
    np.testing.assert_array_equal(out, ref)
    assert stats.path == ("block_fp32" if acc_format == "fp32" and stats.path == "block_fp32" else "block")


def test_block_gemm_far_outside_binary32_takes_the_exact_path():
    """E8M0 scales of 2^-100 on both sides put the scaled block sums near 2^-200, below binary32:
    the kernel adds exactly (rounded to odd, then to binary32) and agrees with the twin; the
    products underflow to zero in binary32, counted."""
    a = N.quantize_block(np.random.default_rng(0).standard_normal((3, 64)) * 2.0**-100, "mxfp4")
    b = N.quantize_block(np.random.default_rng(1).standard_normal((64, 4)) * 2.0**-100, "mxfp4", axis=0)
    out, stats = N.gemm_block_with_stats(a, b, FP32[32])
    assert stats.path == "block" and stats.underflows > 0 and not out.any()
    np.testing.assert_array_equal(out, naive.gemm_block(a.values, a.scales, b.values, b.scales, 32, "fp32"))
    a2 = N.quantize_block(np.random.default_rng(0).standard_normal((3, 64)) * 2.0**-73, "mxfp4")
    b2 = N.quantize_block(np.random.default_rng(1).standard_normal((64, 4)) * 2.0**-73, "mxfp4", axis=0)
    out2, stats2 = N.gemm_block_with_stats(a2, b2, FP32[32])  # near 2^-146: rounded binary32 subnormals
    assert stats2.path == "block" and out2.any()
    np.testing.assert_array_equal(out2, naive.gemm_block(a2.values, a2.scales, b2.values, b2.scales, 32, "fp32"))


def test_block_gemm_refuses_an_alpha_beyond_binary32():
    """NVFP4 tensor scales are amax / (6 * 448): amax 3e38 on both sides gives 1.116e35 each, whose
    product overflows the binary32 epilogue's alpha (refused, not a NaN from 0 * inf)."""
    a = np.zeros((1, 32), np.float32)
    a[0, 0], a[0, 16] = 3e38, 1.0
    b = np.ascontiguousarray(a.T)
    with pytest.raises(NumericsError, match="product of the operands' tensor scales .* overflows binary32"):
        N.gemm_block(N.quantize_block(a, "nvfp4"), N.quantize_block(b, "nvfp4", axis=0), FP32[16])


def test_block_gemm_rounds_once_per_block_in_fp32():
    """Two blocks: 2^24 + 1 (exact) and then + 1: each add rounds to binary32, so the first sum
    2^24 + 1 -> 2^24 (tie to even) and 2^24 + 1 -> 2^24 again; the exact sum would be 2^24 + 2.
    Scales 2^22 (E8M0) times elements 4 = 2^24 in block one."""
    a = N.quantize_block(np.array([[2.0**24, 1.0]]), "mxfp4_b1")
    b = N.quantize_block(np.array([[1.0], [1.0]]), "mxfp4_b1", axis=0)
    out = N.gemm_block(a, b, Accumulator("fp32", 1, None))
    assert out.tolist() == [[2.0**24]]
    c = N.quantize_block(np.array([[1.0, 2.0**24]]), "mxfp4_b1")
    assert N.gemm_block(c, b, Accumulator("fp32", 1, None)).tolist() == [[2.0**24]]


def test_block_gemm_equals_dequantized_product_when_fp32_is_exact():
    a, b = _operands(3, 8, 64, 5, "mxfp4", "mxfp4")
    exact = N.gemm(a.real(), b.real(), Accumulator("exact"))
    out = N.gemm_block(a, b, FP32[32])
    np.testing.assert_allclose(out, exact, rtol=2**-22)
    assert N.gemm_block(a, b, FP32[32]).shape == (8, 5)


def test_block_gemm_is_independent_of_threads():
    a, b = _operands(5, 300, 200, 40, "nvfp4", "nvfp4")
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = N.gemm_block(a, b, FP32[16])
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one, N.gemm_block(a, b, FP32[16]))


def test_block_gemm_errors():
    a, b = _operands(0, 4, 32, 3, "mxfp4", "mxfp4")
    with pytest.raises(NumericsError, match="accumulator must be FORMAT/g32 without chunks, got fp32/g1"):
        N.gemm_block(a, b, Accumulator("fp32", 1, None))
    c = N.quantize_block(np.ones((32, 3)), "nvfp4", axis=0)
    with pytest.raises(NumericsError, match=r"K blocks differ \(32 and 16\)"):
        N.gemm_block(a, c, FP32[32])
    d = N.quantize_block(np.ones((32, 3)), "mxfp4", axis=1)
    with pytest.raises(NumericsError, match="blocks along K"):
        N.gemm_block(a, d, FP32[32])


# ---------------------------------------------------------------------------------------------
# random Hadamard transform
# ---------------------------------------------------------------------------------------------
def test_hadamard_matrix_is_orthogonal_and_keyed():
    h = N.hadamard_matrix(16, (1, 2, 3))
    np.testing.assert_array_equal(h @ h.T, 16 * np.eye(16))
    assert set(np.unique(h)) == {-1.0, 1.0}
    assert not np.array_equal(h, N.hadamard_matrix(16, (1, 2, 4)))
    np.testing.assert_array_equal(N.hadamard_matrix(2), [[1, 1], [1, -1]])


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([2, 4, 16, 32]), st.integers(1, 4), st.floats(-40, 40),
       st.sampled_from([0, 4, 30]), st.sampled_from([(0, 2), (1, 2), (1, 3), (0, 1)]))
def test_hadamard_kernel_equals_twin(seed, n, blocks, log_scale, spread, axis_ndim):
    """Narrow blocks take the fast Walsh-Hadamard path (exact partial sums), wide ones the
    expansion path (a block may mix both across columns): both equal the twin, along any axis."""
    axis, ndim = axis_ndim
    rng = np.random.default_rng(seed)
    shape = [3, 2, 2][:ndim]
    shape[axis] = n * blocks
    x = (rng.standard_normal(shape) * 2.0 ** rng.integers(-spread, spread + 1, shape) * 2.0**log_scale)
    key = (seed, 1, 2)
    rows = np.moveaxis(x.astype(np.float32), axis, -1)
    want = naive.hadamard_rows(rows.reshape(-1, n * blocks), N.hadamard_matrix(n, key)).reshape(rows.shape)
    np.testing.assert_array_equal(N.hadamard_transform(x, n, key, axis=axis), np.moveaxis(want, -1, axis))


def test_hadamard_gemm_equals_the_plain_gemm_on_dyadic_inputs():
    """Without quantization the transform cancels: (A D H)(D H)^T B / n = A B exactly on dyadic
    inputs (small integers times powers of two: every sum exact), and it changes the operands."""
    rng = np.random.default_rng(1)
    a = rng.integers(-8, 8, (6, 64)) * 0.25
    b = rng.integers(-8, 8, (64, 5)) * 2.0
    key = (3, 4, 5)
    ta, tb = N.hadamard_transform(a, 16, key, axis=1), N.hadamard_transform(b, 16, key, axis=0)
    assert not np.array_equal(ta, a) and not np.array_equal(tb, b)
    exact = Accumulator("exact")
    np.testing.assert_array_equal(N.gemm(ta, tb, exact) / 16, N.gemm(a, b, exact))


# ---------------------------------------------------------------------------------------------
# stochastic rounding of every element format
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, values, gap", [
    ("fp4_e2m1", [0.3, 1.2, 2.6, 5.1, -3.3], [0.5, 0.5, 1.0, 2.0, 1.0]),
    ("int", [0.3, -2.75, 5.5, 6.9], [1, 1, 1, 1]),
    ("fp4_r2_e3", [0.01, 0.7, 1.3, -5.0, 6.0], [1 / 8, 0.5, 1.0, 4.0, 4.0]),  # levels 1/8 .. 8
    ("fp4_r4_e3", [0.003, 0.3, 5.0, -20.0], [1 / 64, 0.75, 12.0, 48.0]),  # levels 1/64 .. 64
])
def test_stochastic_rounding_is_unbiased(kind, values, gap):
    """4,096 roundings of each value with the keys (0, step, 7), step = 0..4095: the mean lies
    within gap/16 of the value (8 standard deviations of the mean: sd <= gap / (2 * 64)). The keys
    are fixed, so the test cannot flake."""
    x = np.array(values, np.float64)
    means = np.zeros(x.size)
    for step in range(4096):
        key = (0, step, 7)
        if kind == "int":
            v = N.quantize_uniform(x, 1.0, -7, 7, np.float64, rounding="stochastic", key=key)[0]
        elif kind.startswith("fp4_r"):
            v = N.quantize_fp4_codes(x, get_format(kind), rounding="stochastic", key=key)[0]
        else:
            v = N.quantize_float(x, kind, rounding="stochastic", key=key)[0]
        means += v / 4096
    assert np.all(np.abs(means - x) <= np.array(gap) / 16), (means, x)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["fp4_r4_e3", "fp4_r2_e3", "fp4_r4_e3_odd", "fp4_r16_e2"]))
def test_stochastic_log_and_int_kernels_equal_twins(seed, name):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(300) * 2.0 ** rng.integers(-12, 8, 300)
    x[:3] = [0.0, 1e9, -1e-30]
    fmt = get_format(name)
    key = (seed, 3, 9)
    np.testing.assert_array_equal(N.quantize_fp4_codes(x, fmt, rounding="stochastic", key=key)[0],
                                  naive.quantize_log_stochastic(x, fmt, key))
    np.testing.assert_array_equal(N.quantize_uniform(x, 0.25, -7, 7, np.float64, rounding="stochastic", key=key)[0],
                                  naive.quantize_uniform_stochastic(x, 0.25, -7, 7, key))


def test_stochastic_block_quantization_is_keyed_and_independent_of_threads():
    x = np.random.default_rng(4).standard_normal((64, 96))
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = N.quantize_block(x, "nvfp4", rounding="stochastic", key=(1, 2, 3))
    finally:
        numba.set_num_threads(before)
    many = N.quantize_block(x, "nvfp4", rounding="stochastic", key=(1, 2, 3))
    np.testing.assert_array_equal(one.values, many.values)
    near = N.quantize_block(x, "nvfp4")
    np.testing.assert_array_equal(one.scales, near.scales)  # scales do not depend on the rounding
    assert not np.array_equal(one.values, near.values)
    assert not np.array_equal(one.values, N.quantize_block(x, "nvfp4", rounding="stochastic", key=(1, 2, 4)).values)


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
def test_bad_input_names_the_parameter():
    x = np.ones((2, 32))
    with pytest.raises(NumericsError, match=r"stochastic rounding needs key=\(seed, step, tensor_id\)"):
        N.quantize_block(x, "mxfp4", rounding="stochastic")
    with pytest.raises(NumericsError, match=r"rounding must be one of \('nearest', 'stochastic'\), got 'up'"):
        N.quantize_block(x, "mxfp4", rounding="up")
    with pytest.raises(NumericsError, match=r"x contains NaN \(first at index \(1, 3\)\); mxfp4's elements "
                                            r"\(fp4_e2m1\) have no NaN"):
        y = x.copy()
        y[1, 3] = np.nan
        N.quantize_block(y, "mxfp4")
    with pytest.raises(NumericsError, match="the Hadamard block must be a power of two in 1..4096, got 12"):
        N.hadamard_transform(np.ones((2, 24)), 12)
    with pytest.raises(NumericsError, match="not a multiple of the Hadamard block 16"):
        N.hadamard_transform(np.ones((2, 24)), 16)
    with pytest.raises(FormatError, match="fmt must be a block format"):
        N.quantize_block(x, "fp4_e2m1")
    with pytest.raises(NumericsError, match="axis must be an integer in -2..1"):
        N.quantize_block(x, "mxfp4", axis=2)
    with pytest.raises(NumericsError, match="nvfp4_2d needs a non-empty array of at least 2 dimension"):
        N.quantize_block(np.ones(16), "nvfp4_2d")


def test_an_overflowed_accumulator_stays_infinite_with_one_event():
    """Once an add overflows to +-inf the accumulator follows IEEE arithmetic: -inf stays -inf
    (not NaN) and the overflow is counted once, on both kernel paths."""
    b = N.quantize_block(np.ones((5, 1)), "mxfp4_b1", axis=0)
    for acc, big in ((Accumulator("fp16", 1, None), 60000.0), (Accumulator("fp32", 1, None), 3e38)):
        for sign in (1.0, -1.0):
            a = N.quantize_block(np.full((1, 5), sign * big), "mxfp4_b1")
            out, stats = N.gemm_block_with_stats(a, b, acc)
            assert out.tolist() == [[sign * np.inf]] and stats.overflows == 1, (acc.name, sign, out, stats)


def test_block_gemm_refuses_scales_that_do_not_match_the_values():
    rng = np.random.default_rng(0)
    a = N.quantize_block(rng.standard_normal((4, 64)), "mxfp4")
    b = N.quantize_block(rng.standard_normal((64, 3)), "mxfp4", axis=0)
    with pytest.raises(NumericsError, match=r"operand a: scales of shape \(4, 2\) do not match values of shape \(8, 64\)"):
        N.gemm_block(a.with_values(np.concatenate([a.values, a.values])), b, FP32[32])
    with pytest.raises(NumericsError, match="operand a of a block-scaled GEMM must be a 2-D QTensor, got ndarray"):
        N.gemm_block(np.ones((2, 64), np.float32), b, FP32[32])
    assert not N.blocks_along_k(N.quantize_block(np.ones(32), "mxfp4"), b)


def test_hadamard_refuses_infinities_and_a_1d_block_tensor_transposes_to_itself():
    with pytest.raises(NumericsError, match="holds \\+-inf or values beyond binary32"):
        N.hadamard_transform(np.array([np.inf, 1.0]), 2)
    # 16 inputs of 3e38 (finite) sum to 4.8e39 in the first output: beyond binary32, refused
    with pytest.raises(NumericsError, match="outputs \\(sums of 16 signed inputs\\) exceed binary32's range"):
        N.hadamard_transform(np.full((1, 16), 3e38, np.float32), 16)
    q = N.quantize_block(np.arange(4.0), "mxfp4")
    assert q.T is q
    np.testing.assert_array_equal(q.T.real(), q.real())
    with pytest.raises(FormatError, match="two-level rule needs S \\* M"):
        get_format("nvfp4_bf16_two_level")


def test_amax_rule_by_hand():
    """INT4 elements with BF16 scales: X = bf16(amax / 7). Block [7, 1, -3.5, 0.2]: X = 1,
    elements 7, 1, -4 (-3.5 ties to even), 0; block [0.7, 0.3]: 0.7/7 = 0.1 -> bf16 0.10009765625
    (the nearer of its neighbours 0.099609375 and 0.10009765625, 2^-11 apart), elements 0.7/X = 6.99 -> 7 and
    0.3/X = 2.997 -> 3."""
    x = np.zeros(32)
    x[:4] = [7.0, 1.0, -3.5, 0.2]
    x[16:18] = [0.7, 0.3]
    q = N.quantize_block(x, "int4_block_bf16")
    assert q.scales.tolist() == [1.0, 0.10009765625]
    np.testing.assert_array_equal(q.values[:4], [7, 1, -4, 0])
    np.testing.assert_array_equal(q.values[16:18], [7, 3])

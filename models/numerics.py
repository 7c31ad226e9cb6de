"""Public quantize and GEMM functions: validate, call a kernel (`fourbit.models._kernels`), wrap.

Every function here is exact: it computes what the modelled hardware computes, bit for bit, and
each kernel has a plain numpy twin in ``tests/naive.py``. Sources of each rule: design.md
section 3 and reference/technique.md sections 1 and 6, after Sun et al., "Ultra-Low Precision
4-bit Training of Deep Neural Networks", NeurIPS 2020 ([P] below).

The names and signatures of `quantize_fp4`, `quantize_int4_sawb`, `quantize_uint4_pact`, `gemm`
and `gemm_with_stats` are a contract other code and users rely on.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np

from fourbit.models import _kernels as K
from fourbit.models import scale_rules
from fourbit.models.qtensor import QTensor
from fourbit.models.stats import QuantStats
from fourbit.traces.block_formats import BlockFormat
from fourbit.traces.errors import FormatError, NumericsError
from fourbit.traces.formats import Accumulator, FloatFormat, IntFormat, LogFormat, get_format

__all__ = [
    "GemmStats",
    "QuantStats",
    "gemm",
    "gemm_groups_with_stats",
    "gemm_with_stats",
    "quantize_float",
    "quantize_fp4",
    "quantize_fp4_codes",
    "quantize_int4_sawb",
    "quantize_uint4_pact",
    "quantize_uniform",
    "sawb_alpha",
]

SAWB_C1 = 12.035
"""SAWB coefficient c1 for 4 bits, zero-aligned levels -7..7 (IBM fms-model-optimizer, code 403;
technique.md 1.2)."""
SAWB_C2 = 12.03
"""SAWB coefficient c2 (same source)."""


@dataclass(frozen=True)
class GemmStats:
    """Accumulator events of one GEMM.

    ``overflows``: roundings whose result exceeded the accumulator format's largest finite value
    and became +-inf (IEEE binary16 and DLFloat16 do not saturate; an int32 overflow raises
    instead); ``underflows``: roundings that turned a non-zero exact value into zero;
    ``nonfinite_outputs``: outputs that are +-inf or NaN; ``path``: the kernel that ran.
    """

    overflows: int
    underflows: int
    nonfinite_outputs: int
    path: str


# ---------------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------------
def _as_float_array(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise NumericsError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if np.isnan(arr).any():
        raise NumericsError(f"{name} contains NaN; {name} must be finite (or +-inf where allowed)")
    return arr


ROUNDINGS = ("nearest", "stochastic")
"""Rounding modes of every element quantizer: round to nearest (the format's ties) or stochastic
rounding with 64 counter-based random bits per element (unbiased; results do not depend on the
thread count)."""


def _check_key(key) -> tuple[int, int, int]:
    """A stochastic rounding's key (seed, step, tensor_id) as three integers in 0..2^64 - 1."""
    ok = isinstance(key, tuple | list) and len(key) == 3 and all(
        isinstance(k, int | np.integer) and not isinstance(k, bool) and 0 <= int(k) < 2**64 for k in key)
    if not ok:
        raise NumericsError(f"stochastic rounding needs key=(seed, step, tensor_id), three integers in 0..2^64-1, "
                            f"got {key!r}")
    return int(key[0]), int(key[1]), int(key[2])


def _option(value: str, name: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise NumericsError(f"{name} must be one of {allowed}, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------
# FP4 (radix-r logarithmic) quantization with Two-Phase Rounding
# ---------------------------------------------------------------------------------------------
def quantize_fp4_codes(x, fmt: LogFormat, tie: str = "up", *, rounding: str = "nearest",
                       key: tuple[int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray, QuantStats]:
    """Round ``x`` onto the log format ``fmt``; values, codes and statistics.

    Parameters
    ----------
    x : array_like of float, any shape
    fmt : LogFormat
        Radix, exponent bits and TPR phase (see `fourbit.traces.formats.LogFormat`).
    tie : {"up", "down"}
        At exactly a threshold: ``up`` takes the larger magnitude ([P] Fig. 2(c), "multiply by
        1.6 and truncate the exponent", in any IEEE precision), ``down`` the smaller ([P] Eq. 1).
    rounding : {"nearest", "stochastic"}
        ``stochastic``: between the levels v <= |x| < r*v, r*v with probability
        (|x| - v) / ((r - 1) v); below the smallest level v_min, v_min with probability
        |x| / v_min, else 0; saturation above the largest (logarithmic stochastic rounding and
        stochastic underflow, Chmiel et al., ICLR 2023, eqs. 10 and 12). One rounding uses 64
        random bits, keyed by ``key`` and the element's flat index (`_kernels.counter_bits`).
    key : (seed, step, tensor_id), non-negative integers; required with ``stochastic``

    Returns
    -------
    values : ndarray of float32 (float64 for a format with levels beyond binary32's normal range), shape of x
        Signed values on the format's grid; a flushed value keeps its sign (-0.0).
    codes : ndarray of uint8, shape of x
        Sign in bit ``fmt.exponent_bits``, magnitude code in the bits below.
    stats : QuantStats

    Raises
    ------
    NumericsError
        If x contains NaN (FP4 has no NaN code), a bad ``tie`` or ``rounding``, stochastic
        rounding without a key. +-inf saturates.
    """
    _option(tie, "tie", ("up", "down"))
    _option(rounding, "rounding", ROUNDINGS)
    levels = np.concatenate([[0.0], fmt.levels()])
    # the values in binary32 when it holds every level exactly (half the memory the GEMMs read)
    dtype = np.float32 if 2.0**-126 <= levels[1] and levels[-1] < 2.0**128 else np.float64
    if rounding == "stochastic":
        arr = _as_float_array(x, "x")
        flat = np.ascontiguousarray(arr).ravel()
        values, codes, counts = np.empty(flat.size, dtype), np.empty(flat.size, np.uint8), np.zeros(2, np.int64)
        K.quantize_log_stochastic(flat, values, codes, fmt.log2_radix, fmt.bias, fmt.n_levels, fmt.phase_shift,
                                  levels, fmt.radix, fmt.exponent_bits, counts, *_check_key(key))
    else:  # float32 and float64 read as they are; NaN counted by the kernel
        arr = np.asarray(x)
        if arr.dtype not in (np.float32, np.float64):
            arr = _as_float_array(arr, "x")
        flat = np.ascontiguousarray(arr).ravel()
        values, codes, counts = np.empty(flat.size, dtype), np.empty(flat.size, np.uint8), np.zeros(3, np.int64)
        low, threshold = log_rounding_tables(fmt)
        K.quantize_log(flat, values, codes, low, threshold, levels, tie == "up", fmt.exponent_bits, counts)
        if counts[2]:
            raise NumericsError("x contains NaN; x must be finite (or +-inf where allowed)")
    stats = QuantStats(flat.size, int(counts[0]), int(counts[1]), int(np.count_nonzero(values == 0)))
    return values.reshape(arr.shape), codes.reshape(arr.shape), stats


def log_rounding_tables(fmt: LogFormat) -> tuple[np.ndarray, np.ndarray]:
    """Round-to-nearest onto the log format ``fmt`` (radix r = 2^b) by the binary exponent field
    ef of |x| (float64, 0..2047): (low, threshold), int64 and float64 of shape (2048,), with
    code = low[ef] + 1 where |x| >= threshold[ef] (ties up), else low[ef]
    (`_kernels.quantize_log`).

    The thresholds T_j (`fourbit.traces.formats.LogFormat.thresholds`: (1 + 1/r)/2 times each
    level) have floor(log2 T_j) = b - 1 + b (j - 1 - bias) - phase_shift, so in the binade of
    E2 = ef - 1023 the largest threshold |x| can reach is T_j with j = floor((E2 - (b - 1) +
    phase_shift) / b) + 1 + bias, and no larger one: the code is j or j - 1. Zeros and
    subnormals (ef = 0) and j < 1 give code 0 (threshold +inf); j > n_levels saturates (low =
    n_levels - 1, threshold -1, always reached; inf too). Read-only arrays, cached per format's
    properties."""
    return _log_tables(fmt.log2_radix, fmt.bias, fmt.n_levels, fmt.phase_shift, tuple(fmt.thresholds()))


@functools.lru_cache(maxsize=64)
def _log_tables(b: int, bias: int, n_levels: int, phase_shift: int, thresholds: tuple) -> tuple[np.ndarray, np.ndarray]:
    ef = np.arange(2048, dtype=np.int64)
    j = (ef - 1023 - (b - 1) + phase_shift) // b + 1 + bias
    inside = (j >= 1) & (j <= n_levels) & (ef > 0)
    low = np.where(inside, j - 1, np.where(j > n_levels, n_levels - 1, 0)).astype(np.int64)
    threshold = np.where(inside, np.asarray(thresholds)[np.clip(j, 1, n_levels) - 1],
                         np.where(j > n_levels, -1.0, np.inf))
    low.setflags(write=False)
    threshold.setflags(write=False)
    return low, threshold


def quantize_fp4(x, radix: int = 4, exponent_bits: int = 3, phase: str = "even", tie: str = "up") -> np.ndarray:
    """Quantize gradients to a radix-``radix`` logarithmic FP4 format ([P] sections 3.1, 3.3).

    Between neighbouring values v and r*v the threshold is the arithmetic midpoint
    (1 + 1/r)/2 * r*v (r = 4: 0.625 * 4^n, "x 1.6 then truncate the exponent"); below the
    smallest value v_min the flush threshold is (1 + 1/r)/2 * v_min (r = 4: 0.009765625); values
    at or above the top threshold saturate to the largest value (r = 4: +-64); sign symmetric; a
    flushed value keeps its sign (-0.0). ``phase="odd"`` is Two-Phase Rounding's odd phase
    Q_odd(x) = r^(-1/2) * Q_even(r^(1/2) * x) (r = 4: ``0.5 * quantize_fp4(2 * x)``), defined for
    r = 4 and 16. Comparisons are exact: the binary exponent of x picks the threshold, no ``log``.

    Parameters
    ----------
    x : array_like of float, any shape
    radix : {2, 4, 8, 16}
    exponent_bits : {2, 3, 4}
    phase : {"even", "odd"}
    tie : {"up", "down"}
        ``up`` (default) follows [P] Fig. 2(c); ``down`` is [P] Eq. 1.

    Returns
    -------
    ndarray of float64, same shape as x

    Raises
    ------
    FormatError
        Bad radix, exponent bits or phase (odd phase with radix 2 or 8). Subclass of ValueError.
    NumericsError
        NaN input or bad ``tie``. Subclass of ValueError.
    """
    fmt = LogFormat.make(radix, exponent_bits, phase)
    return quantize_fp4_codes(x, fmt, tie)[0]


# ---------------------------------------------------------------------------------------------
# uniform integer quantizers: SAWB (weights) and PACT (activations)
# ---------------------------------------------------------------------------------------------
def quantize_uniform(x, step: float, lo: int, hi: int, dtype=np.int8, *, rounding: str = "nearest",
                     key: tuple[int, int, int] | None = None) -> tuple[np.ndarray, QuantStats]:
    """codes = rint(clip(x / step, lo, hi)), round half to even; one fused kernel pass.

    ``rounding="stochastic"``: |code| = floor(|q|) + 1 with probability |q| - floor(|q|), else
    floor(|q|), with q's sign, q = the clipped x / step in float64 (unbiased inside [lo, hi];
    Gupta et al., ICML 2015), from 64
    random bits keyed by ``key = (seed, step, tensor_id)`` and the element's flat index.
    Returns codes of ``dtype`` (shape of x) and statistics. Raises NumericsError for NaN input,
    a step that is not finite and positive, an unknown ``rounding``, stochastic rounding without
    a key.
    """
    if not (np.isfinite(step) and step > 0):
        raise NumericsError(f"step must be finite and > 0, got {step!r}")
    _option(rounding, "rounding", ROUNDINGS)
    arr = _as_float_array(x, "x")
    flat = np.ascontiguousarray(arr).ravel()
    codes = np.empty(flat.size, np.float64)
    counts = np.zeros(2, np.int64)
    if rounding == "stochastic":
        K.quantize_uniform_stochastic(flat, float(step), float(lo), float(hi), codes, counts, *_check_key(key))
    else:
        K.quantize_uniform(flat, float(step), float(lo), float(hi), codes, counts)
    out = codes.astype(dtype).reshape(arr.shape)
    stats = QuantStats(flat.size, int(counts[0]), int(counts[1]), int(np.count_nonzero(codes == 0)))
    return out, stats


def sawb_alpha(w, c1: float = SAWB_C1, c2: float = SAWB_C2) -> float:
    """SAWB clip value alpha = c1*sqrt(E[w^2]) - c2*E[|w|] ([P] section 2; Choi et al. 2019).

    Moments in float64 by numpy's ``mean`` over the flattened tensor (the reference summation
    order). alpha <= 0 or non-finite -> max|w| (IBM's guard). For nearly constant |w| the two
    terms cancel and alpha collapses to about 0.005*|w|: that is the published rule, kept.
    """
    flat = np.asarray(w, dtype=np.float64).ravel()
    if flat.size == 0:
        raise NumericsError("w is empty; SAWB needs at least one weight")
    alpha = c1 * np.sqrt(np.mean(flat * flat)) - c2 * np.mean(np.abs(flat))
    if not np.isfinite(alpha) or alpha <= 0:
        alpha = float(np.max(np.abs(flat)))
    return float(alpha)


def quantize_int4_sawb(w, c1: float = SAWB_C1, c2: float = SAWB_C2) -> tuple[np.ndarray, float]:
    """INT4 weights by SAWB, per tensor, symmetric codes -7..7 ([P] section 2).

    step = alpha/7 with alpha from `sawb_alpha`; codes = rint(clip(w/step, -7, 7)) (round half to
    even). An all-zero tensor gives all-zero codes and step 0.0 (no NaN), and so does one whose
    step alpha/7 underflows to zero in float64 (|w| of a few times 2^-1074).

    Parameters
    ----------
    w : array_like of float, any shape (the FP32 master weights)

    Returns
    -------
    codes : ndarray of int8, shape of w
    step : float
        The dequantized weight is codes * step.

    Raises
    ------
    NumericsError
        Empty or NaN input.
    """
    arr = _as_float_array(w, "w")
    step = sawb_alpha(arr, c1, c2) / 7
    if step == 0.0:  # all zero, or so small (alpha < 7 * 2^-1074) that alpha/7 underflows
        return np.zeros(arr.shape, np.int8), 0.0
    codes, _ = quantize_uniform(arr, step, -7, 7, np.int8)
    return codes, step


def quantize_uint4_pact(x, alpha: float) -> tuple[np.ndarray, float]:
    """INT4 activations by PACT: clip to [0, alpha], step = alpha/15, codes 0..15 (round half to
    even) (Choi et al. 2018, eq. 1-3; [P] section 2).

    Parameters
    ----------
    x : array_like of float, any shape
    alpha : float > 0, the clip value (trained per layer)

    Returns
    -------
    codes : ndarray of uint8, shape of x
    step : float

    Raises
    ------
    NumericsError
        NaN input or alpha not finite and positive.
    """
    if not (np.isfinite(alpha) and alpha > 0):
        raise NumericsError(f"PACT alpha must be finite and > 0, got {alpha!r}")
    step = float(alpha) / 15
    codes, _ = quantize_uniform(x, step, 0, 15, np.uint8)
    return codes, step


# ---------------------------------------------------------------------------------------------
# float formats
# ---------------------------------------------------------------------------------------------
def _float_params(fmt: FloatFormat) -> tuple:
    return (fmt.mantissa_bits, fmt.emin, fmt.subnormals, fmt.ties == "away", fmt.max_value,
            fmt.min_normal)


def quantize_float(x, fmt, saturate: bool | None = None, rounding: str = "nearest",
                   key: tuple[int, int, int] | None = None, dtype=np.float64) -> tuple[np.ndarray, QuantStats]:
    """Round ``x`` onto a float format (fp8_e4m3, fp8_e5m2, fp16, dlfloat16, fp32).

    ``rounding="nearest"`` uses the format's tie rule (ties to even; DLFloat16 ties away);
    ``rounding="stochastic"`` rounds up with probability equal to the distance from the value
    below, in units of the gap (unbiased; Gupta et al., ICML 2015), with counter-based random bits
    keyed by ``key = (seed, step, tensor_id)`` and the element index, so results do not depend
    on thread count. Overflow saturates to +-max for the FP8 formats (ml_dtypes
    ``float8_e4m3fn`` would give NaN; design.md section 3) and goes to +-inf for the others unless
    ``saturate`` says otherwise. Returns the values (shape of x; ``dtype`` float64, or float32,
    which holds every format up to fp32 exactly) and statistics (``clipped`` counts overflows,
    ``flushed`` non-zero values that became zero). A float32 ``x`` rounded to nearest fp16 goes
    through the CPU's own conversion (F16C), which gives the same values as the reference; tests
    compare every path with ml_dtypes' casts (the oracle for FP8, E2M1 and BF16).

    Raises
    ------
    NumericsError
        NaN input, an unknown ``rounding``, stochastic rounding without a ``key``.
    FormatError
        ``fmt`` is not a float format.
    """
    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    if not isinstance(fmt, FloatFormat):
        raise FormatError(f"quantize_float takes a float format, got {fmt.name!r}")
    if saturate is None:
        saturate = fmt.saturates
    _option(rounding, "rounding", ROUNDINGS)
    if dtype not in (np.float64, np.float32):
        raise NumericsError(f"dtype must be numpy.float64 or numpy.float32, got {dtype!r}")
    float32_in = isinstance(x, np.ndarray) and x.dtype == np.float32
    if rounding == "nearest" and float32_in and not saturate and fmt.ieee_dtype is not None:
        return _cast_float32(x, fmt, dtype)
    # every format here fits binary32: a float32 x is rounded in place of a float64 copy (the
    # kernel counts its NaNs)
    arr = x if float32_in else _as_float_array(x, "x")
    flat = np.ascontiguousarray(arr).ravel()
    out = np.empty_like(flat)
    counts = np.zeros(4, np.int64)
    if rounding == "nearest":
        K.round_float_array(flat, out, *_float_params(fmt), bool(saturate), counts)
    else:
        frac, emin, sub, _, mx, flush = _float_params(fmt)
        K.round_float_stochastic_array(flat, out, *_check_key(key), frac, emin, sub, mx,
                                       flush, bool(saturate), counts)
    if counts[3]:
        raise NumericsError("x contains NaN; x must be finite (or +-inf where allowed)")
    stats = QuantStats(flat.size, int(counts[0]), int(counts[1]), int(counts[2]))
    return out.reshape(arr.shape).astype(dtype, copy=False), stats


def _cast_float32(x: np.ndarray, fmt: FloatFormat, dtype) -> tuple[np.ndarray, QuantStats]:
    """`quantize_float` of a float32 array to nearest fp16 (hardware conversion) or fp32 (no-op)."""
    if np.isnan(x).any():
        raise NumericsError("x contains NaN; x must be finite (or +-inf where allowed)")
    flat = np.ascontiguousarray(x).ravel()
    counts = np.zeros(2, np.int64)
    if fmt.ieee_dtype == np.float16:
        out = np.empty_like(flat)
        K.narrow_array(flat, out, counts)
    else:
        out = flat
    stats = QuantStats(flat.size, int(counts[0]), int(counts[1]), int(np.count_nonzero(out == 0)))
    return out.reshape(x.shape).astype(dtype, copy=out is flat), stats


# ---------------------------------------------------------------------------------------------
# block-scaled formats
# ---------------------------------------------------------------------------------------------
def _block_format(fmt) -> BlockFormat:
    found = get_format(fmt)
    if not isinstance(found, BlockFormat):
        raise FormatError(f"fmt must be a block format (mxfp4, nvfp4, int4_block, ...), got {found.name!r}")
    return found


def _tiles(shape: tuple[int, ...], fmt: BlockFormat, ax: int) -> tuple[int, int, int, int, int, tuple[int, ...]]:
    """How `quantize_block` sees ``x``: as an (A, R, C) array (a C-order reshape, so flat
    indices are x's) cut into tiles of tile_rows x tile_cols, one block each; and the shape of
    the scales. 1-D blocks along the last axis: A = prod(shape[:-1]), R = 1, C = shape[-1],
    tiles of 1 x block; along another axis ``ax``: A = prod(shape[:ax]), R = shape[ax], C =
    prod(shape[ax+1:]), tiles of block x 1; 2-D blocks: the last two axes, tiles of block x
    block. Returns (A, R, C, tile_rows, tile_cols, scale shape)."""
    bs = fmt.block
    if fmt.block_2d:
        r, c = shape[-2:]
        return math.prod(shape[:-2]), r, c, bs, bs, (*shape[:-2], -(-r // bs), -(-c // bs))
    r = shape[ax]
    scale_shape = (*shape[:ax], -(-r // bs), *shape[ax + 1:])
    if ax == len(shape) - 1:  # rows of blocks: contiguous tiles
        return math.prod(shape[:-1]), 1, r, 1, bs, scale_shape
    return math.prod(shape[:ax]), r, math.prod(shape[ax + 1:]), bs, 1, scale_shape


def quantize_block(x, fmt, axis: int = -1, *, rounding: str = "nearest",
                   key: tuple[int, int, int] | None = None) -> QTensor:
    """Quantize ``x`` onto a block-scaled format: one scale per block of ``fmt.block``
    consecutive elements along ``axis`` (the last block may be partial), or per block x block
    tile of the last two axes for a 2-D format (``axis`` unused). The scale rule, its source and
    the common choices (binary32 inputs, +-inf as +-largest binary32, zero blocks, saturation)
    are stated in `fourbit.traces.block_formats`.

    Parameters
    ----------
    x : array_like of float, at least 1-D (2-D for a 2-D block format)
    fmt : BlockFormat or its name (``mxfp4``, ``nvfp4``, ``int4_block``, ``nvfp4_2d``, ...)
    axis : int
        The axis blocks run along: the GEMM's reduction axis K of the operand.
    rounding : {"nearest", "stochastic"}
        Elements round to nearest even, or stochastically with 64 random bits each keyed by
        ``key`` and the element's flat index in ``x`` (unbiased below the saturation limit).
    key : (seed, step, tensor_id), non-negative integers; required with ``stochastic``

    Returns
    -------
    QTensor
        ``values`` the elements (float32, shape of x), ``format`` the element format,
        ``scales`` the decoded block scales (float64, `Scale.shape` of x), ``scaling`` the
        block layout, ``tensor_scale`` the per-tensor decode scale (two-level rules; else 1);
        ``real()`` is the dequantized tensor, exactly.

    Raises
    ------
    FormatError
        ``fmt`` is not a block format.
    NumericsError
        NaN in ``x`` (the element formats have none), an empty or 0-d ``x``, a 2-D format on
        a 1-D ``x``, ``axis`` out of range, an unknown ``rounding``, stochastic rounding
        without a ``key``.
    """
    fmt = _block_format(fmt)
    _option(rounding, "rounding", ROUNDINGS)
    if rounding == "stochastic":
        _check_key(key)
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise NumericsError(f"x must be a numeric array, got dtype {arr.dtype}")
    if arr.ndim < (2 if fmt.block_2d else 1) or arr.size == 0:
        raise NumericsError(f"x of shape {arr.shape}: {fmt.name} needs a non-empty array of at least "
                            f"{2 if fmt.block_2d else 1} dimension(s)")
    if not fmt.block_2d and (not isinstance(axis, int | np.integer) or isinstance(axis, bool)
                             or not -arr.ndim <= axis < arr.ndim):
        raise NumericsError(f"axis must be an integer in {-arr.ndim}..{arr.ndim - 1} for x of shape {arr.shape}, "
                            f"got {axis!r}")
    if fmt.block_2d:
        axis = -1
    ax = int(axis) % arr.ndim
    a, r, c, tile_rows, tile_cols, scale_shape = _tiles(arr.shape, fmt, ax)
    x = np.ascontiguousarray(arr if arr.dtype in (np.float32, np.float64) else arr.astype(np.float64))
    x = x.reshape(a, r, c)
    amax = np.empty((a, -(-r // tile_rows), -(-c // tile_cols)), np.float32)
    nan_tiles = np.zeros(a * amax.shape[1], np.bool_)
    K.block_amax(x, tile_rows, tile_cols, amax, nan_tiles)
    if nan_tiles.any():
        where = np.unravel_index(int(np.argmax(np.isnan(arr))), arr.shape)
        raise NumericsError(f"x contains NaN (first at index {tuple(int(i) for i in where)}); {fmt.name}'s elements "
                            f"({fmt.element}) have no NaN")
    scales, encode, tensor_scale = scale_rules.block_scales(fmt, amax, amax.max())
    elem = fmt.element_format
    mode = 0 if fmt.pow2 else 2 if scale_rules.encode_divides(fmt) else 1
    narrow = getattr(elem, "min_positive", 1.0) >= 2.0**-120  # float32 holds every value that can round above 0
    is_float = isinstance(elem, FloatFormat)
    frac, emin, sub, away, _, flush = _float_params(elem) if is_float else (0, 0, False, False, 0.0, 0.0)
    seed, step, tid = _check_key(key) if rounding == "stochastic" else (0, 0, 0)
    values = np.empty((a, r, c), np.float32)
    counts = np.zeros((nan_tiles.size, 3), np.int64)
    K.block_round(x, tile_rows, tile_cols, np.ascontiguousarray(scales), np.ascontiguousarray(encode), mode, narrow,
                  is_float, frac, emin, sub, away, float(fmt.element_max), flush, rounding == "stochastic", seed,
                  step, tid, values, counts)
    clipped, flushed, zeros = (int(v) for v in counts.sum(axis=0))
    stats = QuantStats(arr.size, clipped, flushed, zeros)
    scaling = fmt.scaling(ax - arr.ndim)
    values = values.reshape(arr.shape)
    scales = scales.reshape(scale_shape)
    return QTensor(values, fmt.element_format, scales, stats, None, scaling, tensor_scale, in_format=True)


# ---------------------------------------------------------------------------------------------
# random Hadamard transform
# ---------------------------------------------------------------------------------------------
def hadamard_matrix(n: int, key: tuple[int, int, int] | None = None) -> np.ndarray:
    """The unnormalised n x n Hadamard matrix of Sylvester's construction, H[i, j] =
    (-1)^popcount(i & j), with row i multiplied by a random sign s_i when ``key`` is given
    (s_i from the low bit of `_kernels.counter_bits(seed, step, tensor_id, i)`): D H with D =
    diag(s), so (D H)(D H)^T = n I. float64, shape (n, n).

    Raises NumericsError when n is not a power of two in 1..2^12."""
    if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 1 or n & (n - 1) or n > 4096:
        raise NumericsError(f"the Hadamard block must be a power of two in 1..4096, got {n!r}")
    i = np.arange(n)
    parity = np.zeros((n, n), np.int64)
    both = i[:, None] & i[None, :]
    while both.any():
        parity ^= both & 1
        both = both >> 1
    h = 1.0 - 2.0 * parity
    if key is not None:
        seed, step, tid = _check_key(key)
        signs = np.array([1.0 - 2.0 * (int(K.counter_bits(seed, step, tid, int(j))) & 1) for j in range(n)])
        h = signs[:, None] * h
    return h


def hadamard_transform(x, n: int, key: tuple[int, int, int] | None = None, axis: int = -1) -> np.ndarray:
    """The random Hadamard transform of ``x`` along ``axis`` in blocks of ``n``: each block
    x_b -> x_b D H (`hadamard_matrix`), every output the exact sum of n signed inputs rounded
    once to binary32. Inputs are taken as binary32 values (rounded to nearest first, as the
    quantizers that follow take them). Applied along K to both operands of a GEMM A B with the same key, the
    product of the transformed operands is n A B, because (D H)(D H)^T = n I: dividing by n
    (exact, a power of two) cancels it in exact arithmetic (NVIDIA's NVFP4 recipe, arXiv
    2509.25149: 16 x 16 on the weight-gradient GEMM's inputs; Tseng et al., arXiv 2502.20586).

    Parameters
    ----------
    x : array_like of float, shape (..., L, ...) with L = x.shape[axis] a multiple of n
    n : int, a power of two
    key : (seed, step, tensor_id) for the random signs; None: no signs (D = I)
    axis : int

    Returns
    -------
    ndarray of float32, shape of x

    Raises
    ------
    NumericsError
        n not a power of two, L not a multiple of n, NaN, +-inf or values beyond binary32 in x,
        outputs beyond binary32 (a block summing to more than its largest value), axis out of
        range."""
    h = hadamard_matrix(n, key)
    arr = np.asarray(x)
    if arr.ndim == 0 or not isinstance(axis, int | np.integer) or isinstance(axis, bool) \
            or not -arr.ndim <= axis < arr.ndim:
        raise NumericsError(f"axis {axis!r} is out of range for x of shape {arr.shape}")
    if arr.shape[axis] % n:
        raise NumericsError(f"the transformed axis has length {arr.shape[axis]}, not a multiple of the Hadamard "
                            f"block {n}")
    if arr.dtype == np.float32:
        arr32 = arr
    else:
        with np.errstate(over="ignore"):
            arr32 = _as_float_array(arr, "x").astype(np.float32)
    if not np.isfinite(arr32).all():
        raise NumericsError("x holds +-inf or values beyond binary32's range, or NaN; the Hadamard transform takes "
                            "finite binary32 values")
    ax = int(axis) % arr.ndim
    shape3 = (math.prod(arr.shape[:ax]), arr.shape[ax], math.prod(arr.shape[ax + 1:]))
    x3 = np.ascontiguousarray(arr32).reshape(shape3)
    out = np.empty(shape3, np.float32)
    K.hadamard_blocks(x3, out, h, h[:, 0].copy())  # column 0 of D H is the signs
    if not np.isfinite(out).all():  # a sum of n finite inputs beyond binary32's largest value
        raise NumericsError(f"the transform's outputs (sums of {n} signed inputs) exceed binary32's range; x holds "
                            f"values up to {float(np.abs(arr32).max()):g}")
    return out.reshape(arr.shape)


# ---------------------------------------------------------------------------------------------
# GEMM
# ---------------------------------------------------------------------------------------------
@dataclass
class _Operand:
    """A validated GEMM operand: the array as given and what exact arithmetic needs of it."""

    array: np.ndarray
    integer: bool
    low: int  # every value is an integer multiple of 2^low
    high: float  # max |value| (0.0 when all zero)
    _pow2: bool | None = None  # from the scan of a float array; of an integer one, when a plan asks
    width: int = 53  # the widest significand of a value, in bits (fp16 values: <= 11)

    @property
    def pow2(self) -> bool:
        """Every non-zero value is +-2^e (a log-format operand)."""
        if self._pow2 is None:  # an integer array (a float one has it from the scan)
            mags = np.abs(self.array.astype(np.int64))
            self._pow2 = bool(np.all((mags & (mags - 1)) == 0))
        return self._pow2

    def as_lane(self, dtype) -> np.ndarray:
        return np.ascontiguousarray(self.array, dtype=dtype)

    def as_left(self) -> np.ndarray:
        """The array as given, C-contiguous or a transposed (F-contiguous) matrix: the lane
        kernels read the left operand one scalar at a time and convert it themselves
        (`_kernels.as_lane`), so a float64 or integer operand is not copied, nor is a transposed
        one (a ``bwd_weight``'s dY^T; its transposing copy took longer than the GEMM)."""
        if self.array.ndim == 2 and self.array.flags.f_contiguous:
            return self.array
        return np.ascontiguousarray(self.array)


def _flat_values(x: np.ndarray) -> np.ndarray:
    """Every value of ``x`` in one flat array, in any order (what the scan counts does not depend
    on it): a view when ``x`` or its transpose (the last two axes swapped: a GEMM's b given as a
    transposed operand) is C-contiguous, else a copy."""
    if not x.flags.c_contiguous and x.ndim >= 2:
        t = np.swapaxes(x, -1, -2)
        if t.flags.c_contiguous:
            return t.ravel()
    return np.ascontiguousarray(x).ravel()


def _scan(x: np.ndarray, name: str) -> _Operand:
    if x.dtype.kind in "biu":
        high = float(max(abs(int(x.min(initial=0))), abs(int(x.max(initial=0)))))
        if high >= 2.0**24:
            raise NumericsError(f"{name} holds integers beyond 2^24, not exact in fp32")
        return _Operand(x, True, 0, high, width=int(high).bit_length())
    if x.dtype.kind != "f":
        raise NumericsError(f"{name} must be a numeric array, got dtype {x.dtype}")
    bad, low, high, not_pow2, width = K.scan_operand(_flat_values(x))
    if not np.isfinite(high):
        raise NumericsError(f"{name} contains NaN or +-inf; GEMM operands must be finite")
    if bad:
        raise NumericsError(
            f"{name} holds {bad} values that are not exact in fp32; GEMM operands are the exact "
            f"values of formats up to fp32 (round them with a quantizer first)"
        )
    integer = bool(high == 0.0 or low >= 0)
    return _Operand(x, integer, int(low) if high else 0, float(high), not_pow2 == 0, int(width))


def _log_side(a: _Operand, b: _Operand, group: int = 4) -> str | None:
    """Which operand ("b" first, then "a") is +-powers of two while the other holds small
    integers, such that every group sum of shifted integers is exact in int64; None if neither:
    then the shift-add kernel does not apply."""
    for side, log, other in (("b", b, a), ("a", a, b)):
        if log.pow2 and other.integer and log.high > 0 and other.high > 0:
            span = int(np.log2(log.high)) - log.low  # shift range in bits
            bits = int(other.high).bit_length() + span + int(np.ceil(np.log2(max(group, 1))))
            if bits <= 62:
                return side
    return None


def _plan(a: _Operand, b: _Operand, k: int, acc: Accumulator) -> str:
    """Pick the fastest kernel whose result is provably identical to the general one."""
    if a.high == 0.0 or b.high == 0.0:
        return "zero"
    low = a.low + b.low
    if acc.is_integer:
        bound = k * a.high * b.high  # |every partial sum| <= K * max|a| * max|b|
        if bound < 2.0**24:
            return "blas32"  # float32 BLAS is exact: integer partial sums below 2^24
        return "blas64" if bound <= 2.0**31 - 1 else "int"
    if acc.is_exact:
        return "blas64" if k * a.high * b.high < 2.0 ** (low + 53) else "general"
    fmt = acc.value_format
    hg = acc.group * a.high * b.high  # bound on |product| and |group sum|
    ieee = fmt.ieee_dtype
    if ieee == np.float16 and hg < 2.0 ** (low + 24) and low >= -149:
        return "ieee32"  # binary16 roundings in hardware on float32 lanes
    if ieee == np.float16 and hg < 2.0 ** (low + 53) and low >= -1074:
        return "half64"  # binary16 roundings on float64 lanes (FP8 x INT4 products span too much for float32)
    exact32 = hg < 2.0 ** (low + 24) or (acc.group == 1 and a.width + b.width <= 24)
    if ieee == np.float32 and exact32 and low >= -149:
        return "native32"  # float32 lane arithmetic is the binary32 accumulator (products exact)
    if ieee == np.float32 and hg < 2.0 ** (low + 53) and low >= -1074:
        return "ieee64"  # binary32 roundings in hardware on float64 lanes
    smallest = fmt.min_normal if fmt.subnormals else np.nextafter(fmt.min_normal, np.inf)
    if 2.0**low < smallest:
        return "shift_add" if _log_side(a, b, acc.group) else "general"
    p = fmt.precision
    if 2 * p + 2 <= 24 and hg < 2.0 ** (low + 24):
        return "fast32"
    if 2 * p + 2 <= 53 and hg < 2.0 ** (low + 53):
        return "fast64"
    return "shift_add" if _log_side(a, b, acc.group) else "general"


def _check_operands(a, b, acc: Accumulator) -> tuple[_Operand, _Operand]:
    if not isinstance(acc, Accumulator):
        raise NumericsError(f"accumulator must be an Accumulator, got {type(acc).__name__}")
    if acc.chunk == "array":
        raise NumericsError("accumulator chunk='array' is unresolved; call accumulator.resolve(rows, macs_per_pe)")
    a_arr, b_arr = np.asarray(a), np.asarray(b)
    if a_arr.ndim != b_arr.ndim or a_arr.ndim not in (2, 3) or a_arr.shape[:-2] != b_arr.shape[:-2]:
        raise NumericsError(f"a and b must be 2-D (or 3-D with the same number of groups), got shapes {a_arr.shape} "
                            f"and {b_arr.shape}")
    if a_arr.shape[-1] != b_arr.shape[-2]:
        raise NumericsError(f"inner dimensions differ: a is {a_arr.shape}, b is {b_arr.shape} (K must match)")
    if a_arr.shape[-1] == 0:
        raise NumericsError("K = 0: a GEMM needs at least one product per output")
    ao, bo = _scan(a_arr, "a"), _scan(b_arr, "b")
    if acc.is_integer and not (ao.integer and bo.integer):
        raise NumericsError("the int32 accumulator takes integer operands only")
    return ao, bo


_SKIP_MIN_LANES = 128  # outputs per row from which `gemm_fast_ieee` tests groups for exactness


def _run(a: _Operand, b: _Operand, acc: Accumulator, path: str) -> tuple[np.ndarray, GemmStats]:
    m, kk = a.array.shape
    n = b.array.shape[1]
    over = under = 0
    nonfinite = None  # counted at the end unless a path knows it (exact integer sums: 0)
    if path in ("zero", "blas32", "blas64", "int"):
        nonfinite = 0
    if path == "zero":
        out = np.zeros((m, n), np.float64)
    elif path == "blas32":
        out = (a.as_lane(np.float32) @ b.as_lane(np.float32)).astype(np.float64)
    elif path == "blas64":
        out = a.as_lane(np.float64) @ b.as_lane(np.float64)
    elif path == "int":
        res = np.empty((m, n), np.int64)
        bad = np.zeros(m, np.bool_)
        K.gemm_int(a.as_lane(np.int64), b.as_lane(np.int64), res, acc.is_integer, bad)
        if bad.any():
            raise NumericsError(
                f"int32 accumulator overflow in row {int(np.argmax(bad))}: a partial sum left "
                f"[-2^31, 2^31 - 1] (an error, not a wrap)"
            )
        out = res.astype(np.float64)
    elif path in ("fast32", "fast64"):
        dt = np.float32 if path == "fast32" else np.float64
        fmt = acc.value_format
        lane_out = np.empty((m, n), dt)
        bad = np.zeros(m, np.bool_)
        chunk = kk if acc.chunk is None else int(acc.chunk)
        # |chunk sum| <= chunk * max|a| * max|b| * (1 + 2^-p)^(roundings): below the format's
        # largest value, no overflow can happen inside a chunk and the kernel skips that test
        growth = (1.0 + 2.0**-fmt.precision) ** (chunk // acc.group + 2)
        bound = max(min(chunk, kk) * growth, acc.group * (1.0 + 2.0**-fmt.precision)) * (1 + 1e-9)
        check = bound * a.high * b.high > fmt.max_value
        params = K.lane_params(dt, fmt.mantissa_bits, fmt.ties == "away", fmt.max_value)
        if _narrow_n(m, n, check):
            lane_t, bad_t = np.empty((n, m), dt), np.zeros(n, np.bool_)
            K.gemm_fast(*_transposed_lanes(a, b, dt), lane_t, acc.group, chunk, params, False, bad_t)
            lane_out = lane_t.T
            bad[:] = bad_t.any()  # a flagged column: redo every row
        else:
            K.gemm_fast(a.as_left(), b.as_lane(dt), lane_out, acc.group, chunk, params, check, bad)
        out = lane_out.astype(np.float64)
        rows = np.flatnonzero(bad)
        if rows.size:  # an accumulator overflowed: redo those rows exactly (inf semantics)
            over, under = _general(a, b, acc, out, rows)
    elif path in _IEEE_PATHS:
        plan = _ieee_plan(a, b, acc, path, m, n)
        lost = np.zeros(n if plan.transposed else m, np.int64)
        if plan.transposed:
            lane_t = np.empty((n, m), plan.dt)
            bt, at = _transposed_lanes(a, b, plan.dt)
            K.gemm_fast_ieee(*K.left_operand(bt), at, lane_t, acc.group, plan.chunk, plan.check, lost,
                             plan.mode, plan.lane_p, plan.exact_groups)
            lane_out = lane_t.T
        else:
            lane_out = np.empty((m, n), plan.dt)
            K.gemm_fast_ieee(*K.left_operand(a.as_left()), b.as_lane(plan.dt), lane_out, acc.group, plan.chunk, plan.check, lost,
                             plan.mode, plan.lane_p, plan.exact_groups)
        out = lane_out.astype(np.float64)
        over, under, nonfinite = _ieee_events(a, b, acc, lane_out, lost, plan.transposed, out)
    elif path == "general":
        out = np.empty((m, n), np.float64)
        over, under = _general(a, b, acc, out, np.arange(m))
    elif path == "shift_add":
        out, over, under = _shift_add(a, b, acc)
    else:
        raise NumericsError(f"unknown GEMM path {path!r}")
    if nonfinite is None:
        nonfinite = int(np.count_nonzero(~np.isfinite(out)))
    return out, GemmStats(int(over), int(under), nonfinite, path)


_IEEE_PATHS = ("ieee32", "ieee64", "native32", "half64")


@dataclass(frozen=True)
class _IeeePlan:
    """How `gemm_fast_ieee` runs a GEMM: lane type, rounding mode and its constants, chunk, whether
    to test for underflow, whether on the transposed problem, and the exact-group test."""

    dt: type
    mode: int
    lane_p: np.ndarray
    chunk: int
    check: bool
    transposed: bool
    exact_groups: np.ndarray


def _ieee_plan(a: _Operand, b: _Operand, acc: Accumulator, path: str, m: int, n: int) -> _IeeePlan:
    """The `_IeeePlan` of an (m x K) by (K x n) GEMM on ``path`` from the operands' bounds.

    Raises NumericsError when ``path`` does not compute this accumulator."""
    dt = np.float64 if path in ("ieee64", "half64") else np.float32
    mode = {"native32": K.LANE_NATIVE, "half64": K.LANE_HALF64}.get(path, K.LANE_NARROW)
    computes = np.float16 if path in ("ieee32", "half64") else np.float32
    if acc.value_format is None or getattr(acc.value_format, "ieee_dtype", None) != computes:
        raise NumericsError(f"path {path!r} computes the IEEE {np.dtype(computes).name} accumulator only")
    kk = a.array.shape[-1]
    fmt = acc.value_format
    # a non-zero group sum is at least 2^low: it cannot round to zero when that is at least half
    # the format's smallest (subnormal) value
    check = 2.0 ** (a.low + b.low) <= fmt.min_positive / 2
    transposed = _narrow_n(m, n)
    left, right = (b, a) if transposed else (a, b)
    # the per-group test pays off across wide rows only (measured: N = 512 3.2 ms against
    # 4.0 ms without it; N = 64 4.2 ms against 3.8 ms)
    skip = mode != K.LANE_NATIVE and (m if transposed else n) >= _SKIP_MIN_LANES and left.pow2
    exact_groups = K.exact_group_params(skip, right.low, right.high, fmt.precision,
                                        math.frexp(fmt.min_positive)[1] - 1, fmt.max_value, acc.group)
    return _IeeePlan(dt, mode, K.lane_params(np.float64, 10, False, 65504.0), kk if acc.chunk is None else int(acc.chunk),
                     bool(check), transposed, exact_groups)


def _ieee_events(a: _Operand, b: _Operand, acc: Accumulator, lane_out: np.ndarray, lost: np.ndarray,
                 transposed: bool, out: np.ndarray) -> tuple[int, int, int | None]:
    """(overflows, underflows, non-finite outputs or None to count) of a `gemm_fast_ieee` result
    ``lane_out`` (M x N) with its underflow counts ``lost`` (per row, per column when
    ``transposed``): rows with a non-finite output are recounted by `gemm_general` (their values
    are already right: IEEE inf/NaN)."""
    bad = ~np.isfinite(lane_out).all(axis=1)
    if not bad.any():
        return 0, int(lost.sum()), 0
    if transposed:  # counts are per column there: recount every row
        bad[:] = True
    under = 0 if transposed else int(lost[~bad].sum())
    over, under_rows = _general(a, b, acc, out, np.flatnonzero(bad))
    return over, under + under_rows, None


def _narrow_n(m: int, n: int, check: bool = False) -> bool:
    """Run a lane kernel on the transposed problem (C^T = B^T A^T) when N is too narrow to fill
    the SIMD lanes and M is wider. The sum of every output keeps its k order, so the result is
    bit-identical. Overflow flags then mark columns, so an overflow recomputes every row: the
    `gemm_fast` kernel is transposed only when it cannot overflow (``check`` off)."""
    return not check and n < 8 and m > n


def _transposed_lanes(a: _Operand, b: _Operand, dt) -> tuple[np.ndarray, np.ndarray]:
    return np.ascontiguousarray(b.array.T), np.ascontiguousarray(a.array.T, dtype=dt)


def _general(a: _Operand, b: _Operand, acc: Accumulator, out: np.ndarray, rows: np.ndarray) -> tuple[int, int]:
    kk = a.array.shape[1]
    counts = np.zeros((rows.size, 2), np.int64)
    exact = acc.is_exact
    params = (0, 0, True, False, np.inf, 0.0) if exact else _float_params(acc.value_format)
    chunk = kk if acc.chunk is None else int(acc.chunk)
    K.gemm_general(a.as_lane(np.float64), b.as_lane(np.float64), out, rows.astype(np.int64),
                   acc.group, chunk, exact, *params, counts)
    return int(counts[:, 0].sum()), int(counts[:, 1].sum())


def _shift_add(a: _Operand, b: _Operand, acc: Accumulator) -> tuple[np.ndarray, int, int]:
    """Run the shift-add kernel with the integer operand on the left (a transposed product
    keeps the k order, so the sums are the same)."""
    side = _log_side(a, b, acc.group)
    if side is None or acc.sums_exactly:
        raise NumericsError("the shift_add path needs a +-2^e operand, a small-integer operand and a rounding accumulator")
    transposed = side == "a"
    ints, logs = (b.array.T, a.array.T) if transposed else (a.array, b.array)
    lv = np.asarray(logs, np.float64)
    exps = np.frexp(np.abs(lv))[1] - 1
    e0 = int(np.min(exps[lv != 0]))
    shift = np.where(lv != 0, exps - e0, 0).astype(np.int64)
    sign = np.sign(lv).astype(np.int64)
    m, kk = ints.shape
    out = np.empty((m, lv.shape[1]), np.float64)
    counts = np.zeros((m, 2), np.int64)
    chunk = kk if acc.chunk is None else int(acc.chunk)
    K.gemm_shift_add(np.ascontiguousarray(ints, np.int64), np.ascontiguousarray(shift),
                     np.ascontiguousarray(sign), out, acc.group, chunk, e0,
                     *_float_params(acc.value_format), counts)
    if transposed:
        out = np.ascontiguousarray(out.T)
    return out, int(counts[:, 0].sum()), int(counts[:, 1].sum())


def gemm_with_stats(a, b, accumulator: Accumulator, *, path: str | None = None) -> tuple[np.ndarray, GemmStats]:
    """`gemm` plus the accumulator's events (overflows, underflows, non-finite outputs).

    ``path`` forces a kernel (tests use it to compare kernels); by default the fastest kernel whose
    result is provably identical is chosen: float32 BLAS for int32 while K*max|a|*max|b| < 2^24
    (K < 159,783 for uint4 x int4 codes, |product| <= 105), float64 BLAS for ``exact`` while all
    partial sums are exact in float64, vectorised lane kernels when group sums are exact in the
    lane type, else the general error-free kernel.

    Parameters
    ----------
    a : array_like, shape (M, K); b : array_like, shape (K, N)
        Exact operand values, as for `gemm`.
    accumulator : Accumulator
    path : str, optional
        ``"general"``, ``"shift_add"``, ``"fast32"``, ``"fast64"``, ``"ieee32"``, ``"ieee64"``,
        ``"half64"``, ``"native32"``, ``"int"``, ``"blas32"`` or ``"blas64"``.

    Returns
    -------
    out : ndarray of float64, shape (M, N)
    stats : GemmStats
        Counts of accumulator events (overflows to +-inf, underflows to zero), non-finite
        outputs, and the kernel that ran.

    Raises
    ------
    NumericsError
        As `gemm`; also a forced ``path`` that does not compute this accumulator.
    """
    ao, bo = _check_operands(a, b, accumulator)
    if ao.array.ndim != 2:
        raise NumericsError(f"a and b must be 2-D, got shapes {ao.array.shape} and {bo.array.shape} "
                            "(grouped GEMMs: gemm_groups_with_stats)")
    chosen = path or _plan(ao, bo, ao.array.shape[1], accumulator)
    return _run(ao, bo, accumulator, chosen)


def gemm_groups_with_stats(a, b, accumulator: Accumulator) -> tuple[np.ndarray, GemmStats]:
    """G independent GEMMs out[g] = a[g] @ b[g] (a (G, M, K), b (G, K, N)), each exactly as
    `gemm_with_stats` computes it, with one validation and one plan for all of them: bounds over
    every group hold for each group, and each kernel's preconditions only get harder to meet with
    wider bounds, so the kernel chosen is exact for every group (it may be a slower one than a
    group's own bounds would allow). Exact sums (``blas32``, ``blas64``) run as one batched
    matmul, the IEEE lane kernels as one launch over all groups' rows
    (`_kernels.gemm_fast_ieee_groups`); the other kernels group by group. Returns (out (G, M, N) float64, the groups' events
    summed).

    Raises NumericsError as `gemm`, for operands that are not 3-D with the same G too."""
    ao, bo = _check_operands(a, b, accumulator)
    if ao.array.ndim != 3:
        raise NumericsError(f"grouped GEMMs take a (G, M, K) and b (G, K, N), got shapes {ao.array.shape} and "
                            f"{bo.array.shape}")
    path = _plan(ao, bo, ao.array.shape[2], accumulator)
    if path in ("zero", "blas32", "blas64"):  # exact sums: one batched call, any summation order
        g, m, _ = ao.array.shape
        if path == "zero":
            out = np.zeros((g, m, bo.array.shape[2]), np.float64)
        elif path == "blas32":
            out = np.matmul(ao.as_lane(np.float32), bo.as_lane(np.float32)).astype(np.float64)
        else:
            out = np.matmul(ao.as_lane(np.float64), bo.as_lane(np.float64))
        return out, GemmStats(0, 0, 0, path)
    if path in _IEEE_PATHS:
        return _ieee_groups(ao, bo, accumulator, path)
    parts = [_run(_group_operand(ao, i), _group_operand(bo, i), accumulator, path) for i in range(ao.array.shape[0])]
    return np.stack([p[0] for p in parts]), GemmStats(sum(p[1].overflows for p in parts),
                                                      sum(p[1].underflows for p in parts),
                                                      sum(p[1].nonfinite_outputs for p in parts), path)


def _group_operand(x: _Operand, i: int) -> _Operand:
    """Group ``i`` of a grouped operand, with the bounds of all groups."""
    return replace(x, array=x.array[i])


def _ieee_groups(a: _Operand, b: _Operand, acc: Accumulator, path: str) -> tuple[np.ndarray, GemmStats]:
    """The grouped GEMMs on `gemm_fast_ieee_groups`: one plan and one kernel launch for all
    groups, then each group's events as `_run` counts them."""
    g, m, _ = a.array.shape
    n = b.array.shape[2]
    plan = _ieee_plan(a, b, acc, path, m, n)
    lost = np.zeros((g, n if plan.transposed else m), np.int64)
    if plan.transposed:
        lane_t = np.empty((g, n, m), plan.dt)
        K.gemm_fast_ieee_groups(np.ascontiguousarray(b.array.transpose(0, 2, 1)),
                                np.ascontiguousarray(a.array.transpose(0, 2, 1), dtype=plan.dt), lane_t, acc.group,
                                plan.chunk, plan.check, lost, plan.mode, plan.lane_p, plan.exact_groups)
        lane_out = lane_t.transpose(0, 2, 1)
    else:
        lane_out = np.empty((g, m, n), plan.dt)
        K.gemm_fast_ieee_groups(a.as_left(), b.as_lane(plan.dt), lane_out, acc.group, plan.chunk, plan.check, lost,
                                plan.mode, plan.lane_p, plan.exact_groups)
    out = lane_out.astype(np.float64)
    if np.isfinite(lane_out).all():  # no group has a row to recount: the lanes' underflows are all
        return out, GemmStats(0, int(lost.sum()), 0, path)
    over = under = nonfinite = 0
    for i in range(g):
        o, u, nf = _ieee_events(_group_operand(a, i), _group_operand(b, i), acc, lane_out[i], lost[i],
                                plan.transposed, out[i])
        over, under = over + o, under + u
        nonfinite += int(np.count_nonzero(~np.isfinite(out[i]))) if nf is None else nf
    return out, GemmStats(over, under, nonfinite, path)


def gemm(a, b, accumulator: Accumulator) -> np.ndarray:
    """Bit-exact GEMM of exact operand values with an accumulator model (design.md section 3).

    Products are exact; they are summed exactly in groups of ``accumulator.group`` k-indices,
    each group sum is rounded once into ``accumulator.format``, group sums are accumulated within
    chunks of ``accumulator.chunk`` k-indices and chunk sums are accumulated in the same format,
    all in increasing k, each add correctly rounded. ``exact`` is the mathematical sum (rounded
    once to float64); ``int32`` takes integer operands and raises on overflow; fp16 overflow
    goes to +-inf and is counted (`gemm_with_stats`). Scales (step sizes, 1/GradScale) are
    applied by the caller after the GEMM. Results do not depend on the Numba thread count.

    Parameters
    ----------
    a : array_like, shape (M, K)
        Exact operand values: INT4 codes, FP4 values on their phase's grid, FP8/FP16/FP32 values.
    b : array_like, shape (K, N)
    accumulator : Accumulator

    Returns
    -------
    ndarray of float64, shape (M, N)

    Raises
    ------
    NumericsError
        Shapes that do not match, K = 0, NaN/inf operands, values not exact in fp32, non-integer
        operands with ``int32``, int32 overflow, an unresolved ``chunk="array"``.
    """
    return gemm_with_stats(a, b, accumulator)[0]


# ---------------------------------------------------------------------------------------------
# block-scaled GEMM
# ---------------------------------------------------------------------------------------------
def _k_scales(q: QTensor, side: str) -> tuple[int, np.ndarray]:
    """(block, scales per (row, K block) of a or (K block, column) of b) of a block-scaled GEMM
    operand, 2-D blocks expanded along the dimension that is not K."""
    if not isinstance(q, QTensor) or np.ndim(q.values) != 2:
        raise NumericsError(f"operand {side} of a block-scaled GEMM must be a 2-D QTensor, got "
                            f"{type(q).__name__} of shape {np.shape(getattr(q, 'values', q))}")
    s = q.scaling
    rows, cols = q.values.shape
    if s.kind != "tensor" and q.scales.shape != s.shape(q.values.shape):
        raise NumericsError(f"operand {side}: scales of shape {q.scales.shape} do not match values of shape "
                            f"{q.values.shape} in blocks of {s.block} (expected {s.shape(q.values.shape)})")
    k_axis = 1 if side == "a" else 0
    if s.kind == "block" and s.axis % 2 == k_axis:
        return s.block, np.asarray(q.scales, np.float64)
    if s.kind == "block2d":
        other = 0 if side == "a" else 1
        full = np.repeat(np.asarray(q.scales, np.float64), s.block, axis=other)
        return s.block, np.take(full, np.arange((rows, cols)[other]), axis=other)
    raise NumericsError(f"operand {side} is {s.kind}-scaled{'' if s.kind == 'tensor' else f' along axis {s.axis}'}; a "
                        f"block-scaled GEMM needs both operands in blocks along K (a: axis -1, b: axis -2, or 2-D)")


def blocks_along_k(a: QTensor, b: QTensor) -> bool:
    """Whether ``a`` (M, K) and ``b`` (K, N) are both block-scaled along K with the same block
    (2-D blocks count), so that `gemm_block_with_stats` computes their product."""
    try:
        return _k_scales(a, "a")[0] == _k_scales(b, "b")[0]
    except NumericsError:
        return False


def _width_bits(x: np.ndarray) -> int:
    """The widest significand (bits) among the values of ``x`` (0 when all are zero)."""
    flat = np.ascontiguousarray(x, np.float64).ravel()
    return int(K.scan_operand(flat)[4]) if flat.size else 0


def _elements(q: QTensor, name: str) -> _Operand:
    """A block-scaled operand's elements: for values a quantizer guarantees to be of the element
    format (``q.in_format``), the format's bounds (every value a multiple of its smallest quantum
    2^(emin - mantissa bits), or an integer; |value| <= its largest; at most its precision in
    significant bits), which are never tighter than a scan's, so the plan stays exact; else a
    scan of the values."""
    fmt = q.format
    values = np.asarray(q.values)
    if q.in_format and values.dtype.kind == "f":
        if isinstance(fmt, FloatFormat):
            low = fmt.emin - fmt.mantissa_bits
            return _Operand(values, low >= 0, low, float(fmt.max_value), False, fmt.precision)
        if isinstance(fmt, IntFormat):
            high = float(max(abs(fmt.min_value), fmt.max_value))
            return _Operand(values, True, 0, high, False, int(high).bit_length())
    return _scan(values, name)


@dataclass(frozen=True)
class _BlockPlan:
    """What `_check_block_gemm` found: the block, the scales per K block, the operands, the lane
    type in which block sums are exact, and whether every scaled block sum is a binary32 value."""

    block: int
    sa: np.ndarray
    sb: np.ndarray
    a: _Operand
    b: _Operand
    lane: np.dtype
    terms_fp32: bool


def _check_block_gemm(a: QTensor, b: QTensor, acc: Accumulator) -> _BlockPlan:
    if not isinstance(acc, Accumulator):
        raise NumericsError(f"accumulator must be an Accumulator, got {type(acc).__name__}")
    block, sa = _k_scales(a, "a")
    block_b, sb = _k_scales(b, "b")
    if a.values.shape[1] != b.values.shape[0]:
        raise NumericsError(f"a and b must have matching K, got {a.values.shape} and {b.values.shape}")
    if block != block_b:
        raise NumericsError(f"the operands' K blocks differ ({block} and {block_b}); a block-scaled GEMM pairs blocks")
    if not isinstance(acc.value_format, FloatFormat) or acc.chunk is not None or acc.group != block:
        raise NumericsError(f"a block-scaled GEMM sums each block of {block} products exactly and accumulates the "
                            f"scaled block sums in a float format: its accumulator must be FORMAT/g{block} without "
                            f"chunks, got {acc.name}")
    ao, bo = _elements(a, "a"), _elements(b, "b")
    low = ao.low + bo.low
    bound = block * ao.high * bo.high  # |every partial block sum|
    if bound < 2.0 ** (low + 24) and low >= -149:
        lane = np.dtype(np.float32)
    elif bound < 2.0 ** (low + 53) and low >= -1074:
        lane = np.dtype(np.float64)
    else:
        raise NumericsError(f"block sums of these elements (|sum| <= {bound:g}, quantum 2^{low}) are not exact in "
                            f"float64; the block-scaled GEMM takes narrow elements")
    psum_bits = (math.frexp(bound)[1] - low) if bound else 0
    scan_a, scan_b = _scan(sa, "a's scales"), _scan(sb, "b's scales")
    bits = psum_bits + scan_a.width + scan_b.width
    if bits > 53:
        raise NumericsError(f"a block sum ({psum_bits} bits) times the two block scales ({scan_a.width} and "
                            f"{scan_b.width} bits) is not exact in float64; use narrower scale formats")
    # every partial product psum * sa and psum * sa * sb a binary32 value: few enough bits, its
    # lowest bit at or above binary32's 2^-149 and its magnitude below 2^127
    lows = low + min(0, scan_a.low) + min(0, scan_b.low)
    top = bound * max(1.0, scan_a.high) * max(1.0, scan_b.high)
    terms_fp32 = bool(lane == np.float32 and bits <= 24 and lows >= -149 and top < 2.0**127
                      and acc.value_format.ieee_dtype == np.dtype(np.float32))
    return _BlockPlan(block, sa, sb, ao, bo, lane, terms_fp32)


def gemm_block_with_stats(a: QTensor, b: QTensor, accumulator: Accumulator) -> tuple[np.ndarray, GemmStats]:
    """The block-scaled GEMM as block-scaled hardware computes it, bit for bit.

    For each output, in increasing K block j: the block's products of elements are exact and
    summed exactly, the sum is multiplied by the two block scales a.scales[m, j] * b.scales[j, n]
    exactly, and the result is added to the accumulator with one rounding per add
    (``accumulator.format``, IEEE round to nearest even for fp32; overflow to +-inf, counted).
    Two-level formats' tensor scales are then applied once, in binary32: out =
    fp32(fp32(a.tensor_scale * b.tensor_scale) * acc) (the GEMM epilogue's alpha, as cuBLAS
    scales D = alpha A B; an alpha in binary32's subnormal range keeps fewer bits, as it would
    there). The accumulator therefore sums values in units of the tensor scales, up to
    6 * 448 = 2688 per product for NVFP4: an FP16 accumulator overflows on them (counted), so
    two-level formats need ``fp32``. A last partial block (K not a multiple of the block) is
    summed the same way. Results do not depend on the thread count.

    Parameters
    ----------
    a : QTensor, values (M, K), blocks along K (axis -1) or 2-D blocks
    b : QTensor, values (K, N), blocks along K (axis -2) or 2-D blocks, the same block size
    accumulator : Accumulator, a float format with group equal to the block and no chunk
        (e.g. ``fp32/g16`` for NVFP4)

    Returns
    -------
    out : ndarray of float64 (M, N), values of binary32 (fp32 accumulator)
    stats : GemmStats, path ``block_fp32`` (every scaled block sum is a binary32 value and the
        accumulator is binary32: float32 adds, which round exactly as the model) or ``block``
        (each add exactly, rounded to odd in float64 and then to the format)

    Raises
    ------
    NumericsError
        Operands not blocked along K alike, a wrong accumulator, element or scale widths whose
        block sums or scaled sums are not exact in float64, non-finite values, tensor scales
        whose product overflows binary32.
    """
    plan = _check_block_gemm(a, b, accumulator)
    block = plan.block
    m = plan.a.array.shape[0]
    n = plan.b.array.shape[1]
    av, bv = plan.a.as_lane(plan.lane), plan.b.as_lane(plan.lane)
    with np.errstate(over="ignore"):
        alpha = np.float32(np.float32(a.tensor_scale) * np.float32(b.tensor_scale))
    if not np.isfinite(alpha):
        raise NumericsError(f"the product of the operands' tensor scales ({a.tensor_scale:g} x {b.tensor_scale:g}) "
                            "overflows binary32: the GEMM epilogue's alpha cannot hold it")
    out32 = None
    if plan.terms_fp32:
        out32 = np.empty((m, n), np.float32)
        K.gemm_block_fp32(av, bv, block, plan.sa.astype(np.float32), plan.sb.astype(np.float32), out32)
        overflows, underflows = int(np.count_nonzero(~np.isfinite(out32))), 0  # an overflow stays inf (or NaN)
        nonfinite = overflows
        path = "block_fp32"
    else:
        out = np.empty((m, n), np.float64)
        counts = np.zeros((m, 2), np.int64)
        fmt = accumulator.value_format
        K.gemm_block(av, bv, block, np.ascontiguousarray(plan.sa), np.ascontiguousarray(plan.sb), out,
                     fmt.ieee_dtype == np.dtype(np.float32), *_float_params(fmt), counts)
        overflows, underflows = int(counts[:, 0].sum()), int(counts[:, 1].sum())
        nonfinite = None
        path = "block"
    if alpha != 1:  # the tensor scales, once, in binary32
        with np.errstate(over="ignore", invalid="ignore"):
            out32 = (out.astype(np.float32) if out32 is None else out32) * alpha
        nonfinite = None
    if out32 is not None:
        out = out32.astype(np.float64)
    if nonfinite is None:
        nonfinite = int(np.count_nonzero(~np.isfinite(out)))
    return out, GemmStats(overflows, underflows, nonfinite, path)


def gemm_block(a: QTensor, b: QTensor, accumulator: Accumulator) -> np.ndarray:
    """`gemm_block_with_stats` without the statistics: the (M, N) float64 result."""
    return gemm_block_with_stats(a, b, accumulator)[0]

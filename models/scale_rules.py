"""Block scale rules: from each block's largest magnitude to its stored scale and the factor its
elements are scaled by before rounding (`fourbit.traces.block_formats` states each rule and its
source).

Every function takes the blocks' ``amax`` (float32 array, any shape, >= 0 and finite) and returns
``(scales, encode, tensor_scale)``: the decoded block scales (float64 values of the scale format,
0 for a block whose elements are all zero), the factor each block's elements are multiplied by
(float64; for power-of-two scales exactly 1/scale; for ``two_level`` the binary32 factor the
hardware multiplies by; for ``amax`` the divisor, see `encode_divides`) and the per-tensor decode scale (1.0 unless the
rule has two levels).
"""

from __future__ import annotations

import math

import numpy as np

from fourbit.models import _kernels as K
from fourbit.traces.block_formats import BlockFormat
from fourbit.traces.errors import FormatError
from fourbit.traces.formats import ExponentFormat, FloatFormat, Format

__all__ = ["block_scales", "encode_divides", "pow2_range"]

_FLT_MAX = np.float32(np.finfo(np.float32).max)


def pow2_range(fmt: Format) -> tuple[int, int]:
    """(smallest, largest) binary exponent of the powers of two ``fmt`` holds: E8M0 (-127, 127);
    a float format from its smallest subnormal (or normal) to its largest power of two."""
    if isinstance(fmt, ExponentFormat):
        return fmt.min_exponent, fmt.max_exponent
    if isinstance(fmt, FloatFormat):
        return math.frexp(fmt.min_positive)[1] - 1, math.frexp(fmt.max_value)[1] - 1
    raise FormatError(f"format {fmt.name!r} holds no powers of two for block scales")


def _exponent(a: np.ndarray) -> np.ndarray:
    """floor(log2 a) of positive finite float64 values, exactly (frexp: no ``log``)."""
    return np.frexp(a)[1].astype(np.int64) - 1


def _pow2(fmt: BlockFormat, amax: np.ndarray, exps: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    lo, hi = pow2_range(fmt.scale_fmt)
    exps = np.clip(exps, lo, hi)
    live = amax > 0
    scales = np.where(live, np.ldexp(1.0, exps), 0.0)
    encode = np.where(live, np.ldexp(1.0, -exps), 0.0)
    return scales, encode, 1.0


def _floor(fmt: BlockFormat, amax: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """X = 2^(floor(log2 amax) - floor(log2 M)) (OCP MX v1.0, section 6.3)."""
    a = np.where(amax > 0, amax.astype(np.float64), 1.0)
    emax_elem = math.frexp(fmt.element_max)[1] - 1
    return _pow2(fmt, amax, _exponent(a) - emax_elem)


def _ceil(fmt: BlockFormat, amax: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """X = the smallest power of two with amax <= M * X, by exact comparisons."""
    a = np.where(amax > 0, amax.astype(np.float64), 1.0)
    m = fmt.element_max
    e = _exponent(a) - (math.frexp(m)[1] - 1)  # within one of the answer
    e = np.where(np.ldexp(m, e) < a, e + 1, e)
    e = np.where(np.ldexp(m, e - 1) >= a, e - 1, e)
    return _pow2(fmt, amax, e)


def _round_to(x: np.ndarray, fmt: FloatFormat) -> np.ndarray:
    """Round float64 ``x`` to nearest on ``fmt`` (its ties), saturating at its largest value."""
    flat = np.ascontiguousarray(x, dtype=np.float64).ravel()
    out = np.empty_like(flat)
    frac, emin = fmt.mantissa_bits, fmt.emin
    K.round_float_array(flat, out, frac, emin, fmt.subnormals, fmt.ties == "away", fmt.max_value,
                        fmt.min_normal, True, np.zeros(4, np.int64))
    return out.reshape(np.shape(x))


def _two_level(fmt: BlockFormat, amax: np.ndarray, amax_tensor: np.float32) -> tuple[np.ndarray, np.ndarray, float]:
    """NVFP4's two-level scale (arXiv 2509.25149; TransformerEngine's reference), in binary32."""
    scale_fmt = fmt.scale_fmt
    m = np.float32(fmt.element_max)
    top = np.float32(scale_fmt.max_value) * m
    with np.errstate(divide="ignore", over="ignore"):
        s_enc = np.float32(1.0) if amax_tensor == 0 else min(np.float32(top / amax_tensor), _FLT_MAX)
        s_dec = np.float32(np.float32(1.0) / s_enc)
    flat = np.ascontiguousarray(amax, np.float32).ravel()
    scales, encode = np.empty(flat.size), np.empty(flat.size)
    frac, emin = scale_fmt.mantissa_bits, scale_fmt.emin
    K.two_level_scales(flat, m, s_enc, s_dec, frac, emin, scale_fmt.subnormals, scale_fmt.ties == "away",
                       scale_fmt.max_value, scale_fmt.min_normal, scales, encode)
    return scales.reshape(amax.shape), encode.reshape(amax.shape), float(s_dec)


def _amax(fmt: BlockFormat, amax: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """X = scale_format(amax / M), rounded to nearest; elements x / X in binary32."""
    with np.errstate(over="ignore"):
        raw = (amax / np.float32(fmt.element_max)).astype(np.float32)
    scales = _round_to(raw.astype(np.float64), fmt.scale_fmt)
    return scales, scales, 1.0


def block_scales(fmt: BlockFormat, amax: np.ndarray, amax_tensor: np.float32) -> tuple[np.ndarray, np.ndarray, float]:
    """(scales, encode, tensor_scale) of blocks with largest magnitudes ``amax`` under ``fmt``'s
    rule; ``amax_tensor`` is the whole tensor's (used by ``two_level`` only).

    ``encode`` multiplies the elements for ``floor``, ``ceil`` (exactly 1/X, in float64) and
    ``two_level`` (the binary32 factor e); for ``amax`` it is the divisor X (elements are
    x / X in binary32). `encode_divides` tells which."""
    amax = np.asarray(amax, np.float32)
    if fmt.scale_rule == "floor":
        return _floor(fmt, amax)
    if fmt.scale_rule == "ceil":
        return _ceil(fmt, amax)
    if fmt.scale_rule == "two_level":
        return _two_level(fmt, amax, np.float32(amax_tensor))
    return _amax(fmt, amax)


def encode_divides(fmt: BlockFormat) -> bool:
    """Whether `block_scales`'s ``encode`` divides the elements (``amax``) instead of multiplying."""
    return fmt.scale_rule == "amax"


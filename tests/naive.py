"""Plain, obviously correct twins of the Numba kernels (exact rational arithmetic where needed).

Each function computes the same thing as a kernel in `fourbit.models._kernels` the slow way: Python
integers and `fractions.Fraction` for exact sums, threshold tables with ``searchsorted`` for the
log formats. Property tests compare kernels and twins bit for bit.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from fourbit.traces.formats import Accumulator, FloatFormat, LogFormat, get_format


# ---------------------------------------------------------------------------------------------
# rounding to a float format, from an exact rational
# ---------------------------------------------------------------------------------------------
def round_fraction(x: Fraction, fmt: FloatFormat) -> float:
    """Round the exact value ``x`` to ``fmt`` (ties per the format; overflow -> inf; formats
    without subnormals flush |x| < their smallest value to zero). Returns a float (signed zero
    is not tracked: the caller compares magnitudes of zeros as equal)."""
    if x == 0:
        return 0.0
    sign = -1 if x < 0 else 1
    a = abs(x)
    if not fmt.subnormals and a < Fraction(fmt.min_normal):
        return sign * 0.0
    # exponent of the leading bit
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    q = max(e, fmt.emin) - fmt.mantissa_bits
    scaled = a / Fraction(2) ** q
    n = math.floor(scaled)
    rem = scaled - n
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and (fmt.ties == "away" or n % 2 == 1)):
        n += 1
    r = Fraction(n) * Fraction(2) ** q
    if r > Fraction(fmt.max_value):
        return sign * math.inf
    return sign * float(r)


def round_float(x: float, fmt_name: str, saturate: bool = False) -> float:
    fmt = get_format(fmt_name)
    if math.isnan(x):
        return x
    if math.isinf(x):
        return math.copysign(fmt.max_value, x) if saturate else x
    r = round_fraction(Fraction(x), fmt)
    if saturate and math.isinf(r):
        r = math.copysign(fmt.max_value, r)
    return math.copysign(abs(r), x) if r == 0 else r


# ---------------------------------------------------------------------------------------------
# stochastic rounding: SplitMix64 counters in Python integers, the choice decided on Fractions
# ---------------------------------------------------------------------------------------------
_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def mix64(z: int) -> int:
    """SplitMix64's finaliser on a Python integer (mod 2^64)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def counter_bits(seed: int, step: int, tensor_id: int, index: int) -> int:
    """64 random bits keyed by (seed, step, tensor id, element index)."""
    z = mix64((seed * _GOLDEN + 1) & _M64)
    for k, v in ((2, step), (3, tensor_id), (4, index)):
        z = mix64(z ^ ((v * _GOLDEN + k) & _M64))
    return z


def round_stochastic(x: float, rbits: int, fmt_name: str, saturate: bool) -> float:
    """Between the neighbours lo <= |x| < hi of ``fmt``, hi when rbits < floor(2^64 (|x| - lo) /
    (hi - lo)), else lo; formats without subnormals flush below their smallest normal."""
    fmt = get_format(fmt_name)
    if math.isinf(x):
        return math.copysign(fmt.max_value, x) if saturate else x
    a = abs(Fraction(x))
    if a == 0 or (not fmt.subnormals and a < Fraction(fmt.min_normal)):
        return math.copysign(0.0, x)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    unit = Fraction(2) ** (max(e, fmt.emin) - fmt.mantissa_bits)
    n = math.floor(a / unit)
    if rbits < math.floor((a / unit - n) * 2**64):
        n += 1
    r = n * unit
    if r > Fraction(fmt.max_value):
        return math.copysign(fmt.max_value if saturate else math.inf, x)
    return math.copysign(float(r), x)


# ---------------------------------------------------------------------------------------------
# quantizers
# ---------------------------------------------------------------------------------------------
def quantize_log(x: np.ndarray, fmt: LogFormat, tie: str = "up") -> np.ndarray:
    """Log-format rounding with the threshold table and searchsorted."""
    x = np.asarray(x, dtype=np.float64)
    t = fmt.thresholds()
    code = np.searchsorted(t, np.abs(x), side="right" if tie == "up" else "left")
    mags = np.concatenate([[0.0], fmt.levels()])[code]
    return np.where(np.signbit(x), -mags, mags)


def quantize_uniform(x: np.ndarray, step: float, lo: int, hi: int) -> np.ndarray:
    return np.rint(np.clip(np.asarray(x, np.float64) / step, lo, hi))


def pact_codes(x: np.ndarray, alpha: float) -> np.ndarray:
    """PACT literally: clip to [0, alpha], divide by alpha/15, round half to even."""
    return np.rint(np.clip(np.asarray(x, np.float64), 0, alpha) / (alpha / 15))


# ---------------------------------------------------------------------------------------------
# operand scans
# ---------------------------------------------------------------------------------------------
def _significand(v: float) -> tuple[int, int]:
    """(integer significand, exponent) of a finite non-zero float64: |v| = sig * 2^exp, sig odd."""
    mant, e = math.frexp(abs(v))
    sig, exp = int(mant * 2**53), e - 53
    while sig % 2 == 0:
        sig //= 2
        exp += 1
    return sig, exp


def scan_operand(x: np.ndarray) -> tuple[int, int, float]:
    """(bad, low, high) of `_kernels.scan_operand`: values float32 does not hold exactly (NaN
    included), the smallest exponent of a lowest set bit (100000 without a non-zero value), max |x|
    (NaN when x holds NaN)."""
    x = np.asarray(x, np.float64).ravel()
    with np.errstate(over="ignore"):
        bad = sum(1 for v in x if math.isnan(v) or float(np.float32(v)) != v)
    high = math.nan if np.isnan(x).any() else float(np.max(np.abs(x), initial=0.0))
    lows = [_significand(v)[1] for v in x if math.isfinite(v) and v != 0]
    return bad, min(lows, default=100000), high


def significand_stats(x: np.ndarray) -> tuple[int, int]:
    """(non-zero finite values that are not +-2^e, widest significand in bits) of x: the rest of
    `_kernels.scan_operand`."""
    sigs = [_significand(v)[0] for v in np.asarray(x, np.float64).ravel() if math.isfinite(v) and v != 0]
    return sum(1 for s in sigs if s != 1), max((s.bit_length() for s in sigs), default=0)


# ---------------------------------------------------------------------------------------------
# GEMM with an accumulator model
# ---------------------------------------------------------------------------------------------
def _add(a: float | Fraction, b: float | Fraction, fmt: FloatFormat) -> float:
    """One accumulator add (inf semantics outside the rationals)."""
    if isinstance(a, float) and not math.isfinite(a) or isinstance(b, float) and not math.isfinite(b):
        return float(a) + float(b)
    return round_fraction(Fraction(a) + Fraction(b), fmt)


def gemm(a: np.ndarray, b: np.ndarray, acc: Accumulator) -> np.ndarray:
    """The accumulator model, literally, with exact products and group sums."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    m, k = a.shape
    n = b.shape[1]
    out = np.empty((m, n))
    chunk = k if acc.chunk is None else int(acc.chunk)
    for i in range(m):
        for j in range(n):
            prods = [Fraction(a[i, kk]) * Fraction(b[kk, j]) for kk in range(k)]
            if acc.format in ("exact", "int32"):
                total = sum(prods, Fraction(0))
                if acc.format == "int32":
                    partial = Fraction(0)
                    for p in prods:
                        partial += p
                        assert -(2**31) <= partial <= 2**31 - 1, "int32 overflow"
                out[i, j] = float(total)
                continue
            fmt = acc.value_format
            tot = 0.0
            for c0 in range(0, k, chunk):
                cs = 0.0
                for g0 in range(c0, min(c0 + chunk, k), acc.group):
                    g = sum(prods[g0:min(g0 + acc.group, c0 + chunk, k)], Fraction(0))
                    cs = _add(cs, round_fraction(g, fmt), fmt)
                tot = _add(tot, cs, fmt)
            out[i, j] = tot
    return out


# ---------------------------------------------------------------------------------------------
# stochastic rounding onto integer and log grids
# ---------------------------------------------------------------------------------------------
def _goes_up(rbits: int, p: Fraction) -> bool:
    """A stochastic rounding goes up when the random bits are below floor(2^64 p)."""
    return rbits < math.floor(p * 2**64)


def quantize_uniform_stochastic(x: np.ndarray, step: float, lo: int, hi: int, key: tuple[int, int, int]) -> np.ndarray:
    """sign(q) (floor(|q|) + [up]) of q = clip(x / step) in float64, up with probability
    |q| - floor(|q|)."""
    out = []
    for i, v in enumerate(np.asarray(x, np.float64).ravel()):
        q = min(max(v / step, lo), hi)
        f = math.floor(abs(q))
        out.append(math.copysign(f + _goes_up(counter_bits(*key, i), Fraction(abs(q)) - f), q))
    return np.array(out, np.float64).reshape(np.shape(x))


def quantize_log_stochastic(x: np.ndarray, fmt: LogFormat, key: tuple[int, int, int]) -> np.ndarray:
    """Stochastic rounding between neighbouring levels, found by search in the level table,
    with the probabilities of the kernel as exact fractions."""
    levels = [Fraction(0)] + [Fraction(v) for v in fmt.levels()]
    out = []
    for i, v in enumerate(np.asarray(x, np.float64).ravel()):
        a = abs(Fraction(v)) if math.isfinite(v) else levels[-1]
        c = max(j for j, lv in enumerate(levels) if lv <= a)
        if c < len(levels) - 1 and a > levels[c]:
            if _goes_up(counter_bits(*key, i), (a - levels[c]) / (levels[c + 1] - levels[c])):
                c += 1
        out.append(math.copysign(float(levels[c]), v))
    return np.array(out, np.float64).reshape(np.shape(x))


# ---------------------------------------------------------------------------------------------
# block formats: scale rules, quantization, Hadamard transform, block-scaled GEMM
# ---------------------------------------------------------------------------------------------
def block_scale(fmt, amax: float, amax_tensor: float) -> tuple[float, float]:
    """(decoded scale, encode factor) of one block by the rule's definition: powers of two found
    by search on exact rationals, the two-level and amax rules in numpy binary32 scalars."""
    m = Fraction(fmt.element_max)
    scale_fmt = fmt.scale_fmt
    if fmt.scale_rule in ("floor", "ceil"):
        if amax == 0:
            return 0.0, 0.0
        lo, hi = (scale_fmt.min_exponent, scale_fmt.max_exponent) if hasattr(scale_fmt, "min_exponent") else (
            math.frexp(scale_fmt.min_positive)[1] - 1, math.frexp(scale_fmt.max_value)[1] - 1)
        a = Fraction(amax)
        if fmt.scale_rule == "floor":
            e = max(k for k in range(-1200, 1200) if Fraction(2) ** k <= a) - (math.frexp(float(m))[1] - 1)
        else:
            e = min(k for k in range(-1200, 1200) if m * Fraction(2) ** k >= a)
        e = min(max(e, lo), hi)
        return 2.0**e, 2.0**-e
    f32 = np.float32
    if fmt.scale_rule == "two_level":
        top = f32(scale_fmt.max_value) * f32(fmt.element_max)
        s_enc = f32(1.0) if amax_tensor == 0 else min(f32(top / f32(amax_tensor)), f32(np.finfo(np.float32).max))
        s_dec = f32(1.0) / s_enc
        d = f32(min(round_fraction(Fraction(float(f32(f32(amax) / f32(fmt.element_max)) * s_enc)), scale_fmt),
                    scale_fmt.max_value))
        if d == 0:
            return 0.0, 0.0
        return float(d), float(min(f32(1.0) / (d * s_dec), f32(np.finfo(np.float32).max)))
    x = min(round_fraction(Fraction(float(f32(f32(amax) / f32(fmt.element_max)))), scale_fmt), scale_fmt.max_value)
    return x, x


def _block_indices(shape: tuple[int, ...], fmt, axis: int) -> list[tuple[tuple[int, ...], np.ndarray]]:
    """Each block of an array of ``shape`` as (its index in the scales array, the flat indices of
    its elements): 1-D blocks of ``fmt.block`` along ``axis``, or 2-D tiles of the last two axes."""
    index = np.arange(math.prod(shape)).reshape(shape)
    bs = fmt.block
    out = []
    if fmt.block_2d:
        for lead in np.ndindex(*shape[:-2]):
            for i in range(-(-shape[-2] // bs)):
                for j in range(-(-shape[-1] // bs)):
                    out.append(((*lead, i, j), index[lead][i * bs:(i + 1) * bs, j * bs:(j + 1) * bs].ravel()))
        return out
    moved = np.moveaxis(index, axis, -1)
    ax = axis % len(shape)
    for lead in np.ndindex(*moved.shape[:-1]):
        for j in range(-(-shape[ax] // bs)):
            out.append(((*lead[:ax], j, *lead[ax:]), moved[lead][j * bs:(j + 1) * bs]))
    return out


def _round_element(q: Fraction, neg: bool, elem, top: Fraction, rbits: int | None) -> float:
    """A scaled element onto the element format (float or integer), saturating at +-top; nearest
    (ties per the format; integers to even) or stochastic with the random bits ``rbits``; ``neg``
    the sign of the scaled binary32 value, which a zero keeps (but a stochastic integer zero is +0)."""
    c = max(min(q, top), -top)
    if isinstance(elem, FloatFormat):
        r = round_fraction(c, elem) if rbits is None else round_stochastic(float(c), rbits, elem.name, True)
        return math.copysign(min(abs(r), float(top)), -1.0 if neg else 1.0)
    if rbits is None:
        n = math.floor(c)
        rem = c - n
        n += rem > Fraction(1, 2) or (rem == Fraction(1, 2) and n % 2 == 1)
        return math.copysign(abs(n), -1.0 if neg else 1.0)
    f = math.floor(abs(c))
    f += _goes_up(rbits, abs(c) - f)
    return -float(f) if c < 0 else float(f)


def quantize_block(x: np.ndarray, fmt, axis: int = -1, rounding: str = "nearest",
                   key: tuple[int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(elements, decoded scales) of ``x`` (any shape; 1-D blocks along ``axis`` or 2-D tiles of
    the last two axes), one block at a time by the rule's definition (`block_scale`) and exact
    rationals; stochastic bits of an element keyed by its flat index in ``x``."""
    x = np.asarray(x, np.float64)
    fmax = float(np.finfo(np.float32).max)
    x32 = np.clip(x, -fmax, fmax).astype(np.float32).ravel()
    amax_t = float(np.max(np.abs(x32)))
    elems = np.zeros(x.size)
    blocks = _block_indices(x.shape, fmt, axis)
    scales = np.zeros(tuple(max(i) + 1 for i in zip(*(b[0] for b in blocks), strict=True)))
    elem, top = fmt.element_format, Fraction(fmt.element_max)
    for where, idx in blocks:
        scale, enc = block_scale(fmt, float(np.max(np.abs(x32[idx]))), amax_t)
        scales[where] = scale
        if scale == 0:
            continue
        for i in idx:
            v = x32[i]
            if fmt.pow2:
                q = Fraction(float(v)) * Fraction(enc)
            elif fmt.scale_rule == "amax":
                q = Fraction(float(np.float32(v / np.float32(enc))))
            else:
                with np.errstate(over="ignore"):
                    p = np.float32(v * np.float32(enc))
                q = Fraction(float(p)) if np.isfinite(p) else Fraction(math.copysign(2 * fmt.element_max, p))
            elems[i] = _round_element(q, bool(np.signbit(v)), elem, top, None if rounding == "nearest" else counter_bits(*key, int(i)))
    return elems.reshape(x.shape), scales


def hadamard_rows(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Each block of len(h) columns times h, every output summed exactly and rounded once to
    binary32."""
    x = np.asarray(x, np.float32)
    n = h.shape[0]
    fp32 = get_format("fp32")
    out = np.empty(x.shape, np.float32)
    for r in range(x.shape[0]):
        for j0 in range(0, x.shape[1], n):
            for j in range(n):
                s = sum((Fraction(float(x[r, j0 + i])) * int(h[i, j]) for i in range(n)), Fraction(0))
                out[r, j0 + j] = round_fraction(s, fp32)
    return out


def gemm_block(a_values: np.ndarray, sa: np.ndarray, b_values: np.ndarray, sb: np.ndarray, block: int,
               acc_format: str, alpha: float = 1.0) -> np.ndarray:
    """The block-scaled GEMM literally: per output, per K block j in order, the exact sum of
    products times sa[m, j] * sb[j, n], added with one rounding; then times alpha in binary32."""
    fmt = get_format(acc_format)
    m, k = a_values.shape
    n = b_values.shape[1]
    out = np.empty((m, n))
    for i in range(m):
        for c in range(n):
            acc: float | Fraction = 0.0
            for j, k0 in enumerate(range(0, k, block)):
                s = sum((Fraction(float(a_values[i, kk])) * Fraction(float(b_values[kk, c]))
                         for kk in range(k0, min(k0 + block, k))), Fraction(0))
                acc = _add(acc, s * Fraction(float(sa[i, j])) * Fraction(float(sb[j, c])), fmt)
            out[i, c] = acc
    if alpha != 1.0:
        out = (out.astype(np.float32) * np.float32(alpha)).astype(np.float64)
    return out

"""Private Numba kernels: arrays and scalars in, preallocated arrays out.

The public wrappers in `fourbit.models.numerics` validate inputs, choose a kernel and wrap results; each
kernel here has a plain numpy/Python twin in ``tests/naive.py`` and property tests show them
identical bit for bit (style.md rules 3 and 4). Kernels are compiled with ``cache=True``; with
``NUMBA_DISABLE_JIT=1`` they run as plain Python (one CI leg does that, so that kernel bodies are
checked against their twins too).

Rounding of a float64 value ``x`` to a binary format with ``frac_bits`` fraction bits is done
exactly on the IEEE bit pattern of ``x`` (integer arithmetic, no ``log``): the quantum is
2^(max(E, emin) - frac_bits) where E is the binary exponent of |x|; ties go to even or away from
zero; formats without subnormals flush |x| < their smallest value to a signed zero; results above
the largest finite value overflow to +-inf (or saturate, if asked).
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
from numba import njit, prange

_DISABLE_JIT = bool(numba.config.DISABLE_JIT)

_SMALL_WORK = 1 << 15  # array elements (all arrays of a call) below which a kernel runs on one thread


def _one_thread_when_small(kernel):
    """``kernel`` (parallel) run on the calling thread alone when its arrays hold fewer than
    `_SMALL_WORK` elements in all: waking Numba's worker threads for a parallel region costs more
    than a small kernel takes (measured on this 2-core VM, 2026-12-07: a 150-element
    `scan_operand` 0.27 ms with 2 threads, 0.015 ms with one). Every kernel's results are
    independent of the thread count (tested), so only the time changes. Unchanged without the
    JIT."""
    if _DISABLE_JIT:
        return kernel

    @functools.wraps(kernel)
    def launch(*args):
        threads = numba.get_num_threads()
        if threads == 1 or sum(a.size for a in args if isinstance(a, np.ndarray)) >= _SMALL_WORK:
            return kernel(*args)
        numba.set_num_threads(1)
        try:
            return kernel(*args)
        finally:
            numba.set_num_threads(threads)

    return launch


# ---------------------------------------------------------------------------------------------
# bit casts between a float and the integer of the same width (vectorisable in LLVM)
# ---------------------------------------------------------------------------------------------
if _DISABLE_JIT:  # plain-Python twins of the intrinsics below

    def float_bits(x):
        x = np.asarray(x)
        return x.view(np.int32 if x.dtype == np.float32 else np.int64)[()]

    def bits_float(i):
        i = np.asarray(i)
        return i.view(np.float32 if i.dtype == np.int32 else np.float64)[()]

    def bits_float_as(i, like):
        if np.asarray(like).dtype == np.float32:
            return np.asarray(int(i) & 0xFFFFFFFF, np.uint32).view(np.float32)[()]
        return np.asarray(int(i) & 0xFFFFFFFFFFFFFFFF, np.uint64).view(np.float64)[()]

else:
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def float_bits(typingctx, x):
        """The IEEE bit pattern of a float32 (-> int32) or float64 (-> int64)."""
        if x == types.float32:
            sig, width = types.int32(x), 32
        elif x == types.float64:
            sig, width = types.int64(x), 64
        else:
            return None

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.IntType(width))

        return sig, codegen

    @intrinsic
    def bits_float(typingctx, i):
        """The float32 (from int32) or float64 (from int64) with bit pattern ``i``."""
        if i == types.int32:
            sig, fty = types.float32(i), ir.FloatType()
        elif i == types.int64:
            sig, fty = types.float64(i), ir.DoubleType()
        else:
            return None

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], fty)

        return sig, codegen

    @intrinsic
    def bits_float_as(typingctx, i, like):
        """The float of ``like``'s type whose bit pattern is the low bits of integer ``i`` (Numba
        widens small-integer arithmetic to int64; this narrows it back)."""
        if not isinstance(i, types.Integer) or like not in (types.float32, types.float64):
            return None
        width = 32 if like == types.float32 else 64
        fty = ir.FloatType() if width == 32 else ir.DoubleType()

        def codegen(context, builder, signature, args):
            val = args[0]
            if i.bitwidth > width:
                val = builder.trunc(val, ir.IntType(width))
            elif i.bitwidth < width:
                val = builder.sext(val, ir.IntType(width))
            return builder.bitcast(val, fty)

        return like(i, like), codegen


# ---------------------------------------------------------------------------------------------
# scalar rounding of a float64 to a binary float format (exact, general)
# ---------------------------------------------------------------------------------------------
_SIGN64 = np.int64(-(2**63))
_ABS64 = np.int64(2**63 - 1)
_FRAC64 = np.int64(2**52 - 1)


@njit(cache=True)
def pow2(e):
    """2.0**e as float64 for -1022 <= e <= 1023, exactly."""
    return bits_float(np.int64(e + 1023) << 52)


@njit(cache=True)
def round_float(x, frac_bits, emin, subnormals, ties_away, max_value, flush_below, saturate):
    """Round float64 ``x`` onto a binary format; returns (value, overflowed, underflowed).

    Parameters are the format's: ``frac_bits`` stored fraction bits; ``emin`` binary exponent of
    the smallest normal binade; ``subnormals`` whether values below 2^emin keep the quantum
    2^(emin - frac_bits) (else |x| < ``flush_below`` -> +-0); ``ties_away`` ties away from zero
    instead of to even; values whose rounded magnitude exceeds ``max_value`` become +-inf, or
    +-max_value when ``saturate``. NaN and +-inf pass through (inf saturates when ``saturate``).
    """
    if x != x:
        return x, False, False
    bits = float_bits(x)
    neg = bits < 0
    mag = bits & _ABS64
    if mag == 0:
        return x, False, False
    ef = (mag >> 52) & 0x7FF
    if ef == 0x7FF:  # infinity
        if saturate:
            return -max_value if neg else max_value, True, False
        return x, False, False
    if not subnormals and bits_float(mag) < flush_below:
        return (-0.0 if neg else 0.0), False, True
    if ef == 0:  # float64 subnormal: value = frac * 2^-1074
        m = mag & _FRAC64
        e_unit = -1074
        lead = e_unit + 63
        while lead > e_unit and (m >> (lead - e_unit)) == 0:
            lead -= 1
    else:
        m = (mag & _FRAC64) | (np.int64(1) << 52)
        e_unit = ef - 1075
        lead = ef - 1023
    q = max(lead, emin) - frac_bits
    s = q - e_unit
    if s <= 0:
        r = bits_float(mag)
    elif s >= 54:  # |x| < quantum / 2
        r = 0.0
    else:
        n = m >> s
        rem = m - (n << s)
        half = np.int64(1) << (s - 1)
        if rem > half or (rem == half and (ties_away or (n & 1) == 1)):
            n += 1
        r = float(n) * pow2(q)
    over = False
    if r > max_value:
        over = True
        r = max_value if saturate else np.inf
    under = r == 0.0
    return (-r if neg else r), over, under


@njit(cache=True, inline="always")
def round_nearest_even(x, frac_bits, emin, max_value, saturate):
    """`round_float` of float64 ``x`` (not NaN) for a format with subnormals and ties to even,
    without branches on the value: adding m = 2^(q + 52), with 2^q the quantum at |x| (2^(emin -
    frac_bits) below 2^emin), rounds |x| to a multiple of 2^q, to nearest even, in the float64
    add itself (the sum lies in [m, 2m), whose ulp is 2^q); subtracting m is exact. |x| >=
    2 * max_value overflows without the add (+-inf saturates when ``saturate``, else passes; NaN
    passes). Returns (value, overflowed, underflowed),
    the sign of a zero kept."""
    a = abs(x)
    e = np.int64((float_bits(a) >> 52) & 0x7FF) - 1023
    if a >= 2.0 * max_value:
        if a == np.inf and not saturate:  # an infinity passes through, as in `round_float`
            return x, False, False
        r = np.inf
    else:
        m = pow2(max(e, emin) - frac_bits + 52)
        r = (a + m) - m
    over = r > max_value
    if over:
        r = max_value if saturate else np.inf
    return np.copysign(r, x), over, r == 0.0


_ROUND_CHUNK = 1 << 14  # elements per task of `round_float_array`


@_one_thread_when_small
@njit(cache=True, parallel=True)
def round_float_array(x, out, frac_bits, emin, subnormals, ties_away, max_value, flush_below,
                      saturate, counts):
    """Elementwise `round_float` of flat ``x`` (float32 or float64) into ``out`` (by
    `round_nearest_even` where it applies); counts (4,) int64: [0] += overflows, [1] +=
    underflows (non-zero values rounded or flushed to zero), [2] += zeros of ``out``, [3] += NaNs
    of ``x`` (which pass as NaN; the caller refuses them). Chunks of `_ROUND_CHUNK` run in
    parallel; the integer counts are summed per chunk, so they do not depend on the thread count."""
    n = x.size
    chunks = (n + _ROUND_CHUNK - 1) // _ROUND_CHUNK
    part = np.zeros((chunks, 4), np.int64)
    fast = subnormals and not ties_away
    for j in prange(chunks):
        xs = x[j * _ROUND_CHUNK:min(n, (j + 1) * _ROUND_CHUNK)]  # from index 0: see `scan_operand`
        outs = out[j * _ROUND_CHUNK:min(n, (j + 1) * _ROUND_CHUNK)]
        over = 0  # a local sum: a store to part in the loop would stop it vectorising
        if fast:  # the loop without a branch on the format, so that it vectorises
            for i in range(xs.size):
                r, o, u = round_nearest_even(np.float64(xs[i]), frac_bits, emin, max_value, saturate)
                outs[i] = r
                over += o
        else:
            for i in range(xs.size):
                r, o, u = round_float(np.float64(xs[i]), frac_bits, emin, subnormals, ties_away, max_value,
                                      flush_below, saturate)
                outs[i] = r
                over += o
        part[j, 0] = over
        _zeros_and_nans(xs, outs, part[j])
    for c in range(4):
        counts[c] += part[:, c].sum()


@njit(cache=True, inline="always")
def _zero_counts(x, out):
    """(non-zero values of ``x`` whose ``out`` is zero, zeros of ``out``, NaNs of ``x``) of a
    rounding x -> out, in one branch-free pass."""
    under = 0
    zeros = 0
    nans = 0
    for i in range(x.size):
        z = out[i] == 0.0
        zeros += z
        under += z & (x[i] != 0.0)
        nans += x[i] != x[i]
    return under, zeros, nans


@njit(cache=True, inline="always")
def _zeros_and_nans(x, out, part):
    """part[1..3] += `_zero_counts` of x -> out."""
    under, zeros, nans = _zero_counts(x, out)
    part[1] += under
    part[2] += zeros
    part[3] += nans


# ---------------------------------------------------------------------------------------------
# stochastic rounding: counter-based random bits (no state: results do not depend on threads)
# ---------------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def mix64(z):
    """SplitMix64's finaliser (Steele, Lea and Flood, OOPSLA 2014): a bijective 64-bit mix."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, inline="always")
def counter_bits(seed, step, tensor_id, index):
    """64 random bits keyed by (seed, step, tensor id, element index)."""
    golden = np.uint64(0x9E3779B97F4A7C15)
    z = mix64(np.uint64(seed) * golden + np.uint64(1))
    z = mix64(z ^ (np.uint64(step) * golden + np.uint64(2)))
    z = mix64(z ^ (np.uint64(tensor_id) * golden + np.uint64(3)))
    return mix64(z ^ (np.uint64(index) * golden + np.uint64(4)))


@njit(cache=True)
def round_float_stochastic(x, rbits, frac_bits, emin, subnormals, max_value, flush_below, saturate):
    """Stochastic rounding of float64 ``x`` onto a binary format: between the neighbours lo < x <
    hi it returns hi with probability (x - lo)/(hi - lo), decided by comparing the discarded
    bits with the 64 random bits ``rbits`` (exact to 2^-64). Representable values never move;
    formats without subnormals flush |x| < ``flush_below``; overflow as in `round_float`.
    Returns (value, overflowed, underflowed)."""
    if x != x:
        return x, False, False
    bits = float_bits(x)
    neg = bits < 0
    mag = bits & _ABS64
    if mag == 0:
        return x, False, False
    ef = (mag >> 52) & 0x7FF
    if ef == 0x7FF:
        if saturate:
            return -max_value if neg else max_value, True, False
        return x, False, False
    if not subnormals and bits_float(mag) < flush_below:
        return (-0.0 if neg else 0.0), False, True
    if ef == 0:
        m = mag & _FRAC64
        e_unit = -1074
        lead = e_unit + 63
        while lead > e_unit and (m >> (lead - e_unit)) == 0:
            lead -= 1
    else:
        m = (mag & _FRAC64) | (np.int64(1) << 52)
        e_unit = ef - 1075
        lead = ef - 1023
    q = max(lead, emin) - frac_bits
    s = q - e_unit
    if s <= 0:
        r = bits_float(mag)
    else:
        if s >= 64:
            n = np.int64(0)
            rem = np.uint64(m)
            thresh = rem >> np.uint64(s - 64) if s < 128 else np.uint64(0)
        else:
            n = m >> s
            rem = np.uint64(m - (n << s))
            thresh = rem << np.uint64(64 - s)
        if rbits < thresh:
            n += 1
        r = float(n) * pow2(q)
    over = False
    if r > max_value:
        over = True
        r = max_value if saturate else np.inf
    return (-r if neg else r), over, r == 0.0


@_one_thread_when_small
@njit(cache=True, parallel=True)
def round_float_stochastic_array(x, out, seed, step, tensor_id, frac_bits, emin, subnormals,
                                 max_value, flush_below, saturate, counts):
    """Elementwise `round_float_stochastic` of flat ``x`` with the bits of element i keyed by
    (seed, step, tensor_id, i); counts as `round_float_array`."""
    n = x.size
    chunks = (n + _ROUND_CHUNK - 1) // _ROUND_CHUNK
    part = np.zeros((chunks, 4), np.int64)
    for j in prange(chunks):
        i0 = j * _ROUND_CHUNK
        xs = x[i0:min(n, i0 + _ROUND_CHUNK)]
        outs = out[i0:min(n, i0 + _ROUND_CHUNK)]
        over = 0
        for i in range(xs.size):
            r, o, u = round_float_stochastic(xs[i], counter_bits(seed, step, tensor_id, i0 + i), frac_bits,
                                             emin, subnormals, max_value, flush_below, saturate)
            outs[i] = r
            over += o
        part[j, 0] = over
        _zeros_and_nans(xs, outs, part[j])
    for c in range(4):
        counts[c] += part[:, c].sum()


# ---------------------------------------------------------------------------------------------
# error-free summation (Shewchuk expansions) with round-to-odd and round-to-nearest read-out
# ---------------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def two_sum(a, b):
    """s = fl(a + b) and the exact error e = a + b - s (Knuth's TwoSum)."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


@njit(cache=True)
def expansion_add(partials, n, x):
    """Add float64 ``x`` exactly to the non-overlapping expansion partials[:n]; returns new n.

    The partials are kept in increasing magnitude (Shewchuk 1997, GROW-EXPANSION with zero
    elimination, as in Python's ``math.fsum``). ``partials`` needs room for n + 1 values.
    """
    i = 0
    for j in range(n):
        y = partials[j]
        hi, lo = two_sum(x, y)
        if lo != 0.0:
            partials[i] = lo
            i += 1
        x = hi
    partials[i] = x
    return i + 1


@njit(cache=True)
def expansion_value(partials, n, odd):
    """Read out the exact sum of partials[:n] as one float64.

    ``odd=False``: round to nearest, ties to even (the final step of ``math.fsum``).
    ``odd=True``: round to odd (a discarded non-zero remainder forces the last bit to 1), so that
    a second rounding to any format of at most 51 significant bits is correct (Boldo and
    Melquiond, IEEE TC 2008).
    """
    if n == 0:
        return 0.0
    hi = partials[n - 1]
    lo = 0.0
    j = n - 1
    while j > 0:
        x = hi
        j -= 1
        y = partials[j]
        hi = x + y
        yr = hi - x
        lo = y - yr
        if lo != 0.0:
            break
    if odd:
        if lo != 0.0 and (float_bits(hi) & 1) == 0:
            hi = np.nextafter(hi, np.inf if lo > 0.0 else -np.inf)
        return hi
    # round half to even across the partials below (math.fsum's correction)
    if j > 0 and ((lo < 0.0 and partials[j - 1] < 0.0) or (lo > 0.0 and partials[j - 1] > 0.0)):
        y = lo * 2.0
        x = hi + y
        yr = x - hi
        if y == yr:
            hi = x
    return hi


_SCAN_BLOCK = 1 << 14  # elements per task of `scan_operand`
_HIDDEN64 = np.int64(1) << 52
_TWO53_BITS = np.int64(0x4340000000000000)  # bit pattern of 2.0**53 (bit 52 clear)
_NOT_LIVE = np.int64(1) << 20  # stands in for the exponent of a zero: above every real one


def scan_operand(x):
    """One pass over a flat float array ``x`` (float32 or float64): returns (bad, low, high,
    not_pow2, width).

    bad: count of values that float32 does not hold exactly (NaN, values out of the
    float32 range or with more than 24 significant bits). high: max |x| (inf or NaN when x holds
    them). low: the smallest binary exponent of the lowest set bit of a non-zero value, so that
    every value is an integer multiple of 2^low; valid when bad == 0 and high is finite (100000
    when x is empty or all zero). not_pow2: count of values whose significand has a fraction (valid
    values: the non-zero values that are not +-2^e). width: the widest significand in bits (0
    without a non-zero value). (low, high) bound what exact lane arithmetic needs
    (`fourbit.models.numerics`); low, not_pow2 and width are valid when bad == 0 and high is finite.

    Blocks of `_SCAN_BLOCK` elements run in parallel; a float32 array is read as int32 bit
    patterns (`_scan_binary32`), any other as float64 int64 patterns (`_scan_binary64`). Each inner loop has no
    branch, reduces integers only (a float max reduction does not vectorise: NaN makes it
    non-associative) and runs over a slice from index 0 (an index that could be negative makes
    Numba wrap it, which stops LLVM from vectorising the loop: measured 3.5x slower).
    """
    if x.dtype == np.float32:
        return _scan_binary32(x)
    return _scan_binary64(x if x.dtype == np.float64 else x.astype(np.float64))


@njit(cache=True)
def _scan_result(res, low_bias):
    """The five results of a scan from its per-block rows (bad, low, high, not_pow2, width; high
    as a bit pattern); a block's low is its exponent plus ``low_bias`` (`_NOT_LIVE` when it has no non-zero
    value)."""
    if res.shape[0] == 0:
        return 0, 100000, 0, 0, 0
    least = res[:, 1].min()
    return (res[:, 0].sum(), least + low_bias if least < _NOT_LIVE else 100000, res[:, 2].max(),
            res[:, 3].sum(), res[:, 4].max())


_ABS32 = np.int32(0x7FFFFFFF)
_FRAC32 = np.int32(0x7FFFFF)
_HIDDEN32 = np.int32(0x800000)
_INF32 = np.int32(0x7F800000)


@_one_thread_when_small
@njit(cache=True, parallel=True)
def _scan_binary32(x):
    """`scan_operand` of float32 ``x``: only NaN is bad. With the biased exponent e and the
    significand m (hidden bit set when e > 0), a non-zero value is m * 2^(max(e, 1) - 150): its
    lowest set bit is tz(m) places up and it has bitlength(m) - tz(m) significant bits; tz and
    bitlength are read off the exponent of float32(m & -m) and float32(m) (exact: m < 2^24)."""
    n = x.size
    blocks = (n + _SCAN_BLOCK - 1) // _SCAN_BLOCK
    res = np.zeros((blocks, 5), np.int64)
    for j in prange(blocks):
        xs = x[j * _SCAN_BLOCK:min(n, (j + 1) * _SCAN_BLOCK)]
        bad = 0
        not_pow2 = 0
        low = np.int32(_NOT_LIVE)
        high = np.int32(0)
        width = np.int32(0)
        for i in range(xs.size):
            mag = np.int32(float_bits(xs[i]) & _ABS32)
            bad += np.int64(mag > _INF32)
            high = max(high, mag)  # |x| is ordered as its bit pattern
            ef = np.int32(mag >> 23)
            m = np.int32((mag & _FRAC32) | (_HIDDEN32 if ef != 0 else np.int32(0)))
            not_pow2 += np.int64((m & (m - 1)) != 0)
            tz = np.int32((float_bits(np.float32(m & -m)) >> 23) - 127)
            bitlength = np.int32((float_bits(np.float32(m)) >> 23) - 126)
            live = mag != 0
            low = min(low, np.int32(tz + max(ef, np.int32(1))) if live else np.int32(_NOT_LIVE))
            width = max(width, np.int32(bitlength - tz) if live else np.int32(0))
        res[j, 0] = bad
        res[j, 1] = low
        res[j, 2] = high
        res[j, 3] = not_pow2
        res[j, 4] = width
    bad, low, high, not_pow2, width = _scan_result(res, -150)
    return bad, low, np.float64(bits_float(np.int32(high))), not_pow2, width


@_one_thread_when_small
@njit(cache=True, parallel=True)
def _scan_binary64(x):
    """`scan_operand` of float64 ``x``: a value is bad when float32 does not hold it."""
    n = x.size
    blocks = (n + _SCAN_BLOCK - 1) // _SCAN_BLOCK
    res = np.zeros((blocks, 5), np.int64)
    for j in prange(blocks):
        xs = x[j * _SCAN_BLOCK:min(n, (j + 1) * _SCAN_BLOCK)]
        bad = 0
        low = _NOT_LIVE
        high = 0
        not_pow2 = 0
        lowest = 53  # smallest index of a lowest set bit: width = 53 - lowest (no subnormal)
        for i in range(xs.size):
            v = xs[i]
            bad += np.int64(np.float64(np.float32(v)) != v)
            mag = float_bits(v) & _ABS64
            high = max(high, mag)
            not_pow2 += np.int64(mag & _FRAC64 != 0)
            ef = mag >> 52
            m = (mag & _FRAC64) | _HIDDEN64  # the significand (bad values aside: no subnormal)
            # lowbit, a power of two <= 2^52, ORed into 2^53's bits reads 2^53 + 2 * lowbit
            # (the ulp of 2^53 is 2): its bit index without an int-to-float conversion
            lowbit = m & -m
            lowpos = (float_bits(bits_float(_TWO53_BITS | lowbit) - 2.0**53) >> 52) - 1024
            low = min(low, lowpos + (ef if mag != 0 else _NOT_LIVE))
            lowest = min(lowest, lowpos if mag != 0 else 53)
        res[j, 0] = bad
        res[j, 1] = low
        res[j, 2] = high
        res[j, 3] = not_pow2
        res[j, 4] = 53 - lowest
    bad, low, high, not_pow2, width = _scan_result(res, -1075)
    return bad, low, bits_float(high), not_pow2, width


# ---------------------------------------------------------------------------------------------
# GEMM kernels
# ---------------------------------------------------------------------------------------------
@_one_thread_when_small
@njit(cache=True, parallel=True)
def gemm_int(a, b, out, check_int32, overflow_rows):
    """Exact integer GEMM: out[m, n] = sum_k a[m, k] * b[k, n] in int64, k increasing.

    With ``check_int32`` every partial sum must stay in the int32 range; a row where one does not
    is marked in ``overflow_rows`` (the wrapper raises).
    """
    M, K = a.shape
    N = b.shape[1]
    lo = -(2.0**31)
    hi = 2.0**31 - 1
    for m in prange(M):
        acc = np.zeros(N, np.int64)
        bad = np.zeros(N, np.int64)
        for k in range(K):
            av = np.int64(a[m, k])
            if av == 0:
                continue
            for n in range(N):
                acc[n] += av * np.int64(b[k, n])
            if check_int32:
                for n in range(N):
                    v = float(acc[n])
                    bad[n] += (v > hi) + (v < lo)
        out[m, :] = acc
        if check_int32 and bad.sum() > 0:
            overflow_rows[m] = True


def lane_params(dtype, frac_bits, ties_away, max_value):
    """Integer constants of `round_lane` and of the overflow test for a float32 or float64 lane,
    as an array of the lane's integer dtype: [half - 1, clear mask, ties_away, lsb mask,
    magnitude mask, 1, overflow offset]. The overflow offset C makes ``(bits(|r|) + C)`` negative
    exactly when a rounded value r exceeds ``max_value`` (r >= the next grid value above it)."""
    dtype = np.dtype(dtype)
    lane_frac = 23 if dtype == np.float32 else 52
    it = np.int32 if dtype == np.float32 else np.int64
    width = 8 * dtype.itemsize
    shift = lane_frac - frac_bits
    half_m1 = (1 << (shift - 1)) - 1
    clear = ~((1 << shift) - 1)
    absmask = (1 << (width - 1)) - 1
    first_over = int(np.asarray(max_value, dtype).view(it)) + (1 << shift)
    offset = (1 << (width - 1)) - first_over
    return np.array([half_m1, clear, int(bool(ties_away)), 1 << shift, absmask, 1, offset], dtype=it)


def _round_lane_py(v, half_m1, clear, ties_away, lsb, absmask):
    it = np.int32 if np.asarray(v).dtype == np.float32 else np.int64
    x = int(np.asarray(v).view(it))
    mag = x & int(absmask)
    odd = 1 if mag & int(lsb) else 0
    r = (mag + int(half_m1) + (odd | int(ties_away))) & int(clear)
    return bits_float_as((x ^ mag) | r, v)


def _over_bits_py(v, absmask, offset):
    it = np.int32 if np.asarray(v).dtype == np.float32 else np.int64
    x = int(np.asarray(v).view(it))
    return it(np.asarray(((x & int(absmask)) + int(offset)) & (2 ** (8 * it().itemsize) - 1),
                          np.uint64).astype(it.__name__.replace("int", "uint")).view(it))


def _narrow_py(v):
    if np.asarray(v).dtype == np.float32:
        return np.float32(np.float16(v))
    return np.float64(np.float32(v))


if _DISABLE_JIT:
    round_lane = _round_lane_py
    over_bits = _over_bits_py
    narrow = _narrow_py
else:

    @intrinsic
    def narrow(typingctx, v):
        """IEEE rounding of a float32 lane to binary16 (or a float64 lane to binary32) and back:
        LLVM's fptrunc/fpext, which x86 F16C and AVX do in hardware (vcvtps2ph, vcvtpd2ps):
        round to nearest even, subnormals, overflow to +-inf, vectorised."""
        if v == types.float32:
            small, lane = ir.HalfType(), ir.FloatType()
        elif v == types.float64:
            small, lane = ir.FloatType(), ir.DoubleType()
        else:
            return None

        def codegen(context, builder, signature, args):
            return builder.fpext(builder.fptrunc(args[0], small), lane)

        return v(v), codegen

    def _lane(context, builder, fty, width, args):
        ity = ir.IntType(width)
        consts = []
        for val, ty in zip(args[1:], fty.args[1:], strict=True):
            val = context.cast(builder, val, ty, types.int64)
            consts.append(builder.trunc(val, ity) if width < 64 else val)
        return builder.bitcast(args[0], ity), consts

    @intrinsic
    def round_lane(typingctx, v, half_m1, clear, ties_away, lsb, absmask):
        """Round a float32/float64 ``v`` to the precision set by the constants of
        `lane_params`, on its bit pattern, in the lane's own integer width (Numba would widen
        small-integer arithmetic to int64 and halve the vector width): r = (|x| + half - 1 +
        (lsb(|x|) | ties_away)) & clear, sign restored. Normal range only and no overflow
        handling: the fast GEMM path guarantees the first and flags the second."""
        if v not in (types.float32, types.float64):
            return None
        width = 32 if v == types.float32 else 64
        sig = v(v, half_m1, clear, ties_away, lsb, absmask)

        def codegen(context, builder, signature, args):
            x, (hm, cl, ta, lb, am) = _lane(context, builder, signature, width, args)
            ity = ir.IntType(width)
            mag = builder.and_(x, am)
            odd = builder.zext(builder.icmp_unsigned("!=", builder.and_(mag, lb), ir.Constant(ity, 0)), ity)
            r = builder.and_(builder.add(builder.add(mag, hm), builder.or_(odd, ta)), cl)
            out = builder.or_(builder.xor(x, mag), r)
            return builder.bitcast(out, ir.FloatType() if width == 32 else ir.DoubleType())

        return sig, codegen

    @intrinsic
    def over_bits(typingctx, v, absmask, offset):
        """(bits(|v|) + offset) in the lane's integer width: negative exactly when |v| exceeds
        the format's largest value (see `lane_params`)."""
        if v not in (types.float32, types.float64):
            return None
        width = 32 if v == types.float32 else 64
        ret = types.int32 if width == 32 else types.int64
        sig = ret(v, absmask, offset)

        def codegen(context, builder, signature, args):
            x, (am, off) = _lane(context, builder, signature, width, args)
            return builder.add(builder.and_(x, am), off)

        return sig, codegen


@_one_thread_when_small
@njit(cache=True, parallel=True)
def narrow_array(x, out, counts):
    """IEEE round-to-nearest-even of flat float32 ``x`` to binary16 (float64 ``x``: to binary32)
    by `narrow`, into ``out`` (same lane type): the same values as `round_float_array` for those
    formats, in hardware. counts[0] += overflows (finite -> inf), counts[1] += underflows
    (non-zero -> zero)."""
    n = x.size
    over = 0
    under = 0
    for i in prange(n):
        v = x[i]
        r = narrow(v)
        out[i] = r
        over += 1 if (r - r != 0) and (v - v == 0) else 0  # r infinite, v finite
        under += 1 if (r == 0) and (v != 0) else 0
    counts[0] += over
    counts[1] += under


@_one_thread_when_small
@njit(cache=True, parallel=True)
def gemm_fast(a, b, out, group, chunk, p, check_groups, overflow_rows):
    """GEMM with a rounding accumulator, vectorised over n (float32 or float64 lanes).

    Valid only when every group sum is exact in the lane type, no value can be subnormal in the
    accumulator format and the accumulator precision p satisfies 2p + 2 <= lane precision, so
    that a lane add followed by `round_lane` is one correctly rounded accumulator add; the
    wrapper checks all three. A row in which an accumulator value exceeds the format's largest
    value (overflow: it should have become +-inf) is marked in ``overflow_rows`` and must be
    recomputed by `gemm_general`. ``check_groups=False`` skips the test inside chunks of full
    4-way groups: the wrapper passes it when no group or chunk sum can exceed the format's
    largest value.
    """
    M, K = a.shape
    N = b.shape[1]
    h, c, t, s, am, oc = p[0], p[1], p[2], p[3], p[4], p[6]  # hoisted out of the loops
    for m in prange(M):
        cs = np.zeros(N, b.dtype)
        tot = np.zeros(N, b.dtype)
        g = np.zeros(N, b.dtype)
        flag = np.zeros(N, p.dtype)  # sign bit set <=> some |value| exceeded the format's max
        for c0 in range(0, K, chunk):
            c1 = min(c0 + chunk, K)
            for n in range(N):
                cs[n] = 0
            k0 = c0
            while k0 < c1:
                k1 = min(k0 + group, c1)
                if k1 - k0 == 4:
                    a0 = as_lane(a[m, k0], b)
                    a1 = as_lane(a[m, k0 + 1], b)
                    a2 = as_lane(a[m, k0 + 2], b)
                    a3 = as_lane(a[m, k0 + 3], b)
                    if check_groups:  # two loops: a test inside would stop LLVM vectorising
                        for n in range(N):
                            gs = (a0 * b[k0, n] + a1 * b[k0 + 1, n]) + (a2 * b[k0 + 2, n] + a3 * b[k0 + 3, n])
                            gr = round_lane(gs, h, c, t, s, am)
                            v = round_lane(cs[n] + gr, h, c, t, s, am)
                            cs[n] = v
                            flag[n] |= over_bits(v, am, oc) | over_bits(gr, am, oc)
                    else:
                        for n in range(N):
                            gs = (a0 * b[k0, n] + a1 * b[k0 + 1, n]) + (a2 * b[k0 + 2, n] + a3 * b[k0 + 3, n])
                            cs[n] = round_lane(cs[n] + round_lane(gs, h, c, t, s, am), h, c, t, s, am)
                else:
                    for n in range(N):
                        g[n] = 0
                    for k in range(k0, k1):
                        av = as_lane(a[m, k], b)
                        for n in range(N):
                            g[n] += av * b[k, n]
                    for n in range(N):
                        gr = round_lane(g[n], h, c, t, s, am)
                        v = round_lane(cs[n] + gr, h, c, t, s, am)
                        cs[n] = v
                        flag[n] |= over_bits(v, am, oc) | over_bits(gr, am, oc)
                k0 = k1
            for n in range(N):
                v = round_lane(tot[n] + cs[n], h, c, t, s, am)
                tot[n] = v
                flag[n] |= over_bits(v, am, oc)
        for n in range(N):
            out[m, n] = tot[n]
        for n in range(N):
            if flag[n] < 0:
                overflow_rows[m] = True


LANE_NARROW, LANE_NATIVE, LANE_HALF64 = 0, 1, 2
"""Rounding modes of `gemm_fast_ieee`: `narrow` (binary16 on float32 lanes, binary32 on float64
lanes), none (the lane type is the accumulator: binary32 on float32 lanes), `round_half64`
(binary16 on float64 lanes)."""

_HALF_MAGIC = 2.0**28  # x + 2^28 - 2^28 in float64 rounds |x| < 2^28 to a multiple of 2^-24 (RNE)
_HALF_MIN_NORMAL = 2.0**-14
_HALF_MAX = 65504.0


def round_half64(x, p):
    """IEEE binary16 rounding (to nearest even, subnormals, overflow to +-inf) of a float64
    ``x``, returned as float64, vectorisable: `round_lane` with ``p = lane_params(float64, 10,
    False, 65504)`` where the result is normal; below 2^-14 the quantum is the fixed 2^-24, which
    adding and subtracting 2^28 applies in float64's own round-to-nearest-even. A float64 ->
    float32 -> binary16 cast would round twice. (Compiled for float64 only: on float32 lanes,
    which `gemm_fast_ieee` never asks it for, it returns ``x`` so that the lane type stays.)"""
    if np.asarray(x).dtype != np.float64:  # the plain-Python run (NUMBA_DISABLE_JIT) of that rule
        return x
    return _half64(x, p)


def _half64(x, p):
    r = round_lane(x, p[0], p[1], p[2], p[3], p[4])
    ax = abs(x)
    sub = math.copysign((ax + _HALF_MAGIC) - _HALF_MAGIC, x)
    r = sub if ax < _HALF_MIN_NORMAL else r
    return math.copysign(math.inf, x) if abs(r) > _HALF_MAX else r


if not _DISABLE_JIT:
    from numba.extending import overload

    @overload(round_half64)
    def _round_half64_lanes(x, p):
        if x == types.float64:
            return _half64
        return lambda x, p: x


def as_lane(x, lanes):
    """``x`` (a scalar of any numeric type) converted to the element type of the float32 or
    float64 array ``lanes``: the lane kernels read the left operand as it is given (no float32
    copy of it) and convert each scalar, exactly (the GEMM planner admits only values exact in
    the lane type)."""
    return lanes.dtype.type(x)


if not _DISABLE_JIT:

    @overload(as_lane)
    def _as_lane_typed(x, lanes):
        if lanes.dtype == types.float32:
            return lambda x, lanes: np.float32(x)
        return lambda x, lanes: np.float64(x)


@njit(cache=True, inline="always")
def _acc_round(x, mode, p):
    """The accumulator's rounding of a lane value, by ``mode``: `LANE_NARROW` (either lane type),
    `LANE_NATIVE` (float32 lanes: none) or `LANE_HALF64` (float64 lanes). One test of ``mode``,
    the same at every call, so that LLVM hoists it out of the loops and vectorises them."""
    if mode == LANE_NARROW:
        return narrow(x)
    return round_half64(x, p)  # float64 lanes: binary16; on float32 lanes it returns x


_NO_EXPONENT = 2047  # stands in for the exponent field of a zero in a group's minimum


def exact_group_params(left_pow2: bool, right_low: int, right_high: float, precision: int,
                       quantum_exp: int, max_value: float, group: int = 4) -> np.ndarray:
    """Constants of `_group_exact` as an int64 array [enabled, x_lo, d_max, x_hi].

    The left operand holds +-2^e (``left_pow2``), the right operand integer multiples of
    2^right_low with magnitude <= right_high. With x the float64 exponent field of the left
    values of one group (zeros aside), the group sum is a multiple of 2^(x_min - 1023 +
    right_low) and at most group * 2^(x_max - 1023) * right_high in magnitude; it is a value of a
    format with ``precision`` significand bits, smallest quantum 2^quantum_exp and largest value
    ``max_value`` when x_min >= x_lo, x_max - x_min <= d_max and x_max <= x_hi."""
    if not left_pow2 or right_high <= 0 or group != 4:
        return np.zeros(4, np.int64)
    x_lo = quantum_exp + 1023 - right_low
    d_max = -1
    while group * right_high * 2.0 ** (d_max + 1) < 2.0 ** (right_low + precision):
        d_max += 1
    x_hi = min(math.frexp(max_value / (group * right_high))[1] - 1 + 1023, 2046)  # floor(log2)
    while group * right_high * 2.0 ** (x_hi - 1023) > max_value:  # exact products: settle it
        x_hi -= 1
    return np.array([1 if d_max >= 0 else 0, x_lo, d_max, x_hi], np.int64)


@njit(cache=True, inline="always")
def _exponent_field(v):
    return (float_bits(np.float64(v)) >> 52) & 0x7FF


@njit(cache=True, inline="always")
def _group_exact(a0, a1, a2, a3, q):
    """A 4-way group's sum is a value of the accumulator format (`exact_group_params` ``q``)."""
    x0, x1, x2, x3 = _exponent_field(a0), _exponent_field(a1), _exponent_field(a2), _exponent_field(a3)
    hi = max(max(x0, x1), max(x2, x3))
    lo = min(min(x0 if x0 else _NO_EXPONENT, x1 if x1 else _NO_EXPONENT),
             min(x2 if x2 else _NO_EXPONENT, x3 if x3 else _NO_EXPONENT))
    return (lo >= q[1]) & (hi - lo <= q[2]) & (hi <= q[3])


_ROWS = 4  # rows of a that `gemm_fast_ieee` runs together, so that each b load serves four


@_one_thread_when_small
@njit(cache=True, parallel=True)
def gemm_fast_ieee(a, a_layout, b, out, group, chunk, check_underflow, underflow_counts, mode, p, exact_groups):
    """GEMM with an IEEE binary16 (float32 lanes, or float64 lanes with ``mode`` `LANE_HALF64`)
    or binary32 (float64 lanes, or float32 lanes with `LANE_NATIVE`) accumulator, every rounding
    done by `narrow` (hardware fptrunc), by `round_half64` (``p``: its lane constants) or by the
    lane arithmetic itself, vectorised over n (no FMA contraction: Numba does not allow it
    without fastmath).

    Valid when every group sum is exact in the lane type (the wrapper checks it); the sum of two
    binary16 values is exact in float64, and correctly rounded by float32 lanes before `narrow`
    (24 >= 2 * 11 + 2). Overflow needs no test: IEEE rounding gives +-inf, which the accumulator
    model propagates too. A non-zero group sum rounded to zero is the only underflow (sums of grid
    values never round to zero): ``underflow_counts[m]`` receives their number in row m (tested
    only with ``check_underflow``: the wrapper knows when no group sum can be that small). The
    wrapper recomputes rows with non-finite outputs by `gemm_general`, only to count their
    overflows.

    The left operand comes flat, ``a`` (1-D) with ``a_layout`` = (M, K, row stride, column
    stride) in elements (`left_operand`), so that a C-contiguous operand and a transposed one (a
    ``bwd_weight``'s dY^T, read without a copy) are the same argument types: one compiled
    specialisation instead of two (each took ~26 s to compile on 2 cores, 2026-12-08).

    With 4-way groups and no underflow test, rows run in blocks of `_ROWS`: the full groups of a
    block share their loads of b (`_block_groups`); the rest runs row by row (`_row_groups`), one
    row per parallel task. ``exact_groups`` (`exact_group_params`) lets a block skip the rounding
    of groups whose sums are provably values of the format: the same result, two conversions
    fewer. Blocked rows cannot underflow (no underflow test), so their counts are 0.
    """
    M = a_layout[0]
    left = (a, 0, a_layout[2], a_layout[3], M, a_layout[1])
    step = _ROWS if group == 4 and not check_underflow else 1  # rows per parallel task
    for blk in prange((M + step - 1) // step):
        _ieee_task(left, b, out, blk * step, step, group, chunk, check_underflow, underflow_counts, mode, p,
                   exact_groups)


@_one_thread_when_small
@njit(cache=True, parallel=True)
def gemm_fast_ieee_groups(a, b, out, group, chunk, check_underflow, underflow_counts, mode, p, exact_groups):
    """`gemm_fast_ieee` of G independent GEMMs: out[g] = a[g] @ b[g] for ``a`` (G, M, K), ``b``
    (G, K, N) and ``out`` (G, M, N); ``underflow_counts`` (G, M). The tasks of every group run in
    one parallel loop (a group's rows as `gemm_fast_ieee` splits them), so the same values."""
    G, M, K = a.shape[0], a.shape[1], a.shape[2]
    flat = a.reshape(G * M * K)  # C-contiguous (the wrapper's): group g's (M, K) rows from g * M * K
    step = _ROWS if group == 4 and not check_underflow else 1
    per_group = (M + step - 1) // step
    for task in prange(G * per_group):
        g = task // per_group
        _ieee_task((flat, g * M * K, K, 1, M, K), b[g], out[g], (task - g * per_group) * step, step, group, chunk, check_underflow,
                   underflow_counts[g], mode, p, exact_groups)


@njit(cache=True, inline="always")
def _ieee_task(a, b, out, m0, step, group, chunk, check_underflow, underflow_counts, mode, p, exact_groups):
    """Rows m0..m0+step-1 of `gemm_fast_ieee`: a block of `_ROWS` rows sharing their loads of
    b, or row by row. ``a`` is the left operand as (values, offset, row stride, column stride,
    M, K), read by `_left`."""
    M = a[4]
    N = b.shape[1]
    K = a[5]
    if M - m0 < _ROWS or step == 1:  # row by row
        for m in range(m0, min(m0 + step, M)):
            _one_row(a, b, out, m, group, chunk, check_underflow, underflow_counts, mode, p)
    else:
        cs = np.zeros((_ROWS, N), b.dtype)
        tot = np.zeros((_ROWS, N), b.dtype)
        g = np.zeros(N, b.dtype)
        unused = np.zeros(N, b.dtype)  # underflow counts of a partial group: none can underflow here
        for c0 in range(0, K, chunk):
            c1 = min(c0 + chunk, K)
            cs[:, :] = 0
            four = c0 + ((c1 - c0) // 4) * 4  # full 4-way groups, then a partial one
            _block_groups(a, b, cs, m0, c0, four, mode, p, exact_groups)
            if four < c1:
                for r in range(_ROWS):
                    _row_groups(a, b, cs[r], unused, g, m0 + r, four, four, c1, group, False, mode, p)
            for r in range(_ROWS):
                for n in range(N):
                    tot[r, n] = _acc_round(tot[r, n] + cs[r, n], mode, p)
        for r in range(_ROWS):
            for n in range(N):
                out[m0 + r, n] = tot[r, n]
            underflow_counts[m0 + r] = 0


@njit(cache=True, inline="always")
def _one_row(a, b, out, m, group, chunk, check_underflow, underflow_counts, mode, p):
    """Row m of `gemm_fast_ieee` on its own (1-D accumulators, so LLVM needs no alias checks)."""
    N = b.shape[1]
    K = a[5]
    cs = np.zeros(N, b.dtype)
    tot = np.zeros(N, b.dtype)
    g = np.zeros(N, b.dtype)
    lost = np.zeros(N, b.dtype)
    for c0 in range(0, K, chunk):
        c1 = min(c0 + chunk, K)
        for n in range(N):
            cs[n] = 0
        four = c0 + ((c1 - c0) // 4) * 4 if group == 4 else c0  # full 4-way groups first
        _row_groups(a, b, cs, lost, g, m, c0, four, c1, group, check_underflow, mode, p)
        for n in range(N):
            tot[n] = _acc_round(tot[n] + cs[n], mode, p)
    under = 0
    for n in range(N):
        out[m, n] = tot[n]
        under += int(lost[n])
    underflow_counts[m] = under


@njit(cache=True, inline="always")
def _block_groups(a, b, cs, m0, k_start, k_end, mode, p, exact_groups):
    """The full 4-way groups k_start <= k < k_end of rows m0..m0+3 of `gemm_fast_ieee`, added to
    cs[0..3] (one rounding of each group sum, one of each add); each b load serves four rows. When
    ``exact_groups`` finds all four group sums exact in the format, their rounding is skipped."""
    N = b.shape[1]
    for k0 in range(k_start, k_end, 4):
        p0, p1, p2, p3 = _lane4(a, m0, k0, b)
        q0, q1, q2, q3 = _lane4(a, m0 + 1, k0, b)
        r0, r1, r2, r3 = _lane4(a, m0 + 2, k0, b)
        s0, s1, s2, s3 = _lane4(a, m0 + 3, k0, b)
        if (exact_groups[0] and _group_exact(p0, p1, p2, p3, exact_groups) and _group_exact(q0, q1, q2, q3, exact_groups)
                and _group_exact(r0, r1, r2, r3, exact_groups) and _group_exact(s0, s1, s2, s3, exact_groups)):
            for n in range(N):  # every group sum is a value of the format: no group rounding
                b0, b1, b2, b3 = b[k0, n], b[k0 + 1, n], b[k0 + 2, n], b[k0 + 3, n]
                cs[0, n] = _acc_round(cs[0, n] + ((p0 * b0 + p1 * b1) + (p2 * b2 + p3 * b3)), mode, p)
                cs[1, n] = _acc_round(cs[1, n] + ((q0 * b0 + q1 * b1) + (q2 * b2 + q3 * b3)), mode, p)
                cs[2, n] = _acc_round(cs[2, n] + ((r0 * b0 + r1 * b1) + (r2 * b2 + r3 * b3)), mode, p)
                cs[3, n] = _acc_round(cs[3, n] + ((s0 * b0 + s1 * b1) + (s2 * b2 + s3 * b3)), mode, p)
        else:
            for n in range(N):
                b0, b1, b2, b3 = b[k0, n], b[k0 + 1, n], b[k0 + 2, n], b[k0 + 3, n]
                cs[0, n] = _acc_round(cs[0, n] + _acc_round((p0 * b0 + p1 * b1) + (p2 * b2 + p3 * b3), mode, p), mode, p)
                cs[1, n] = _acc_round(cs[1, n] + _acc_round((q0 * b0 + q1 * b1) + (q2 * b2 + q3 * b3), mode, p), mode, p)
                cs[2, n] = _acc_round(cs[2, n] + _acc_round((r0 * b0 + r1 * b1) + (r2 * b2 + r3 * b3), mode, p), mode, p)
                cs[3, n] = _acc_round(cs[3, n] + _acc_round((s0 * b0 + s1 * b1) + (s2 * b2 + s3 * b3), mode, p), mode, p)


@njit(cache=True, inline="always")
def _lane4(a, m, k0, b):
    """a[m, k0:k0 + 4] (a left operand read by `_left`) as four scalars of b's lane type."""
    return as_lane(_left(a, m, k0), b), as_lane(_left(a, m, k0 + 1), b), as_lane(_left(a, m, k0 + 2), b), \
        as_lane(_left(a, m, k0 + 3), b)


@njit(cache=True, inline="always")
def _left(a, m, k):
    """Element (m, k) of a left operand given as (values (1-D), offset, row stride, column
    stride, M, K)."""
    return a[0][a[1] + m * a[2] + k * a[3]]


def left_operand(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 2-D left operand (M, K) as `gemm_fast_ieee` takes it: its values flat (a view when ``a``
    or its transpose is C-contiguous, else a copy) and int64 (M, K, row stride, column stride)
    in elements."""
    M, K = a.shape
    if not a.flags.c_contiguous and a.flags.f_contiguous:
        return a.T.reshape(-1), np.array([M, K, 1, M], np.int64)
    return np.ascontiguousarray(a).reshape(-1), np.array([M, K, K, 1], np.int64)


@njit(cache=True, inline="always")
def _row_groups(a, b, cs, lost, g, m, k_start, four, k_end, group, check_underflow, mode, p):
    """Row m of `gemm_fast_ieee` over one chunk from k_start: its full 4-way groups before
    ``four``, then (group 1) one product per group, or the other group sizes and a partial last
    group up to k_end; added to cs with the accumulator's roundings, underflows counted in lost."""
    N = b.shape[1]
    for k0 in range(k_start, four, 4):
        a0, a1, a2, a3 = _lane4(a, m, k0, b)
        if check_underflow:  # two loops: a test inside would stop LLVM vectorising
            for n in range(N):
                gs = (a0 * b[k0, n] + a1 * b[k0 + 1, n]) + (a2 * b[k0 + 2, n] + a3 * b[k0 + 3, n])
                gr = _acc_round(gs, mode, p)
                lost[n] += 1 if (gr == 0) & (gs != 0) else 0
                cs[n] = _acc_round(cs[n] + gr, mode, p)
        else:
            for n in range(N):
                gs = (a0 * b[k0, n] + a1 * b[k0 + 1, n]) + (a2 * b[k0 + 2, n] + a3 * b[k0 + 3, n])
                cs[n] = _acc_round(cs[n] + _acc_round(gs, mode, p), mode, p)
    if group == 1:  # one product per group: one pass over n per k
        for k in range(max(k_start, four), k_end):
            av = as_lane(_left(a, m, k), b)
            if check_underflow:
                for n in range(N):
                    pr = av * b[k, n]
                    gr = _acc_round(pr, mode, p)
                    lost[n] += 1 if (gr == 0) & (pr != 0) else 0
                    cs[n] = _acc_round(cs[n] + gr, mode, p)
            else:
                for n in range(N):
                    cs[n] = _acc_round(cs[n] + _acc_round(av * b[k, n], mode, p), mode, p)
        return
    for k0 in range(max(k_start, four), k_end, group):  # other group sizes, and a partial last group
        k1 = min(k0 + group, k_end)
        for n in range(N):
            g[n] = 0
        for k in range(k0, k1):
            av = as_lane(_left(a, m, k), b)
            for n in range(N):
                g[n] += av * b[k, n]
        for n in range(N):
            gr = _acc_round(g[n], mode, p)
            lost[n] += 1 if (gr == 0) & (g[n] != 0) else 0
            cs[n] = _acc_round(cs[n] + gr, mode, p)


@_one_thread_when_small
@njit(cache=True, parallel=True)
def gemm_general(a, b, out, rows, group, chunk, exact, frac_bits, emin, subnormals, ties_away,
                 max_value, flush_below, counts):
    """Exact GEMM with any accumulator, one output at a time (float64 operands whose products are
    exact in float64, i.e. values of formats up to fp32).

    Group sums are formed exactly as Shewchuk expansions, read out rounded to odd and rounded once
    into the format (`round_float`); group and chunk sums are accumulated with one correctly
    rounded add each (a float64 add, then `round_float`: correct since 53 >= 2p + 2). With
    ``exact`` the whole row-column sum is one expansion read out rounded to nearest. Only the
    rows listed in ``rows`` are computed; counts[i] = (overflows, underflows) of rows[i].
    """
    K = a.shape[1]
    N = b.shape[1]
    for i in prange(rows.size):
        m = rows[i]
        parts = np.empty(K + 1 if exact else group + 1, np.float64)
        nover = 0
        nunder = 0
        for n in range(N):
            if exact:
                np_ = 0
                for k in range(K):
                    pr = a[m, k] * b[k, n]
                    if pr != 0.0:
                        np_ = expansion_add(parts, np_, pr)
                out[m, n] = expansion_value(parts, np_, False)
                continue
            tot = 0.0
            for c0 in range(0, K, chunk):
                c1 = min(c0 + chunk, K)
                cs = 0.0
                for k0 in range(c0, c1, group):
                    k1 = min(k0 + group, c1)
                    np_ = 0
                    for k in range(k0, k1):
                        pr = a[m, k] * b[k, n]
                        if pr != 0.0:
                            np_ = expansion_add(parts, np_, pr)
                    gsum = expansion_value(parts, np_, True)
                    gr, o, u = round_float(gsum, frac_bits, emin, subnormals, ties_away,
                                           max_value, flush_below, False)
                    nover += o
                    nunder += u and gsum != 0.0
                    s = cs + gr
                    cs, o, u = round_float(s, frac_bits, emin, subnormals, ties_away, max_value,
                                           flush_below, False)
                    nover += o
                    nunder += u and s != 0.0
                s = tot + cs
                tot, o, u = round_float(s, frac_bits, emin, subnormals, ties_away, max_value,
                                        flush_below, False)
                nover += o
                nunder += u and s != 0.0
            out[m, n] = tot
        counts[i, 0] = nover
        counts[i, 1] = nunder


@njit(cache=True)
def round_int_scaled(s, e0, frac_bits, emin, subnormals, ties_away, max_value, flush_below):
    """Round the exact value s * 2^e0 (s an int64) onto a float format; as `round_float`.

    Integers beyond 2^53 are first read out rounded to odd (the discarded bits force the last
    bit to 1), which keeps the second rounding, to at most 24 significant bits, correct."""
    if s == 0:
        return 0.0, False, False
    x = float(s)
    if s > 9007199254740992 or s < -9007199254740992:
        back = np.int64(x)
        if back != s and (float_bits(x) & 1) == 0:
            x = np.nextafter(x, np.inf if s > back else -np.inf)
    return round_float(x * pow2(e0), frac_bits, emin, subnormals, ties_away, max_value,
                       flush_below, False)


@_one_thread_when_small
@njit(cache=True, parallel=True)
def gemm_shift_add(ai, shift, sign, out, group, chunk, e0, frac_bits, emin, subnormals,
                   ties_away, max_value, flush_below, counts):
    """The INT x log-FP shift-add GEMM: out = ai @ (sign * 2^(shift + e0)), exactly as the
    shift-add PE array computes it (Sun et al. 2020, section 6; IBM US 12,443,841 B2 claim 1).

    ``ai`` (M, K) int64 integer operand; ``shift`` (K, N) int64 shift amounts >= 0 and ``sign``
    (K, N) int64 in {-1, 0, 1} (0 for a zero value) of the log operand. Each product is the
    integer shifted left, a group sum is an exact int64 (product width + log2(group) <= 62 bits,
    checked by the wrapper), rounded once into the format (`round_int_scaled`); group and chunk
    sums accumulate with one correctly rounded add each. counts[m] = (overflows, underflows).
    """
    M, K = ai.shape
    N = shift.shape[1]
    for m in prange(M):
        acc = np.zeros(N, np.int64)
        cs = np.zeros(N)
        tot = np.zeros(N)
        nover = 0
        nunder = 0
        for c0 in range(0, K, chunk):
            c1 = min(c0 + chunk, K)
            for n in range(N):
                cs[n] = 0.0
            for g0 in range(c0, c1, group):
                g1 = min(g0 + group, c1)
                for n in range(N):
                    acc[n] = 0
                for k in range(g0, g1):
                    av = ai[m, k]
                    if av == 0:
                        continue
                    for n in range(N):
                        acc[n] += (av * sign[k, n]) << shift[k, n]
                for n in range(N):
                    gr, o, u = round_int_scaled(acc[n], e0, frac_bits, emin, subnormals, ties_away,
                                                max_value, flush_below)
                    nover += o
                    nunder += u and acc[n] != 0
                    t = cs[n] + gr
                    cs[n], o, u = round_float(t, frac_bits, emin, subnormals, ties_away, max_value,
                                              flush_below, False)
                    nover += o
                    nunder += u and t != 0.0
            for n in range(N):
                t = tot[n] + cs[n]
                tot[n], o, u = round_float(t, frac_bits, emin, subnormals, ties_away, max_value,
                                           flush_below, False)
                nover += o
                nunder += u and t != 0.0
        for n in range(N):
            out[m, n] = tot[n]
        counts[m, 0] = nover
        counts[m, 1] = nunder


# ---------------------------------------------------------------------------------------------
# quantize kernels
# ---------------------------------------------------------------------------------------------
@_one_thread_when_small
@njit(cache=True, parallel=True)
def quantize_log(x, values, codes, low, threshold, levels, ties_up, exponent_bits, counts):
    """Round flat float32 or float64 ``x`` onto a log format (exact, no ``log``, branch-free).

    The binary exponent field ef of |x| (as float64) alone decides between two codes
    (`numerics.log_rounding_tables`): the code is low[ef] + 1 if |x| >= threshold[ef] (ties up;
    > with ties down), else low[ef]. Writes the signed value ``levels[code]`` (a flushed value
    keeps its sign) and the code (sign in bit ``exponent_bits``). counts[0] += values with |x|
    above the largest level (clipped), counts[1] += non-zero values flushed to zero, counts[2] +=
    NaNs (coded as the largest magnitude; the caller refuses them). Integer sums: the same for
    any thread count.
    """
    n = x.size
    vmax = levels[levels.size - 1]
    nclip = 0
    nflush = 0
    nnan = 0
    for i in prange(n):
        xv = np.float64(x[i])
        bits = float_bits(xv)
        neg = bits < 0
        mag = bits & _ABS64
        ax = bits_float(mag)
        ef = mag >> 52
        t = threshold[ef]
        up = (ax > t) | (ties_up & (ax == t))
        c = low[ef] + up
        v = levels[c]
        values[i] = -v if neg else v
        codes[i] = c | (neg << exponent_bits)
        nclip += ax > vmax
        nflush += (c == 0) & (ax != 0.0)
        nnan += xv != xv
    counts[0] += nclip
    counts[1] += nflush
    counts[2] += nnan


@_one_thread_when_small
@njit(cache=True, parallel=True)
def quantize_uniform(x, step, lo, hi, codes, counts):
    """codes = rint(clip(x / step, lo, hi)) (round half to even), flat float64 ``x``.

    counts[0] += values with x / step outside [lo, hi] (clipped), counts[1] += non-zero values
    whose code is 0 (flushed).
    """
    n = x.size
    clip = np.zeros(n, np.bool_)
    flush = np.zeros(n, np.bool_)
    for i in prange(n):
        q = x[i] / step
        clip[i] = q < lo or q > hi
        q = min(max(q, lo), hi)
        c = np.rint(q)
        codes[i] = c
        flush[i] = c == 0.0 and x[i] != 0.0
    counts[0] += clip.sum()
    counts[1] += flush.sum()


# ---------------------------------------------------------------------------------------------
# stochastic rounding onto integer and log grids (64 random bits per rounding)
# ---------------------------------------------------------------------------------------------
_TWO64 = 18446744073709551616.0


@njit(cache=True, inline="always")
def sr_threshold(d, c):
    """floor(2^64 * d / c) for a float64 0 <= d < c and an integer c in 1..255: the random bits
    below which a stochastic rounding goes up (probability d / c, exact to 2^-64). With c > 1,
    d * 2^56 must be an integer (the wrapper's cases: d's lowest bit is at least 2^-52)."""
    if c == 1:
        return np.uint64(np.floor(d * _TWO64))
    big = np.uint64(d * 72057594037927936.0)  # d * 2^56, an integer below 2^64
    cc = np.uint64(c)
    return ((big // cc) << np.uint64(8)) + (((big % cc) << np.uint64(8)) // cc)


@_one_thread_when_small
@njit(cache=True, parallel=True)
def quantize_uniform_stochastic(x, step, lo, hi, codes, counts, seed, stp, tensor_id):
    """codes = clip(sign(q) (floor(|q|) + [up]), lo, hi) with q = x / step in float64 and ``up``
    when the 64 random bits of element i, keyed by (seed, stp, tensor_id, i), are below
    floor(2^64 (|q| - floor(|q|))) (exact: the fraction of |q| is exact in float64): unbiased
    inside [lo, hi], symmetric in sign. counts as `quantize_uniform`."""
    n = x.size
    clip = np.zeros(n, np.bool_)
    flush = np.zeros(n, np.bool_)
    for i in prange(n):
        q = x[i] / step
        clip[i] = q < lo or q > hi
        q = min(max(q, lo), hi)
        a = abs(q)
        f = np.floor(a)
        if counter_bits(seed, stp, tensor_id, i) < sr_threshold(a - f, 1):
            f += 1.0
        c = -f if q < 0 else f
        codes[i] = c
        flush[i] = c == 0.0 and x[i] != 0.0
    counts[0] += clip.sum()
    counts[1] += flush.sum()


@_one_thread_when_small
@njit(cache=True, parallel=True)
def quantize_log_stochastic(x, values, codes, b, bias, n_levels, phase_shift, levels, radix,
                            exponent_bits, counts, seed, stp, tensor_id):
    """Stochastic rounding of flat float64 ``x`` onto a radix-2^b log format: between the levels
    v <= |x| < radix * v, radix * v with probability (|x| - v) / ((radix - 1) v); below the
    smallest level v_min, v_min with probability |x| / v_min, else zero; from the largest level
    up, the largest level (saturation). Unbiased inside the format's range (logarithmic
    stochastic rounding and stochastic underflow, Chmiel et al., ICLR 2023, eqs. 10 and 12, for
    radix 2). The 64 random bits of element i are keyed by (seed, stp, tensor_id, i). Writes the
    signed value and the code; counts as `quantize_log`."""
    n = x.size
    clip = np.zeros(n, np.bool_)
    flush = np.zeros(n, np.bool_)
    vmin = levels[1]
    vmax = levels[n_levels]
    for i in prange(n):
        bits = float_bits(x[i])
        neg = bits < 0
        mag = bits & _ABS64
        ax = bits_float(mag)
        rbits = counter_bits(seed, stp, tensor_id, i)
        c = 0
        if ax >= vmax:
            c = n_levels
        elif ax >= vmin:
            e2 = ((mag >> 52) & 0x7FF) - 1023
            c = (e2 + phase_shift) // b + bias  # the level at or below |x|
            v = levels[c]
            if rbits < sr_threshold((ax - v) / v, radix - 1):
                c += 1
        elif ax != 0.0:
            if rbits < sr_threshold(ax / vmin, 1):
                c = 1
        v = levels[c]
        values[i] = -v if neg else v
        codes[i] = c | (neg << exponent_bits)
        clip[i] = ax > vmax
        flush[i] = c == 0 and ax != 0.0
    counts[0] += clip.sum()
    counts[1] += flush.sum()


# ---------------------------------------------------------------------------------------------
# random Hadamard transform
# ---------------------------------------------------------------------------------------------
@_one_thread_when_small
@njit(cache=True, parallel=True)
def hadamard_blocks(x, out, hadamard, signs):
    """out[a, i*n:(i+1)*n, c] = hadamard^T @ x[a, i*n:(i+1)*n, c] for each block i of n =
    len(hadamard) along the middle axis, every output the exact sum of n signed inputs rounded
    once to float32 (the transform along one axis of a tensor seen as (A, R, C)).

    ``hadamard`` (n, n) float64 of +-1 is diag(signs) times Sylvester's matrix. A block whose
    values span few enough bits (largest exponent - lowest set bit + log2(n) + 1 <= 53) runs the
    fast Walsh-Hadamard transform in float64, whose every partial sum is then exact; any other
    block sums each output as a Shewchuk expansion read out rounded to odd. Either way the float64
    value is the exact sum (or its round-to-odd), rounded to float32 once (correct: 53 >= 24 + 2).
    The butterflies run on all C columns of a block at once. ``x`` (A, R, C) float32, R a
    multiple of n; ``signs`` (n,) float64; ``out`` (A, R, C) float32.
    """
    A, R, C = x.shape
    n = hadamard.shape[0]
    log_n = 0
    while (1 << log_n) < n:
        log_n += 1
    nrb = R // n
    for t in prange(A * nrb):
        a = t // nrb
        r0 = (t - a * nrb) * n
        buf = np.empty((n, C), np.float64)
        hi = np.full(C, -100000, np.int64)
        lo = np.full(C, 100000, np.int64)
        for i in range(n):  # signed inputs, and each column's exponent span (zeros aside)
            s = signs[i]
            row = x[a, r0 + i]
            brow = buf[i]
            for c in range(C):
                v = np.float64(row[c])
                brow[c] = v * s
                e = np.int64((float_bits(v) & _ABS64) >> 52) - 1023
                live = v != 0.0
                hi[c] = max(hi[c], e if live else np.int64(-100000))
                lo[c] = min(lo[c], e - 23 if live else np.int64(100000))  # a float32's lowest possible set bit
        h = 1
        while h < n:  # the butterflies, on whole rows of the block
            for i0 in range(0, n, 2 * h):
                for i in range(i0, i0 + h):
                    top = buf[i]
                    bottom = buf[i + h]
                    for c in range(C):
                        u = top[c]
                        w = bottom[c]
                        top[c] = u + w
                        bottom[c] = u - w
            h *= 2
        for j in range(n):
            orow = out[a, r0 + j]
            brow = buf[j]
            for c in range(C):
                orow[c] = np.float32(brow[c])
        parts = np.empty(n + 1, np.float64)
        for c in range(C):  # a column whose partial sums may have rounded: exact sums instead
            if hi[c] - lo[c] + log_n + 1 > 53:
                for j in range(n):
                    np_ = 0
                    for i in range(n):
                        v = np.float64(x[a, r0 + i, c]) * hadamard[i, j]
                        if v != 0.0:
                            np_ = expansion_add(parts, np_, v)
                    out[a, r0 + j, c] = np.float32(expansion_value(parts, np_, True))


# ---------------------------------------------------------------------------------------------
# block-scaled GEMM: exact block sums, scaled exactly, accumulated with one rounding per add
# ---------------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _acc_add(a, t, native32, frac_bits, emin, subnormals, ties_away, max_value, flush_below):
    """One accumulator add: fl(a + t) rounded to odd, then to the format (the CPU's float32
    conversion with ``native32``, else `round_float`); returns (sum, overflowed, underflowed). An
    accumulator already at +-inf (or NaN) follows IEEE arithmetic: no new event."""
    if a - a != 0.0:
        return a + t, False, False
    s = a + t
    bb = s - a
    e = (a - (s - bb)) + (t - bb)
    bits = float_bits(s)
    fix = np.int64(e != 0.0) & np.int64((bits & 1) == 0)
    same = np.int64((float_bits(e) ^ bits) >= 0)  # e and s have the same sign: away from zero
    s = bits_float(bits + fix * (2 * same - 1))
    if native32:
        r = np.float64(np.float32(s))
        return r, (r - r != 0.0) & (s - s == 0.0), (r == 0.0) & (s != 0.0)
    r, over, under = round_float(s, frac_bits, emin, subnormals, ties_away, max_value, flush_below, False)
    return r, over & (s - s == 0.0), under & (s != 0.0)


@njit(cache=True, inline="always")
def _block_sums(a, b, block, m, j, ps):
    """ps[n] = the sum of a[m, k] * b[k, n] over block j (k = j*block.., the last block may be
    partial), in the lane type of ``b`` (exact: the wrapper checks that every partial sum is)."""
    K, N = b.shape
    k0 = j * block
    for n in range(N):
        ps[n] = a[m, k0] * b[k0, n]
    for k in range(k0 + 1, min(K, k0 + block)):
        av = a[m, k]
        for n in range(N):
            ps[n] += av * b[k, n]


@_one_thread_when_small
@njit(cache=True, parallel=True)
def gemm_block(a, b, block, sa, sb, out, native32, frac_bits, emin, subnormals, ties_away, max_value,
               flush_below, counts):
    """The block-scaled GEMM: out[m, n] = the sum over K blocks j, in increasing j, of
    (sum of a[m, k] * b[k, n] over block j) * sa[m, j] * sb[j, n], each add rounded once.

    ``a`` (M, K) and ``b`` (K, N) hold the elements (float32 or float64 lanes in which every
    partial block sum is exact: the wrapper checks it), in J = ceil(K / ``block``) blocks (the
    last may be partial), ``sa`` (M, J), ``sb`` (J, N) float64 block scales whose product with a block sum is exact
    (checked too). Each add is `_acc_add`: fl(acc + term) rounded to odd and then to the format
    (correct, since 53 >= 24 + 2 for binary32). counts[m] = (overflows, underflows) of row m: adds
    whose rounded sum became +-inf from a finite sum, or zero from a non-zero one.
    """
    M = a.shape[0]
    J, N = sb.shape
    for m in prange(M):
        acc = np.zeros(N, np.float64)
        ps = np.zeros(N, b.dtype)
        nover = 0
        nunder = 0
        for j in range(J):
            _block_sums(a, b, block, m, j, ps)
            s_a = sa[m, j]
            for n in range(N):
                r, o, u = _acc_add(acc[n], np.float64(ps[n]) * s_a * sb[j, n], native32, frac_bits, emin,
                                   subnormals, ties_away, max_value, flush_below)
                acc[n] = r
                nover += o
                nunder += u
        for n in range(N):
            out[m, n] = acc[n]
        counts[m, 0] = nover
        counts[m, 1] = nunder


@_one_thread_when_small
@njit(cache=True, parallel=True)
def gemm_block_fp32(a, b, block, sa, sb, out):
    """`gemm_block` with a binary32 accumulator when every scaled block sum is a binary32 value
    (the wrapper checks widths and exponent range): then each add is the CPU's float32 add of two
    binary32 values, which rounds once, to nearest even, as the model says. ``a``, ``b``, ``sa``,
    ``sb`` float32; ``out`` (M, N) float32."""
    M = a.shape[0]
    J, N = sb.shape
    for m in prange(M):
        acc = np.zeros(N, np.float32)
        ps = np.zeros(N, np.float32)
        for j in range(J):
            _block_sums(a, b, block, m, j, ps)
            s_a = sa[m, j]
            for n in range(N):
                acc[n] += ps[n] * s_a * sb[j, n]
        for n in range(N):
            out[m, n] = acc[n]


# ---------------------------------------------------------------------------------------------
# block quantization: tiles of an (A, R, C) array, one pass for the block maxima and one for the
# scaled, rounded elements
# ---------------------------------------------------------------------------------------------
_FLT_MAX64 = float(np.finfo(np.float32).max)


@njit(cache=True, inline="always")
def _binary32(v):
    """float ``v`` as binary32, +-inf and values beyond its range as +-FLT_MAX first (the block
    formats' input rule, `fourbit.traces.block_formats`), then rounded to nearest even."""
    if v > _FLT_MAX64:
        return np.float32(_FLT_MAX64)
    if v < -_FLT_MAX64:
        return np.float32(-_FLT_MAX64)
    return np.float32(v)


_TILE_TASK = 1 << 14  # elements per parallel task of `block_amax` and `block_round` (whole rows of tiles)


@njit(cache=True)
def _tasks(rows_of_tiles, tile_rows, cols):
    """(tasks, rows of tiles per task) so that a task holds about `_TILE_TASK` elements: its
    scratch rows are allocated once per task, not once per row of tiles."""
    per_task = max(1, _TILE_TASK // max(1, tile_rows * cols))
    return (rows_of_tiles + per_task - 1) // per_task, per_task


@_one_thread_when_small
@njit(cache=True, parallel=True)
def block_amax(x, tile_rows, tile_cols, amax, nan_tiles):
    """amax[a, i, j] = the largest |binary32(x)| of tile (i, j) of x[a]: rows i*tile_rows.., columns
    j*tile_cols.. (the last tiles may be partial). ``x`` (A, R, C) float32 or float64; ``amax``
    (A, ceil(R/tile_rows), ceil(C/tile_cols)) float32; ``nan_tiles`` (A * row tiles,) bool, set
    where a row of tiles holds a NaN (amax is then not valid). Per row of tiles, the column maxima
    over its rows first (a loop over whole rows from index 0, which vectorises: see
    `scan_operand`), then the maximum of each tile's columns."""
    A, R, C = x.shape
    nrb = amax.shape[1]
    ncb = amax.shape[2]
    tasks, per_task = _tasks(A * nrb, tile_rows, C)
    for task in prange(tasks):
        col_max = np.empty(C, np.float32)
        for t in range(task * per_task, min(A * nrb, (task + 1) * per_task)):
            a = t // nrb
            rb = t - a * nrb
            col_max[:] = 0.0
            nan = False
            for r in range(rb * tile_rows, min(R, (rb + 1) * tile_rows)):
                row = x[a, r]
                for c in range(C):
                    v = row[c]
                    nan |= v != v
                    col_max[c] = max(col_max[c], abs(_binary32(v)))
            for j in range(ncb):
                tile = col_max[j * tile_cols:min(C, (j + 1) * tile_cols)]
                m = np.float32(0.0)
                for c in range(tile.size):
                    m = max(m, tile[c])
                amax[a, rb, j] = m
            nan_tiles[t] = nan


@_one_thread_when_small
@njit(cache=True, parallel=True)
def block_round(x, tile_rows, tile_cols, scales, encode, mode, narrow, float_elements, frac_bits, emin,
                subnormals, ties_away, max_value, flush_below, stochastic, seed, step, tensor_id, out, counts):
    """The elements of a block-scaled tensor: each binary32(x) of tile (a, i, j) scaled by
    encode[a, i, j] and rounded onto the element format, saturating at +-``max_value``; +0 where
    scales[a, i, j] is 0. ``mode`` 0: x * encode in float64 (a power of two: exact), then to
    binary32 first when ``narrow``; 1: x * fp32(encode) in binary32; 2: x / fp32(encode) in
    binary32. Float elements round as `round_float` (`round_nearest_even` where it applies; or
    `round_float_stochastic`), integers to nearest even (or stochastically, as
    `quantize_uniform_stochastic`); stochastic bits of element (a, r, c) are keyed by its flat
    index (a*R + r)*C + c. ``out`` (A, R, C) float32; ``counts`` (A * row tiles, 3) int64: per
    row of tiles (clipped, flushed: zero from a non-zero x, zeros).

    Per row of tiles, each column's encode factor and whether its block scale is non-zero are
    laid out once (`_column_factors`); then per row the scaled values are formed and rounded
    (`_round_row`), each in a loop over the whole row from index 0 with no branch on the mode or
    the rounding (so that it vectorises: see `scan_operand`).
    """
    A, R, C = x.shape
    nrb = scales.shape[1]
    tasks, per_task = _tasks(A * nrb, tile_rows, C)
    for task in prange(tasks):
        q = np.empty(C, np.float64)
        enc64 = np.empty(C, np.float64)
        enc32 = np.empty(C, np.float32)
        live = np.empty(C, np.bool_)
        for t in range(task * per_task, min(A * nrb, (task + 1) * per_task)):
            a = t // nrb
            rb = t - a * nrb
            _column_factors(scales[a, rb], encode[a, rb], tile_cols, enc64, enc32, live)
            clipped = 0
            zeros = 0
            flushed = 0
            for r in range(rb * tile_rows, min(R, (rb + 1) * tile_rows)):
                row = x[a, r]
                _scaled_row(row, mode, narrow, enc64, enc32, live, q)
                c, z, f = _round_row(q, row, out[a, r], float_elements, frac_bits, emin, subnormals, ties_away,
                                     max_value, flush_below, stochastic, seed, step, tensor_id, (a * R + r) * C)
                clipped += c
                zeros += z
                flushed += f
            counts[t, 0] = clipped
            counts[t, 1] = flushed
            counts[t, 2] = zeros


@njit(cache=True, inline="always")
def _column_factors(scales, encode, tile_cols, enc64, enc32, live):
    """Each column's encode factor (float64 and float32) and whether its tile's scale is > 0,
    from one row of tiles' ``scales`` and ``encode``."""
    C = enc64.size
    for j in range(scales.size):
        for c in range(j * tile_cols, min(C, (j + 1) * tile_cols)):
            enc64[c] = encode[j]
            enc32[c] = np.float32(encode[j])
            live[c] = scales[j] > 0


@njit(cache=True, inline="always")
def _scaled_row(row, mode, narrow, enc64, enc32, live, q):
    """q = the scaled values of ``row`` (`block_round`'s modes), +0 in a tile whose scale is 0."""
    if mode == 0:
        for c in range(q.size):
            q[c] = np.float64(_binary32(row[c])) * enc64[c] if live[c] else 0.0
        if narrow:
            for c in range(q.size):
                q[c] = np.float64(np.float32(q[c]))
    elif mode == 1:
        for c in range(q.size):
            q[c] = np.float64(_binary32(row[c]) * enc32[c]) if live[c] else 0.0
    else:
        for c in range(q.size):
            q[c] = np.float64(_binary32(row[c]) / enc32[c]) if live[c] else 0.0


@njit(cache=True, inline="always")
def _round_row(q, row, orow, float_elements, frac_bits, emin, subnormals, ties_away, max_value, flush_below,
               stochastic, seed, step, tensor_id, base):
    """orow = the scaled values ``q`` rounded onto the element format (`block_round`), one loop
    per rounding; returns (clipped, zeros, flushed: zero from a non-zero value of ``row``)."""
    clipped = 0
    if float_elements and stochastic:
        for c in range(q.size):
            e, o, u = round_float_stochastic(q[c], counter_bits(seed, step, tensor_id, base + c), frac_bits,
                                             emin, subnormals, max_value, flush_below, True)
            orow[c] = np.float32(e)
            clipped += o
    elif float_elements and subnormals and not ties_away:
        for c in range(q.size):
            e, o, u = round_nearest_even(q[c], frac_bits, emin, max_value, True)
            orow[c] = np.float32(e)
            clipped += o
    elif float_elements:
        for c in range(q.size):
            e, o, u = round_float(q[c], frac_bits, emin, subnormals, ties_away, max_value, flush_below, True)
            orow[c] = np.float32(e)
            clipped += o
    elif stochastic:
        for c in range(q.size):
            v = q[c]
            clipped += (v < -max_value) | (v > max_value)
            v = min(max(v, -max_value), max_value)
            f = np.floor(abs(v))
            f += np.float64(counter_bits(seed, step, tensor_id, base + c) < sr_threshold(abs(v) - f, 1))
            orow[c] = np.float32(-f if v < 0 else f)
    else:
        for c in range(q.size):
            v = q[c]
            clipped += (v < -max_value) | (v > max_value)
            orow[c] = np.float32(np.rint(min(max(v, -max_value), max_value)))
    flushed, zeros, _ = _zero_counts(row, orow)
    return clipped, zeros, flushed


@_one_thread_when_small
@njit(cache=True, parallel=True, error_model="numpy")
def two_level_scales(amax, m, s_enc, s_dec, frac_bits, emin, subnormals, ties_away, max_value, flush_below,
                     scales, encode):
    """NVFP4's two-level block scales (`fourbit.models.scale_rules`), one block per element of
    flat float32 ``amax``: d = scale format(fp32(fp32(amax / m) * s_enc)) rounded to nearest and
    saturated (`round_nearest_even` where it applies), e = min(fp32(1 / fp32(d * s_dec)), FLT_MAX)
    (0 where d is 0); every operation in
    binary32 (``m``, ``s_enc``, ``s_dec`` float32). ``scales`` and ``encode`` float64 out."""
    flt_max = np.float32(_FLT_MAX64)
    one = np.float32(1.0)
    fast = subnormals and not ties_away
    for i in prange(amax.size):
        raw = np.float64((amax[i] / m) * s_enc)
        if fast:
            d, o, u = round_nearest_even(raw, frac_bits, emin, max_value, True)
        else:
            d, o, u = round_float(raw, frac_bits, emin, subnormals, ties_away, max_value, flush_below, True)
        d32 = np.float32(d)
        e = min(one / (d32 * s_dec), flt_max)
        scales[i] = d
        encode[i] = np.float64(e) if d32 > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# the compilation cache
# ---------------------------------------------------------------------------------------------
def kernels_cached() -> bool:
    """Whether Numba's on-disk cache (``cache=True``: ``__pycache__`` beside this file, or
    ``$NUMBA_CACHE_DIR``) holds compiled kernels of this module. False on a machine's first run,
    whose first steps compile every kernel they call (about 30 s on 2 cores for the main job's
    ``int4`` and ``fp32`` MLP steps, measured 2026-12-08: `fourbit run --epochs 1` 33 s cold, 4 s
    warm); True without the JIT."""
    if _DISABLE_JIT:
        return True
    import pathlib

    dispatcher = getattr(gemm_fast_ieee, "__wrapped__", gemm_fast_ieee)
    return any(pathlib.Path(dispatcher._cache._cache_path).glob(f"{__name__.rsplit('.', 1)[-1]}.*.nbi"))

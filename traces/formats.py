"""Number formats and the accumulator model, shared by the emulator and the simulator.

A format name in a trace means exactly one thing everywhere (design.md section 1), so the format
objects live here, in the one module both ``models`` (the emulator) and ``hwsim`` (the simulator)
import. Each format is a frozen value object with a standard name, its bit layout, its bias and
the list of every value it represents (``values()``); ``encode`` and ``decode`` convert between
exact values and codes. Rounding arbitrary values onto a format is the emulator's job
(``fourbit.models.numerics``); here a value that is not exactly representable is an error.

Formats (sources: design.md section 3; reference/technique.md sections 1.4, 1.6, 5.3, 6):

=============  =====  ===========================================================================
name           bits   values
=============  =====  ===========================================================================
``int4``       4      two's complement -8..7 (SAWB weights use the symmetric -7..7)
``uint4``      4      0..15 (PACT activations)
``int8``       8      -128..127
``int32``      32     the integer accumulator
``fp4_rR_eE``  1+E    radix-R logarithmic format, sign + E exponent bits, no mantissa
                      [Sun et al. NeurIPS 2020, section 3.1]: code 0 is +-0, code c in
                      1..2^E-1 is +-R^(c - 2^(E-1)); ``_odd`` suffix: the odd TPR phase,
                      every value times R^(-1/2) (section 3.3); R in {2, 4, 8, 16}, E in {2, 3, 4}.
                      ``fp4_r4_e3`` is the paper's radix-4 FP4: 0, +-1/64 .. +-64.
``fp4_e2m1``   4      OCP MX E2M1 (ml_dtypes ``float4_e2m1fn``; OCP Microscaling spec v1.0 section
                      5.3.3): bias 1, values 0, 0.5, 1, 1.5, 2, 3, 4, 6 and negatives, no inf, no
                      NaN, saturating; the element of MXFP4 and NVFP4
``fp8_e4m3``   8      OCP FP8 E4M3 (ml_dtypes ``float8_e4m3fn``): bias 7, subnormals, no inf, max 448;
                      NVFP4's block scale (positive values only)
``fp8_e5m2``   8      OCP FP8 E5M2 (ml_dtypes ``float8_e5m2``): bias 15, subnormals, inf, max 57344
``fp16``       16     IEEE 754 binary16: bias 15, subnormals, max 65504
``dlfloat16``  16     IBM DLFloat16 1-6-9 [Agrawal et al., ARITH 2019]: bias 31, no subnormals,
                      ties away from zero, exponent field 0 is a normal binade whose all-zero
                      code is +-0, the all-ones code is the single NaN/inf; max 2^32*(2-2^-8),
                      smallest 2^-31*(1+2^-9)
``bf16``       16     bfloat16 (ml_dtypes ``bfloat16``): binary32's exponent, 7 fraction bits, max
                      (2 - 2^-7) * 2^127
``fp32``       32     IEEE 754 binary32
``e8m0``       8      OCP MX E8M0 scale (ml_dtypes ``float8_e8m0fnu``; OCP MX v1.0 section 5.4.1):
                      unsigned powers of two 2^-127..2^127 (bias 127), code 0xFF is NaN, no zero
=============  =====  ===========================================================================

Block-scaled formats (MXFP4, NVFP4, INT4 blocks: `fourbit.traces.block_formats`) are known to
`get_format` by their names too.

`Accumulator` describes how a GEMM's products are summed (design.md section 3).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass
from typing import ClassVar

import ml_dtypes
import numpy as np

from fourbit.traces.errors import FormatError

_NAME = re.compile(r"[a-z][a-z0-9_]*")

__all__ = [
    "ACCUMULATOR_FORMATS",
    "Accumulator",
    "ExponentFormat",
    "FloatFormat",
    "Format",
    "IntFormat",
    "LogFormat",
    "SCALE_KINDS",
    "Scale",
    "TENSOR_SCALE",
    "format_from_spec",
    "format_names",
    "format_spec",
    "get_format",
    "register_format",
    "pack_nibbles",
    "unpack_nibbles",
]


@dataclass(frozen=True)
class Format:
    """Base of every number format: a standard name and a width in bits.

    What code may ask of any format (no code dispatches on a format's name):
    ``saturates`` (rounding beyond the largest value gives the largest value, not an infinity),
    ``has_inf``, ``has_nan``, ``dtype`` (the numpy or ml_dtypes type whose values are exactly this
    format's, or None), ``bits_per_element`` (storage per element, scales included), ``values()``
    (every value), ``holds(x)`` (which of ``x`` are values of the format) and
    ``representable_in(other)`` (every value of this format is one of ``other``).
    """

    name: str
    bits: int

    kind: ClassVar[str] = "format"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise FormatError(f"a format name is lower-case letters, digits and underscores, got {self.name!r}")
        if not isinstance(self.bits, int) or isinstance(self.bits, bool) or not 1 <= self.bits <= 64:
            raise FormatError(f"format {self.name!r}: bits must be an integer in 1..64, got {self.bits!r}")

    @property
    def bytes_per_value(self) -> float:
        """Storage per value in bytes, scales included (0.5 for 4-bit formats packed two per
        byte)."""
        return self.bits_per_element / 8

    @property
    def bits_per_element(self) -> float:
        """Bits stored per element, scales included: an element format's own width (a per-tensor
        scale is one register value, not stored per element)."""
        return float(self.bits)

    saturates: ClassVar[bool] = True
    has_inf: ClassVar[bool] = False
    has_nan: ClassVar[bool] = False

    @property
    def dtype(self) -> np.dtype | None:
        """The numpy dtype whose values are exactly this format's (None when there is none)."""
        return None

    def holds(self, x) -> np.ndarray:
        """Whether each value of ``x`` is exactly a value of this format (bool, shape of x)."""
        v = np.asarray(x, dtype=np.float64)
        out = np.zeros(v.shape, bool)
        values = self.values()
        finite = np.isfinite(values)
        out |= np.isin(v, values[finite])
        if self.has_inf:
            out |= np.isinf(v)
        return out

    def representable_in(self, other: Format) -> bool:
        """Whether every value of this format (infinities and NaN aside) is a value of ``other``."""
        if self.bits > 16:
            return self == other
        values = self.values()
        return bool(other.holds(values[np.isfinite(values)]).all())

    def values(self) -> np.ndarray:
        """Every value of the format, in code order (float64, shape (2**bits,))."""
        if self.bits > 16:
            raise FormatError(
                f"format {self.name!r} has 2**{self.bits} codes; values() lists formats of at "
                f"most 16 bits"
            )
        return self.decode(np.arange(2**self.bits, dtype=np.uint32).astype(self.code_dtype))

    @property
    def code_dtype(self) -> np.dtype:
        """The unsigned dtype that holds one code of this format."""
        return np.dtype(np.uint8 if self.bits <= 8 else np.uint16 if self.bits <= 16 else np.uint32)

    def decode(self, codes: np.ndarray) -> np.ndarray:  # pragma: no cover - overridden
        raise FormatError(f"format {self.name!r} cannot decode codes")

    def encode(self, values: np.ndarray) -> np.ndarray:  # pragma: no cover - overridden
        raise FormatError(f"format {self.name!r} cannot encode values")

    def _check_exact(self, values: np.ndarray, codes: np.ndarray) -> np.ndarray:
        back = self.decode(codes)
        bad = ~((back == values) | (np.isnan(back) & np.isnan(values)))
        if np.any(bad):
            first = np.asarray(values)[bad].ravel()[0]
            raise FormatError(
                f"value {first!r} is not exactly representable in format {self.name!r}; round it "
                f"first (models.numerics)"
            )
        return codes


@dataclass(frozen=True)
class IntFormat(Format):
    """A two's complement (``signed``) or unsigned integer format.

    Codes are the ``bits`` low bits of the integer (two's complement for signed formats).
    """

    signed: bool = True
    kind: ClassVar[str] = "int"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.signed, bool):
            raise FormatError(f"format {self.name!r}: signed must be true or false, got {self.signed!r}")

    @property
    def min_value(self) -> int:
        return -(2 ** (self.bits - 1)) if self.signed else 0

    @property
    def max_value(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def layout(self) -> str:
        kind = "two's complement" if self.signed else "unsigned"
        return f"{kind}, {self.bits} bits"

    bias: ClassVar[int] = 0

    @property
    def dtype(self) -> np.dtype | None:
        """ml_dtypes ``int4``/``uint4`` for 4 bits, numpy's integer of 8, 16, 32 or 64 bits."""
        name = f"{'' if self.signed else 'u'}int{self.bits}"
        found = getattr(ml_dtypes, name, None) if self.bits == 4 else getattr(np, name, None)
        return None if found is None else np.dtype(found)

    def holds(self, x) -> np.ndarray:
        v = np.asarray(x, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            return np.isfinite(v) & (v == np.rint(v)) & (v >= self.min_value) & (v <= self.max_value)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        c = np.asarray(codes).astype(np.int64) & (2**self.bits - 1)
        if self.signed:
            c = np.where(c >= 2 ** (self.bits - 1), c - 2**self.bits, c)
        return c.astype(np.float64)

    def encode(self, values: np.ndarray) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64)
        if np.any(~np.isfinite(v)) or np.any(v != np.rint(v)):
            raise FormatError(f"format {self.name!r} holds integers only")
        if v.size and (v.min() < self.min_value or v.max() > self.max_value):
            raise FormatError(
                f"value out of range for {self.name!r}: allowed {self.min_value}..{self.max_value}"
            )
        return (v.astype(np.int64) & (2**self.bits - 1)).astype(self.code_dtype)


@dataclass(frozen=True)
class LogFormat(Format):
    """Radix-``radix`` logarithmic format: sign + ``exponent_bits`` exponent bits, no mantissa.

    Code layout ``s eee`` (sign in the top bit): exponent code 0 is +-0, exponent code
    c in 1..2^e-1 is +-radix^(c - bias) with bias = 2^(e-1); the odd TPR phase multiplies every
    value by radix^(-1/2) [Sun et al., NeurIPS 2020, sections 3.1 and 3.3; technique.md 1.4, 1.6].
    The odd phase exists only where radix^(1/2) is a power of two (radix 4 and 16).
    """

    radix: int = 4
    exponent_bits: int = 3
    phase: str = "even"
    kind: ClassVar[str] = "log"

    RADIXES: ClassVar[tuple[int, ...]] = (2, 4, 8, 16)
    EXPONENT_BITS: ClassVar[tuple[int, ...]] = (2, 3, 4)
    PHASES: ClassVar[tuple[str, ...]] = ("even", "odd")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.radix not in self.RADIXES or self.exponent_bits not in self.EXPONENT_BITS or self.phase not in self.PHASES:
            raise FormatError(f"format {self.name!r}: radix {self.radix!r}, exponent_bits {self.exponent_bits!r}, "
                              f"phase {self.phase!r}; allowed {self.RADIXES}, {self.EXPONENT_BITS}, {self.PHASES}")
        if self.bits != 1 + self.exponent_bits or (self.phase == "odd" and self.radix not in (4, 16)):
            raise FormatError(f"format {self.name!r}: bits must be 1 + exponent_bits and the odd phase needs radix 4 or 16")

    @classmethod
    def make(cls, radix: int = 4, exponent_bits: int = 3, phase: str = "even") -> LogFormat:
        """Validate the parameters and build the format (the usual constructor)."""
        if radix not in cls.RADIXES:
            raise FormatError(f"radix must be one of {cls.RADIXES}, got {radix!r}")
        if exponent_bits not in cls.EXPONENT_BITS:
            raise FormatError(f"exponent_bits must be one of {cls.EXPONENT_BITS}, got {exponent_bits!r}")
        if phase not in cls.PHASES:
            raise FormatError(f"phase must be one of {cls.PHASES}, got {phase!r}")
        if phase == "odd" and radix not in (4, 16):
            raise FormatError(
                f"radix {radix} has no odd phase (radix**0.5 is not a power of two); Two-Phase "
                f"Rounding exists for radix 4 and 16 only"
            )
        name = f"fp4_r{radix}_e{exponent_bits}" + ("_odd" if phase == "odd" else "")
        return cls(name=name, bits=1 + exponent_bits, radix=radix, exponent_bits=exponent_bits, phase=phase)

    @property
    def log2_radix(self) -> int:
        """b = log2(radix)."""
        return self.radix.bit_length() - 1

    @property
    def bias(self) -> int:
        """Exponent bias in radix units: 2^(e-1)."""
        return 2 ** (self.exponent_bits - 1)

    @property
    def phase_shift(self) -> int:
        """Binary exponent offset of the phase: 0 (even) or b/2 (odd)."""
        return self.log2_radix // 2 if self.phase == "odd" else 0

    @property
    def n_levels(self) -> int:
        """Number of non-zero magnitudes: 2^e - 1."""
        return 2**self.exponent_bits - 1

    @property
    def layout(self) -> str:
        return f"1-{self.exponent_bits}-0 (sign, exponent, mantissa), radix {self.radix}, {self.phase} phase"

    def level_exponents(self) -> np.ndarray:
        """Binary exponents of the magnitudes of codes 1..n (int64, shape (n,))."""
        c = np.arange(1, self.n_levels + 1, dtype=np.int64)
        return self.log2_radix * (c - self.bias) - self.phase_shift

    def levels(self) -> np.ndarray:
        """Non-zero magnitudes of codes 1..n, increasing (float64, shape (n,))."""
        return np.ldexp(1.0, self.level_exponents())

    def thresholds(self) -> np.ndarray:
        """Rounding thresholds T_1..T_n (float64, shape (n,)); |x| >= T_c rounds to code >= c.

        Between neighbouring magnitudes v and r*v the threshold is the arithmetic midpoint
        (1 + 1/r)/2 * r*v; below the smallest magnitude v_min the flush threshold follows the same
        rule, (1 + 1/r)/2 * v_min [Sun et al. 2020, Eq. 1 and Fig. 2(c)]. For radix 4 (even):
        0.009765625, 0.0390625, 0.15625, 0.625, 2.5, 10, 40. All are exact binary numbers.
        """
        lower = self.levels() / self.radix  # the neighbour below each level (v_min / r for code 1)
        return (self.radix + 1) / 2 * lower

    @property
    def max_value(self) -> float:
        return float(self.levels()[-1])

    @property
    def min_positive(self) -> float:
        return float(self.levels()[0])

    def decode(self, codes: np.ndarray) -> np.ndarray:
        c = np.asarray(codes).astype(np.int64)
        mag_code = c & (2**self.exponent_bits - 1)
        sign = np.where(c >> self.exponent_bits & 1, -1.0, 1.0)
        mags = np.concatenate([[0.0], self.levels()])
        return sign * mags[mag_code]

    def encode(self, values: np.ndarray) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64)
        mags = np.concatenate([[0.0], self.levels()])
        idx = np.clip(np.searchsorted(mags, np.abs(v)), 0, self.n_levels)
        codes = (idx | (np.signbit(v).astype(np.int64) << self.exponent_bits)).astype(np.uint8)
        return self._check_exact(v, codes)


@dataclass(frozen=True)
class FloatFormat(Format):
    """A binary floating-point format with ``exponent_bits`` and ``mantissa_bits``.

    ``ties`` is the rounding tie rule of the hardware (``even`` or ``away``), ``subnormals``
    whether the lowest exponent field holds subnormals, ``has_inf`` whether overflow has an
    infinity code, ``has_nan`` whether a code is NaN, ``saturates`` whether rounding clamps
    overflow to +-max (the FP8 formats as the HFP8 recipes use them, design.md section 3) instead
    of giving +-inf, ``numpy_type`` the name of the numpy or ml_dtypes type with exactly these
    values ("" for none).
    """

    exponent_bits: int = 5
    mantissa_bits: int = 10
    bias: int = 15
    subnormals: bool = True
    ties: str = "even"
    has_inf: bool = True
    max_value: float = 65504.0
    min_normal: float = 2.0**-14
    has_nan: bool = True
    saturates: bool = False
    numpy_type: str = ""
    kind: ClassVar[str] = "float"

    def __post_init__(self) -> None:
        super().__post_init__()
        where = f"format {self.name!r}"
        for field_, lo, hi in (("exponent_bits", 1, 11), ("mantissa_bits", 0, 52)):
            v = getattr(self, field_)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise FormatError(f"{where}: {field_} must be an integer in {lo}..{hi}, got {v!r}")
        if self.bits != 1 + self.exponent_bits + self.mantissa_bits:
            raise FormatError(f"{where}: bits {self.bits} is not 1 + exponent_bits + mantissa_bits "
                              f"({1 + self.exponent_bits + self.mantissa_bits})")
        if self.ties not in ("even", "away"):
            raise FormatError(f"{where}: ties must be 'even' or 'away', got {self.ties!r}")
        for field_ in ("subnormals", "has_inf", "has_nan", "saturates"):
            if not isinstance(getattr(self, field_), bool):
                raise FormatError(f"{where}: {field_} must be true or false, got {getattr(self, field_)!r}")
        for field_ in ("max_value", "min_normal"):
            v = getattr(self, field_)
            if not isinstance(v, int | float) or isinstance(v, bool) or not (math.isfinite(v) and v > 0):
                raise FormatError(f"{where}: {field_} must be a finite number > 0, got {v!r}")
        if self.min_normal >= self.max_value:
            raise FormatError(f"{where}: min_normal {self.min_normal} is not below max_value {self.max_value}")
        if not isinstance(self.numpy_type, str):
            raise FormatError(f"{where}: numpy_type must be a type name or empty, got {self.numpy_type!r}")
        if self.numpy_type:
            found = getattr(ml_dtypes, self.numpy_type, None) or getattr(np, self.numpy_type, None)
            if found is None:
                raise FormatError(f"{where}: numpy_type {self.numpy_type!r} is neither an ml_dtypes nor a numpy type")
            info = ml_dtypes.finfo(found)
            if (info.nmant, float(info.max), float(info.smallest_normal)) != (self.mantissa_bits, float(self.max_value),
                                                                              float(self.min_normal)):
                raise FormatError(f"{where}: numpy_type {self.numpy_type} has {info.nmant} mantissa bits, max "
                                  f"{float(info.max)} and smallest normal {float(info.smallest_normal)}, not "
                                  f"{self.mantissa_bits}, {self.max_value} and {self.min_normal}")

    @property
    def dtype(self) -> np.dtype | None:
        if not self.numpy_type:
            return None
        return np.dtype(getattr(ml_dtypes, self.numpy_type, None) or getattr(np, self.numpy_type))

    @property
    def ieee_dtype(self) -> np.dtype | None:
        """numpy's float16 or float32 when this format is that IEEE 754 binary format with its
        default arithmetic (round to nearest even, overflow to inf): then the CPU's own
        conversions and arithmetic compute it. None otherwise."""
        dt = self.dtype
        if dt in (np.dtype(np.float16), np.dtype(np.float32)) and self.ties == "even" and not self.saturates:
            return dt
        return None

    def holds(self, x) -> np.ndarray:
        v = np.asarray(x, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            back = self.decode(self._encode_nearest(v))
        return (back == v) & (np.isfinite(v) | self.has_inf)

    def representable_in(self, other: Format) -> bool:
        if self.bits <= 16 or not isinstance(other, FloatFormat):
            return super().representable_in(other)
        smallest = lambda f: f.min_positive  # noqa: E731
        return (self.mantissa_bits <= other.mantissa_bits and self.max_value <= other.max_value
                and smallest(self) >= smallest(other) and self.min_normal >= other.min_normal)

    @property
    def precision(self) -> int:
        """Significand bits including the implicit one: p = mantissa_bits + 1."""
        return self.mantissa_bits + 1

    @property
    def emin(self) -> int:
        """Binary exponent of the smallest normal binade."""
        return int(np.frexp(self.min_normal)[1]) - 1

    @property
    def min_positive(self) -> float:
        """Smallest positive value (a subnormal where the format has them)."""
        if self.subnormals:
            return float(np.ldexp(1.0, self.emin - self.mantissa_bits))
        return self.min_normal

    @property
    def layout(self) -> str:
        return f"1-{self.exponent_bits}-{self.mantissa_bits} (sign, exponent, mantissa), bias {self.bias}"

    def decode(self, codes: np.ndarray) -> np.ndarray:
        c = np.asarray(codes)
        dt = self.dtype
        if dt is not None:
            raw = c.astype(np.dtype(f"u{dt.itemsize}"))
            with np.errstate(invalid="ignore"):  # NaN codes stay NaN
                return raw.view(dt).astype(np.float64)
        if (self.exponent_bits, self.mantissa_bits, self.bias, self.subnormals) == (6, 9, 31, False):
            return _decode_dlfloat16(c)
        raise FormatError(f"format {self.name!r} has no numpy type and no decoder")

    def _encode_nearest(self, v: np.ndarray) -> np.ndarray:
        """Codes of the values nearest to ``v`` (exact values give their own codes)."""
        dt = self.dtype
        if dt is not None:
            return v.astype(dt).view(np.dtype(f"u{dt.itemsize}")).astype(self.code_dtype)
        if (self.exponent_bits, self.mantissa_bits, self.bias, self.subnormals) == (6, 9, 31, False):
            return _encode_dlfloat16(v)
        raise FormatError(f"format {self.name!r} has no numpy type and no encoder")

    def encode(self, values: np.ndarray) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64)
        return self._check_exact(v, self._encode_nearest(v))

@dataclass(frozen=True)
class ExponentFormat(Format):
    """An unsigned power-of-two format with ``exponent_bits`` bits and no sign or fraction: code
    c in 0..2^e - 2 is 2^(c - bias), the all-ones code is NaN (when ``has_nan``), there is no zero
    and no infinity. ``e8m0`` (8 bits, bias 127: 2^-127..2^127) is the OCP MX block scale (OCP
    Microscaling Formats spec v1.0, section 5.4.1; ml_dtypes ``float8_e8m0fnu``)."""

    exponent_bits: int = 8
    bias: int = 127
    has_nan: bool = True
    numpy_type: str = ""
    kind: ClassVar[str] = "exponent"

    def __post_init__(self) -> None:
        super().__post_init__()
        where = f"format {self.name!r}"
        if not isinstance(self.exponent_bits, int) or isinstance(self.exponent_bits, bool) \
                or not 1 <= self.exponent_bits <= 10 or self.bits != self.exponent_bits:
            raise FormatError(f"{where}: exponent_bits must be an integer in 1..10 equal to bits, got "
                              f"{self.exponent_bits!r} with bits {self.bits!r}")
        if not isinstance(self.bias, int) or isinstance(self.bias, bool):
            raise FormatError(f"{where}: bias must be an integer, got {self.bias!r}")
        if not isinstance(self.has_nan, bool) or not isinstance(self.numpy_type, str):
            raise FormatError(f"{where}: has_nan must be true or false and numpy_type a type name or empty")
        if self.numpy_type:
            found = getattr(ml_dtypes, self.numpy_type, None)
            info = None if found is None else ml_dtypes.finfo(found)
            if info is None or (info.nmant, float(info.max), float(info.smallest_normal)) != (
                    0, self.max_value, self.min_value):
                raise FormatError(f"{where}: numpy_type {self.numpy_type!r} is not an ml_dtypes type with the values "
                                  f"2^{self.min_exponent}..2^{self.max_exponent}")

    @property
    def min_exponent(self) -> int:
        return -self.bias

    @property
    def max_exponent(self) -> int:
        return 2**self.exponent_bits - 1 - int(self.has_nan) - self.bias

    @property
    def min_value(self) -> float:
        return math.ldexp(1.0, self.min_exponent)

    @property
    def max_value(self) -> float:
        return math.ldexp(1.0, self.max_exponent)

    @property
    def layout(self) -> str:
        return f"0-{self.exponent_bits}-0 (exponent only, unsigned), bias {self.bias}"

    @property
    def dtype(self) -> np.dtype | None:
        return np.dtype(getattr(ml_dtypes, self.numpy_type)) if self.numpy_type else None

    def holds(self, x) -> np.ndarray:
        v = np.asarray(x, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            m, e = np.frexp(v)
        return (m == 0.5) & (e - 1 >= self.min_exponent) & (e - 1 <= self.max_exponent)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        c = np.asarray(codes).astype(np.int64) & (2**self.bits - 1)
        out = np.ldexp(1.0, c - self.bias)
        if self.has_nan:
            out = np.where(c == 2**self.bits - 1, np.nan, out)
        return out

    def encode(self, values: np.ndarray) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64)
        ok = self.holds(v) | (np.isnan(v) & self.has_nan)
        if not ok.all():
            raise FormatError(f"value {v[~ok].ravel()[0]!r} is not exactly representable in format {self.name!r} "
                              f"(powers of two 2^{self.min_exponent}..2^{self.max_exponent})")
        e = np.frexp(np.where(np.isnan(v), 1.0, v))[1] - 1
        return np.where(np.isnan(v), 2**self.bits - 1, e + self.bias).astype(self.code_dtype)


def _decode_dlfloat16(codes: np.ndarray) -> np.ndarray:
    c = np.asarray(codes).astype(np.int64) & 0xFFFF
    sign = np.where(c >> 15, -1.0, 1.0)
    exp = (c >> 9) & 0x3F
    frac = c & 0x1FF
    mag = np.ldexp(1.0 + frac / 512.0, exp - 31)
    mag = np.where((exp == 0) & (frac == 0), 0.0, mag)
    mag = np.where((exp == 63) & (frac == 0x1FF), np.inf, mag)
    return sign * mag


def _encode_dlfloat16(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    a = np.abs(v)
    m, e = np.frexp(np.where((a > 0) & np.isfinite(a), a, 1.0))  # a = m * 2^e, m in [0.5, 1)
    exp = e - 1 + 31
    frac = np.rint((m * 2 - 1) * 512).astype(np.int64)
    code = (np.clip(exp, 0, 63) << 9) | np.clip(frac, 0, 511)
    code = np.where(a == 0, 0, code)
    code = np.where(np.isinf(a), (63 << 9) | 0x1FF, code)
    code = code | (np.signbit(v).astype(np.int64) << 15)
    return code.astype(np.uint16)


_FIXED: dict[str, Format] = {
    "int4": IntFormat("int4", 4, signed=True),
    "uint4": IntFormat("uint4", 4, signed=False),
    "int8": IntFormat("int8", 8, signed=True),
    "int32": IntFormat("int32", 32, signed=True),
    "fp8_e4m3": FloatFormat(
        "fp8_e4m3", 8, exponent_bits=4, mantissa_bits=3, bias=7, has_inf=False,
        max_value=448.0, min_normal=2.0**-6, saturates=True, numpy_type="float8_e4m3fn",
    ),
    "fp4_e2m1": FloatFormat(
        "fp4_e2m1", 4, exponent_bits=2, mantissa_bits=1, bias=1, has_inf=False, has_nan=False,
        max_value=6.0, min_normal=1.0, saturates=True, numpy_type="float4_e2m1fn",
    ),
    "fp8_e5m2": FloatFormat(
        "fp8_e5m2", 8, exponent_bits=5, mantissa_bits=2, bias=15, max_value=57344.0,
        min_normal=2.0**-14, saturates=True, numpy_type="float8_e5m2",
    ),
    "fp16": FloatFormat("fp16", 16, numpy_type="float16"),
    "dlfloat16": FloatFormat(
        "dlfloat16", 16, exponent_bits=6, mantissa_bits=9, bias=31, subnormals=False,
        ties="away", max_value=2.0**32 * (2 - 2.0**-8), min_normal=2.0**-31 * (1 + 2.0**-9),
        has_nan=False,  # one code for NaN and infinity, decoded as inf (Agrawal et al. 2019)
    ),
    "bf16": FloatFormat(
        "bf16", 16, exponent_bits=8, mantissa_bits=7, bias=127, max_value=float(ml_dtypes.finfo(ml_dtypes.bfloat16).max),
        min_normal=2.0**-126, numpy_type="bfloat16",
    ),
    "e8m0": ExponentFormat("e8m0", 8, exponent_bits=8, bias=127, numpy_type="float8_e8m0fnu"),
    "fp32": FloatFormat(
        "fp32", 32, exponent_bits=8, mantissa_bits=23, bias=127,
        max_value=float(np.finfo(np.float32).max), min_normal=2.0**-126, numpy_type="float32",
    ),
}

_LOG_NAME = re.compile(r"^fp4_r(\d+)_e(\d+)(_odd)?$")
_REGISTERED: dict[str, Format] = {}


def _kinds() -> dict[str, type]:
    """Every kind of format by its ``kind`` name (block formats live in their own module)."""
    from fourbit.traces.block_formats import BlockFormat

    return {cls.kind: cls for cls in (IntFormat, LogFormat, FloatFormat, ExponentFormat, BlockFormat)}


def register_format(fmt: Format) -> Format:
    """Make ``fmt`` known by its name to every part of fourbit (`get_format`), e.g. a format a
    user defines; registering the same definition again is a no-op. Traces record the definition
    of every format they use, and reading one registers the formats it defines.

    Raises FormatError when the name is taken by a different format."""
    kinds = _kinds()
    if type(fmt) not in kinds.values():
        raise FormatError(f"register_format takes one of {', '.join(c.__name__ for c in kinds.values())}, "
                          f"got {type(fmt).__name__}")
    try:
        known = get_format(fmt.name)
    except FormatError:
        _REGISTERED[fmt.name] = fmt
        return fmt
    if known != fmt:
        raise FormatError(f"format name {fmt.name!r} is taken by a different format ({known!r})")
    return known


def unregister_formats(names: list[str]) -> None:
    """Forget formats `register_format` added (a reader undoing what a refused trace defined)."""
    for name in names:
        _REGISTERED.pop(name, None)


def format_spec(fmt: Format) -> dict:
    """A JSON-able definition of ``fmt``: its kind and every field (`format_from_spec` inverts it)."""
    return {"kind": fmt.kind, **dataclasses.asdict(fmt)}


def format_from_spec(spec: dict) -> Format:
    """The format a `format_spec` dict defines.

    Raises FormatError for an unknown kind, missing or unknown fields, or values of the wrong type."""
    kinds = _kinds()
    if not isinstance(spec, dict) or spec.get("kind") not in kinds:
        raise FormatError(f"a format definition needs a kind, one of {tuple(kinds)}, got {spec!r}")
    cls = kinds[spec["kind"]]
    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    values = {k: v for k, v in spec.items() if k != "kind"}
    unknown = sorted(set(values) - set(fields))
    if unknown or not {"name", "bits"} <= set(values):
        raise FormatError(f"format definition {spec!r}: unknown fields {unknown} or no name and bits")
    for key, value in values.items():
        want = {"int": int, "float": (int, float), "bool": bool, "str": str}.get(str(fields[key]))
        if want is not None and (not isinstance(value, want) or (want is int and isinstance(value, bool))):
            raise FormatError(f"format definition of {values.get('name')!r}: {key} = {value!r} is not {fields[key]}")
    return cls(**values)


@functools.cache
def _builtin(name: str) -> Format:
    if name in _FIXED:
        return _FIXED[name]
    m = _LOG_NAME.match(str(name))
    if m:
        return LogFormat.make(int(m.group(1)), int(m.group(2)), "odd" if m.group(3) else "even")
    from fourbit.traces.block_formats import parse_block_name

    block = parse_block_name(name)
    if block is not None:
        return block
    raise FormatError(
        f"unknown format {name!r}; allowed: {', '.join([*_FIXED, *_REGISTERED])}, fp4_r{{2,4,8,16}}_e{{2,3,4}} "
        f"with an optional _odd suffix (radix 4 and 16), or a block format: mxfp4, nvfp4 or int4_block with "
        f"optional _b<N>, _e8m0/_e4m3/_bf16/_fp16, _floor/_ceil/_two_level/_amax and _2d suffixes"
    )


def get_format(name: str) -> Format:
    """The format called ``name`` (see the module table; also the formats `register_format`
    made known).

    Raises
    ------
    FormatError
        For an unknown name or invalid fp4 parameters; the message lists the allowed names.
    """
    if isinstance(name, Format):
        return name
    if name in _REGISTERED:
        return _REGISTERED[name]
    return _builtin(name)


def format_names() -> list[str]:
    """Every format name, fp4 variants included."""
    logs = [
        LogFormat.make(r, e, p).name
        for r in LogFormat.RADIXES
        for e in LogFormat.EXPONENT_BITS
        for p in LogFormat.PHASES
        if not (p == "odd" and r not in (4, 16))
    ]
    from fourbit.traces.block_formats import block_format_names

    return list(_FIXED) + logs + block_format_names() + list(_REGISTERED)


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """Pack 4-bit codes two per byte, low nibble first (uint8, shape (ceil(n/2),)).

    Raises
    ------
    FormatError
        If a code does not fit in 4 bits.
    """
    c = np.asarray(codes).astype(np.int64).ravel()
    if c.size and (c.min() < 0 or c.max() > 15):
        raise FormatError("pack_nibbles takes codes in 0..15 (4-bit formats)")
    if c.size % 2:
        c = np.append(c, 0)
    return (c[0::2] | (c[1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray, count: int) -> np.ndarray:
    """Inverse of `pack_nibbles`: the first ``count`` codes (uint8, shape (count,))."""
    p = np.asarray(packed, dtype=np.uint8).ravel()
    out = np.empty(p.size * 2, dtype=np.uint8)
    out[0::2] = p & 0xF
    out[1::2] = p >> 4
    if count > out.size:
        raise FormatError(f"asked for {count} codes, packed data holds {out.size}")
    return out[:count]


ACCUMULATOR_FORMATS = ("exact", "int32", "fp32", "fp16", "dlfloat16")


@dataclass(frozen=True)
class Accumulator:
    """How a GEMM sums its products (design.md section 3).

    Products are summed exactly in groups of ``group`` consecutive k-indices (the 4-way
    INT4xFP4 inner product of Sun et al. 2020, section 6, and its adder tree); each group sum is
    rounded once into ``format``; group sums are accumulated within chunks of ``chunk``
    k-indices (a multiple of ``group``; chunk-based accumulation after Wang et al. 2018); chunk
    sums are accumulated in the same format; everything in increasing k.

    Parameters
    ----------
    format : {"exact", "int32", "fp32", "fp16", "dlfloat16"}
        ``exact`` is the mathematical sum (rounded once to float64); ``int32`` takes integer
        operands and overflow is an error.
    group : int >= 1
    chunk : int, "array" or None
        ``None`` is one chunk over all of K; ``"array"`` means ``macs_per_pe * rows`` of the chip
        being modelled and must be resolved with `resolve` before a GEMM runs.

    Raises
    ------
    FormatError
        For an unknown format or a bad group/chunk.
    """

    format: str = "fp16"
    group: int = 4
    chunk: int | str | None = 64

    def __post_init__(self) -> None:
        if self.format not in ACCUMULATOR_FORMATS:
            raise FormatError(
                f"accumulator format must be one of {ACCUMULATOR_FORMATS}, got {self.format!r}"
            )
        if not isinstance(self.group, int | np.integer) or isinstance(self.group, bool) or self.group < 1:
            raise FormatError(f"accumulator group must be an integer >= 1, got {self.group!r}")
        if self.sums_exactly:
            # integer and exact sums do not depend on the order: one canonical object
            object.__setattr__(self, "group", 1)
            object.__setattr__(self, "chunk", None)
            return
        c = self.chunk
        if c is None or c == "array":
            return
        if not isinstance(c, int | np.integer) or isinstance(c, bool) or c < 1 or c % self.group:
            raise FormatError(
                f"accumulator chunk must be a positive multiple of group={self.group}, 'array' or "
                f"None, got {c!r}"
            )

    def resolve(self, rows: int, macs_per_pe: int) -> Accumulator:
        """Replace ``chunk="array"`` by ``macs_per_pe * rows``."""
        if self.chunk != "array":
            return self
        return Accumulator(self.format, self.group, int(rows) * int(macs_per_pe))

    @property
    def value_format(self) -> Format | None:
        """The format every accumulator add rounds to (None for ``exact``)."""
        return None if self.format == "exact" else get_format(self.format)

    @property
    def is_exact(self) -> bool:
        """The mathematical sum (``exact``): no rounding at all."""
        return self.value_format is None

    @property
    def is_integer(self) -> bool:
        """An integer accumulator (``int32``): integer operands, exact sums, overflow an error."""
        return isinstance(self.value_format, IntFormat)

    @property
    def sums_exactly(self) -> bool:
        """Whether the result is the exact sum (``exact`` or an integer accumulator): then the
        order of the adds does not matter."""
        return self.is_exact or self.is_integer

    @property
    def name(self) -> str:
        """Canonical name, e.g. ``fp16/g4/c64``, ``fp32/g1``, ``int32``, ``exact``."""
        if self.sums_exactly:
            return self.format
        chunk = "" if self.chunk is None else f"/c{self.chunk}"
        return f"{self.format}/g{self.group}{chunk}"

    @classmethod
    def parse(cls, name: str) -> Accumulator:
        """Inverse of `name`.

        Raises
        ------
        FormatError
            If ``name`` is not of the form ``FORMAT[/gGROUP[/cCHUNK]]``.
        """
        m = re.match(r"^([a-z0-9]+)(?:/g(\d+))?(?:/c(\d+|array))?$", str(name))
        if not m:
            raise FormatError(f"bad accumulator name {name!r}; expected e.g. 'fp16/g4/c64'")
        fmt, group, chunk = m.groups()
        if fmt in ("exact", "int32"):
            return cls(fmt, 1, None)
        chunk_v: int | str | None = None
        if chunk is not None:
            chunk_v = chunk if chunk == "array" else int(chunk)
        return cls(fmt, int(group) if group else 1, chunk_v)


SCALE_KINDS = ("tensor", "block", "block2d")


@dataclass(frozen=True)
class Scale:
    """How a quantized tensor's values map back to real numbers: real = value * scale.

    ``kind``: ``tensor`` (one scale for the whole tensor), ``block`` (one scale per ``block``
    consecutive elements along ``axis``; the last block of a row may be partial) or ``block2d``
    (one scale per ``block`` x ``block`` tile of the last two axes). ``format``: the name of the
    format the scales are stored in (``fp32``; block formats use narrow ones). ``pow2``: every
    scale is a power of two (its rule rounds it to one), so multiplying by it is exact.
    ``rule``: how the quantizer computes it, for the reader (e.g. ``sawb``, ``pact``, ``max``,
    ``floor``). ``tensor_scale``: one more FP32 scale per tensor above the block scales (NVFP4's
    two-level scaling), applied once to a GEMM's result.

    Raises FormatError for an unknown kind, a block size that is not an integer >= 1 with a block
    kind (or given with ``tensor``), or an unknown scale format.
    """

    kind: str = "tensor"
    block: int | None = None
    axis: int = -1
    format: str = "fp32"
    pow2: bool = False
    rule: str = ""
    tensor_scale: bool = False

    def __post_init__(self) -> None:
        if self.kind not in SCALE_KINDS:
            raise FormatError(f"scale kind must be one of {SCALE_KINDS}, got {self.kind!r}")
        if self.kind == "tensor":
            if self.block is not None:
                raise FormatError(f"a per-tensor scale has no block size, got block={self.block!r}")
        elif not isinstance(self.block, int) or isinstance(self.block, bool) or self.block < 1:
            raise FormatError(f"a {self.kind} scale needs a block size, an integer >= 1, got {self.block!r}")
        get_format(self.format)

    @property
    def bits_per_element(self) -> float:
        """Scale bits stored per element: the scale format's bits over the elements of a block
        (0 for a per-tensor scale: one register value)."""
        if self.kind == "tensor":
            return 0.0
        per_block = self.block * (self.block if self.kind == "block2d" else 1)
        return get_format(self.format).bits / per_block

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of the scale array of a tensor of ``shape``."""
        if self.kind == "tensor":
            return ()
        out = list(shape)
        axes = (-2, -1) if self.kind == "block2d" else (self.axis,)
        for ax in axes:
            out[ax] = -(-out[ax] // self.block)
        return tuple(out)

    def expand(self, scales: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """The scale of every element of a tensor of ``shape`` (float64, broadcastable to it)."""
        s = np.asarray(scales, dtype=np.float64)
        if self.kind == "tensor":
            return s
        axes = (-2, -1) if self.kind == "block2d" else (self.axis,)
        for ax in axes:
            s = np.repeat(s, self.block, axis=ax)
            s = np.take(s, np.arange(shape[ax]), axis=ax)
        return s

    def transposed(self, ndim: int) -> Scale:
        """The same scaling of the tensor transposed in its last two axes."""
        if self.kind != "block":
            return self
        axis = self.axis % ndim
        swap = {ndim - 1: ndim - 2, ndim - 2: ndim - 1}
        return Scale(self.kind, self.block, swap.get(axis, axis) - ndim, self.format, self.pow2, self.rule,
                     self.tensor_scale)


TENSOR_SCALE = Scale()
"""One FP32 scale per tensor (every recipe before the block formats)."""

"""Quantizer objects the recipes hold: casts to float formats, SAWB, PACT (with its
straight-through estimator), min-max, symmetric max scaling, the FP4 log quantizer with
Two-Phase Rounding, and the block quantizer (block-scaled formats: one scale per block of elements).

A quantizer turns FP32 values into a `QTensor`: the exact operand values a GEMM consumes (INT4
codes as integers, FP4/FP8/FP16 values on their grid), their format, and the scales that turn
them back into real numbers (real = values * scales; one per tensor, or one per block). What a
quantizer is for is in its properties (its output ``format``, the trace ``op`` that produces it,
the ``update_ops`` its weights need after each update, whether it needs a GradScale), never in a
name. Sources: Sun et al., NeurIPS 2020 ([P]) sections 2, 3.2, 3.3; Choi et al., PACT (arXiv
1805.06085); SAWB coefficients from IBM's fms-model-optimizer (technique.md 1.2).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from fourbit.models import numerics
from fourbit.models.numerics import QuantStats
from fourbit.models.qtensor import QTensor
from fourbit.traces.block_formats import BlockFormat
from fourbit.traces.errors import ConfigError, FormatError, NumericsError
from fourbit.traces.formats import FloatFormat, Format, IntFormat, LogFormat, Scale, get_format

__all__ = [
    "SAWB",
    "Block",
    "Cast",
    "GradScale",
    "LUQ",
    "Log",
    "MaxScaled",
    "MinMax",
    "PACT",
    "QTensor",
    "Quantizer",
    "quantizer",
]


# ---------------------------------------------------------------------------------------------
# quantizer objects
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Quantizer(ABC):
    """Base of the quantizers: ``__call__(x, alpha=None) -> QTensor``.

    ``format``: the format of the values it produces; ``op``: the trace op that produces them
    (None: no work, e.g. a cast to FP32 of FP32 values); ``update_ops``: ops a weight quantized by
    it needs on the update path before the quantization itself (SAWB's moments);
    ``needs_grad_scale``: a gradient quantized by it must be scaled first (no scale of its own);
    ``trained_clip``: it uses the layer's trained clip ``alpha`` (PACT); ``name``: how recipes
    and traces name it."""

    @property
    @abstractmethod
    def format(self) -> Format:
        """The format of the values it produces."""

    @property
    def name(self) -> str:
        return self.format.name

    op: str | None = field(default=None, init=False)
    update_ops: tuple[str, ...] = field(default=(), init=False)
    trained_clip: bool = field(default=False, init=False)

    @property
    def needs_grad_scale(self) -> bool:
        return False

    def signed(self) -> Quantizer:
        """The quantizer for signed inputs (LSTM, attention): SAWB's signed range where this
        one is unsigned (design.md section 3); itself otherwise."""
        return self

    def backward(self, dq: np.ndarray, x: np.ndarray, alpha: float | None) -> tuple[np.ndarray, float]:
        """The straight-through gradient: dL/dx = dL/dq, no clip gradient."""
        return dq, 0.0

    @property
    def axis_dependent(self) -> bool:
        """Whether the result depends on the axis the GEMM reduces along (1-D blocks): a tensor
        two GEMMs reduce along different axes then needs one copy per GEMM."""
        return False

    @property
    def stochastic(self) -> bool:
        """Whether it rounds stochastically (then each call needs a ``key``)."""
        return False

    @property
    def per_block(self) -> bool:
        """Whether it scales per block (then a layer quantizes the operand as the GEMM reads it,
        e.g. a convolution's column matrix, so that blocks run along the GEMM's K)."""
        return False

    @abstractmethod
    def __call__(self, x: np.ndarray, alpha: float | None = None, *, axis: int = -1,
                 key: tuple[int, int, int] | None = None) -> QTensor:
        """Quantize ``x`` (any shape; ``alpha`` the layer's trained clip where it uses one;
        ``axis`` the axis the GEMM that reads it reduces along; ``key`` = (seed, step, tensor id)
        for stochastic rounding)."""


@dataclass(frozen=True)
class Cast(Quantizer):
    """Round to nearest on a float format (the format's own ties and saturation); a format that
    holds every float32 value (FP32) is no work and keeps the values."""

    target: FloatFormat = field(default_factory=lambda: get_format("fp32"))

    def __post_init__(self) -> None:
        if not isinstance(self.target, FloatFormat):
            raise ConfigError(f"a cast takes a float format, got {getattr(self.target, 'name', self.target)!r}")
        object.__setattr__(self, "op", None if self._identity else "cast")

    @property
    def _identity(self) -> bool:
        return self.target.dtype == np.dtype(np.float32)

    @property
    def format(self) -> Format:
        return self.target

    @property
    def needs_grad_scale(self) -> bool:
        return not self._identity

    def __call__(self, x: np.ndarray, alpha: float | None = None, *, axis: int = -1,
                 key: tuple[int, int, int] | None = None) -> QTensor:
        if self._identity:
            return QTensor(np.asarray(x, np.float32), self.target)
        values, stats = numerics.quantize_float(x, self.target)
        return QTensor(values.astype(np.float32), self.target, 1.0, stats)


def _int_uniform(x: np.ndarray, step: float, lo: int, hi: int, fmt: Format, alpha: float, rule: str) -> QTensor:
    """Uniform integer codes with their statistics; step 0 (an all-zero tensor) gives zeros."""
    dtype = np.uint8 if lo >= 0 else np.int8
    scaling = Scale(rule=rule)
    if step == 0.0:
        return QTensor(np.zeros(np.shape(x), dtype), fmt, 0.0,
                       QuantStats(int(np.size(x)), 0, 0, int(np.size(x))), scaling=scaling)
    codes, stats = numerics.quantize_uniform(x, step, lo, hi, dtype)
    clipped = int(np.count_nonzero(np.abs(x) > alpha)) if lo < 0 else int(np.count_nonzero(x > alpha))
    return QTensor(codes, fmt, step, QuantStats(stats.elements, clipped, stats.flushed, stats.zeros),
                   scaling=scaling)


def _int_format(bits: int, signed: bool) -> IntFormat:
    fmt = get_format(f"{'' if signed else 'u'}int{bits}")
    assert isinstance(fmt, IntFormat)
    return fmt


@dataclass(frozen=True)
class _Int4Quantizer(Quantizer):
    """What SAWB, PACT and min-max share: 4-bit integer codes (their published rules and
    coefficients are for 4 bits), made by a uniform rounding."""

    bits: int = 4
    signed_codes: ClassVar[bool] = True
    rule: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if self.bits != 4:
            raise ConfigError(f"{self.rule.upper()} is modelled at 4 bits (technique.md 1.2), got bits={self.bits!r}")
        object.__setattr__(self, "op", "quantize_uniform")

    @property
    def format(self) -> Format:
        return _int_format(self.bits, self.signed_codes)

    @property
    def name(self) -> str:
        return f"{'' if self.signed_codes else 'u'}int{self.bits}_{self.rule}"


@dataclass(frozen=True)
class SAWB(_Int4Quantizer):
    """SAWB per tensor ([P] section 2; Choi et al. 2019): clip alpha = c1 sqrt(E[w^2]) -
    c2 E[|w|] (`fourbit.models.numerics.sawb_alpha`), step alpha/7, codes -7..7, recomputed every
    call ("rescaled every iteration"). Weights, and the signed activations of embeddings and
    LSTMs (design.md section 3); a weight quantized by it needs its moments after each update."""

    rule: ClassVar[str] = "sawb"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "update_ops", ("moments",))

    def __call__(self, x: np.ndarray, alpha: float | None = None, *, axis: int = -1,
                 key: tuple[int, int, int] | None = None) -> QTensor:
        top = 2 ** (self.bits - 1) - 1
        a = numerics.sawb_alpha(x) if np.size(x) else 0.0
        return _int_uniform(x, a / top, -top, top, self.format, a, "sawb")


@dataclass(frozen=True)
class PACT(_Int4Quantizer):
    """PACT (Choi et al. 2018, eq. 1-3; [P] section 2): clip to [0, alpha] with the layer's
    trained alpha, step alpha/15, codes 0..15; its backward is the straight-through estimator
    with the clip gradient (eq. 3)."""

    signed_codes: ClassVar[bool] = False
    rule: ClassVar[str] = "pact"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "trained_clip", True)

    def signed(self) -> Quantizer:
        return SAWB(self.bits)

    def __call__(self, x: np.ndarray, alpha: float | None = None, *, axis: int = -1,
                 key: tuple[int, int, int] | None = None) -> QTensor:
        codes, step = numerics.quantize_uint4_pact(x, alpha)
        clipped = int(np.count_nonzero(x > alpha))
        flushed = int(np.count_nonzero((codes == 0) & (x > 0)))
        return QTensor(codes, self.format, step,
                       QuantStats(codes.size, clipped, flushed, int(np.count_nonzero(codes == 0))),
                       scaling=Scale(rule="pact"))

    def backward(self, dq: np.ndarray, x: np.ndarray, alpha: float | None) -> tuple[np.ndarray, float]:
        """PACT's straight-through estimator (Choi et al. 2018, eq. 3): dL/dx = dL/dq where
        0 <= x < alpha, else 0; dL/dalpha = sum of dL/dq where x >= alpha."""
        inside = (x >= 0) & (x < alpha)
        dx = np.where(inside, dq, 0.0).astype(np.float32)
        return dx, float(np.sum(dq[x >= alpha], dtype=np.float64))


@dataclass(frozen=True)
class MinMax(_Int4Quantizer):
    """Unsigned 4-bit codes with the clip at this tensor's max (the simple per-iteration
    baseline); an all-non-positive tensor gives zeros."""

    signed_codes: ClassVar[bool] = False
    rule: ClassVar[str] = "minmax"

    def signed(self) -> Quantizer:
        return SAWB(self.bits)

    def __call__(self, x: np.ndarray, alpha: float | None = None, *, axis: int = -1,
                 key: tuple[int, int, int] | None = None) -> QTensor:
        top = float(np.max(x)) if np.size(x) else 0.0
        if top <= 0:
            return QTensor(np.zeros(np.shape(x), np.uint8), self.format, 0.0,
                           QuantStats(int(np.size(x)), 0, 0, int(np.size(x))), scaling=Scale(rule="max"))
        return PACT(self.bits)(x, top)


@dataclass(frozen=True)
class MaxScaled(Quantizer):
    """Symmetric integers scaled by this tensor's own max every call: step = max|x| / (2^(b-1)
    - 1), codes -(2^(b-1) - 1)..2^(b-1) - 1 (INT8: -127..127). ``name`` is how recipes name it
    (``int8_max`` for weights and activations; gradients are named by their format, ``int8``)."""

    bits: int = 8
    label: str = "int8_max"

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ConfigError(f"max-scaled integers take 4 or 8 bits, got bits={self.bits!r}")
        object.__setattr__(self, "op", "quantize_uniform")

    @property
    def format(self) -> Format:
        return _int_format(self.bits, True)

    @property
    def name(self) -> str:
        return self.label

    def __call__(self, x: np.ndarray, alpha: float | None = None, *, axis: int = -1,
                 key: tuple[int, int, int] | None = None) -> QTensor:
        top = float(np.max(np.abs(x))) if np.size(x) else 0.0
        q = 2 ** (self.bits - 1) - 1
        return _int_uniform(x, top / q, -q, q, self.format, top, "max")


@dataclass(frozen=True)
class Log(Quantizer):
    """Round an already scaled gradient onto a log format ([P] sections 3.1, 3.3): the format
    carries radix, exponent bits and TPR phase; ``tie`` at a threshold: ``up`` ([P] Fig. 2(c)) or
    ``down`` ([P] Eq. 1). The GradScale factor stays in the values; the caller removes it after
    the GEMM."""

    target: LogFormat = field(default_factory=lambda: get_format("fp4_r4_e3"))
    tie: str = "up"
    rounding: str = "nearest"

    def __post_init__(self) -> None:
        if not isinstance(self.target, LogFormat):
            raise ConfigError(f"the log quantizer takes a log format, got {getattr(self.target, 'name', self.target)!r}")
        if self.tie not in ("up", "down"):
            raise ConfigError(f"tie must be 'up' or 'down', got {self.tie!r}")
        _check_rounding(self.rounding)
        object.__setattr__(self, "op", "quantize_log")

    @property
    def stochastic(self) -> bool:
        return self.rounding == "stochastic"

    @property
    def format(self) -> Format:
        return self.target

    @property
    def name(self) -> str:
        return self.target.name + ("_sr" if self.stochastic else "")

    @property
    def needs_grad_scale(self) -> bool:
        return True

    def __call__(self, x: np.ndarray, alpha: float | None = None, *, axis: int = -1,
                 key: tuple[int, int, int] | None = None) -> QTensor:
        values, codes, stats = numerics.quantize_fp4_codes(x, self.target, self.tie, rounding=self.rounding, key=key)
        return QTensor(values, self.target, 1.0, stats, codes)


@dataclass(frozen=True)
class Block(Quantizer):
    """A block-scaled format (`fourbit.traces.block_formats`: MXFP4, NVFP4, INT4 blocks, or one a
    user defines) with blocks along the axis the GEMM reduces (`fourbit.models.numerics.
    quantize_block`: the format's scale rule, elements saturated and rounded to nearest even or,
    with ``rounding="stochastic"``, stochastically). Its values are the elements (``format``);
    ``name`` is the block format's, with ``_sr`` for stochastic rounding. 1-D blocks depend on
    the axis (a tensor two GEMMs reduce differently needs two copies); 2-D blocks do not."""

    target: BlockFormat = field(default_factory=lambda: get_format("mxfp4"))
    rounding: str = "nearest"

    def __post_init__(self) -> None:
        if not isinstance(self.target, BlockFormat):
            raise ConfigError(f"a block quantizer takes a block format (mxfp4, nvfp4, int4_block, ...), got "
                              f"{getattr(self.target, 'name', self.target)!r}")
        _check_rounding(self.rounding)
        object.__setattr__(self, "op", "quantize_block")

    @property
    def format(self) -> Format:
        return self.target.element_format

    @property
    def name(self) -> str:
        return self.target.name + ("_sr" if self.stochastic else "")

    @property
    def scaling(self) -> Scale:
        return self.target.scaling(-1)

    @property
    def axis_dependent(self) -> bool:
        return not self.target.block_2d

    @property
    def per_block(self) -> bool:
        return True

    @property
    def stochastic(self) -> bool:
        return self.rounding == "stochastic"

    def __call__(self, x: np.ndarray, alpha: float | None = None, *, axis: int = -1,
                 key: tuple[int, int, int] | None = None) -> QTensor:
        return numerics.quantize_block(x, self.target, axis, rounding=self.rounding, key=key)


@dataclass(frozen=True)
class LUQ(Quantizer):
    """Logarithmic unbiased quantization of gradients (Chmiel et al., ICLR 2023, LUQ; technique.md
    5.6): a radix-2 log format with 3 exponent bits scaled by the tensor's own maximum, so that the
    underflow threshold is alpha = max|x| / 2^6 and the 7 levels are alpha * 2^0..2^6 (eq. 11);
    below alpha, stochastic underflow to 0 or alpha (eq. 10); between levels, logarithmic
    stochastic rounding (eq. 12); unbiased, no GradScale. Values are on ``fp4_r2_e3``'s grid
    (1/8..8) with the per-tensor scale s = max|x| / 8 (x / s in float64, one rounding, then the
    stochastic rounding); an all-zero tensor gives zeros."""

    target: LogFormat = field(default_factory=lambda: get_format("fp4_r2_e3"))

    def __post_init__(self) -> None:
        if not isinstance(self.target, LogFormat):
            raise ConfigError(f"LUQ takes a log format, got {getattr(self.target, 'name', self.target)!r}")
        object.__setattr__(self, "op", "quantize_log")

    @property
    def format(self) -> Format:
        return self.target

    @property
    def name(self) -> str:
        return f"luq_{self.target.name}"

    @property
    def stochastic(self) -> bool:
        return True

    def threshold(self, x: np.ndarray) -> float:
        """LUQ's underflow threshold alpha = max|x| / 2^(2^b - 2) (eq. 11): max|x| / 64 for b = 3."""
        top = float(np.max(np.abs(x))) if np.size(x) else 0.0
        return top / 2.0 ** (self.target.n_levels - 1)

    def __call__(self, x: np.ndarray, alpha: float | None = None, *, axis: int = -1,
                 key: tuple[int, int, int] | None = None) -> QTensor:
        top = float(np.max(np.abs(x))) if np.size(x) else 0.0
        if not np.isfinite(top):
            raise NumericsError("LUQ needs a finite gradient (its scale is the tensor's max)")
        if top == 0.0:
            return QTensor(np.zeros(np.shape(x)), self.target, 0.0, QuantStats(int(np.size(x)), 0, 0, int(np.size(x))))
        scale = top / self.target.max_value
        values, codes, stats = numerics.quantize_fp4_codes(np.asarray(x, np.float64) / scale, self.target,
                                                           rounding="stochastic", key=key)
        return QTensor(values, self.target, scale, stats, codes, Scale(rule="luq"))


def _check_rounding(rounding: str) -> None:
    if rounding not in numerics.ROUNDINGS:
        raise ConfigError(f"rounding must be one of {numerics.ROUNDINGS}, got {rounding!r}")


def quantizer(name: str, tie: str = "up") -> Quantizer:
    """The quantizer a recipe names ``name``: a float format's name is a cast (a log format's the
    log quantizer with ``tie``, a block format's the block quantizer), ``int4_sawb``, ``uint4_pact``, ``uint4_minmax``, ``int8_max``,
    and ``int8`` (max-scaled INT8 gradients).

    Raises ConfigError for any other name."""
    named = {"int4_sawb": SAWB(4), "uint4_pact": PACT(4), "uint4_minmax": MinMax(4),
             "int8_max": MaxScaled(8), "int8": MaxScaled(8, "int8")}
    if name in named:
        return named[name]
    try:
        fmt = get_format(name)
    except FormatError as exc:
        raise ConfigError(f"unknown quantizer {name!r}: {exc}") from None
    if isinstance(fmt, LogFormat):
        return Log(fmt, tie)
    if isinstance(fmt, BlockFormat):
        return Block(fmt)
    if isinstance(fmt, FloatFormat):
        return Cast(fmt)
    raise ConfigError(f"unknown quantizer {name!r}; a format name of a float or log format, or one of "
                      f"{', '.join(named)}")


# ---------------------------------------------------------------------------------------------
# GradScale
# ---------------------------------------------------------------------------------------------
GROWTH_HOLD_STEPS = 16
"""Steps a GradScale does not grow after its own GEMM overflowed (`GradScale.back_off`; dynamic
loss scaling's N, Micikevicius et al., ICLR 2018, who use 2000 for one loss scale over a long run).
Ours: without a hold, the character transformer ``gpt`` at ``int4`` skipped 36 of its first 150
steps (the layers' FP4-range scale overflowed their FP16 ``bwd_weight`` sums over 2048 rows
every other step); with 16, 7 (test loss 2.49 at step 140), with 64, 6 (2.56): the shorter hold
lets the scale follow gradients that shrink as training goes on (measured 2026-12-07)."""


@dataclass
class GradScale:
    """Per-layer adaptive gradient scale s = 2^exponent ([P] section 3.2, Fig. 3).

    The output gradient is multiplied by s before quantization and the GEMM results are divided
    by s (exact: a power of two). The first observed step calibrates s to the power of two that
    puts max|s*dY| in (target_max/2, target_max]; afterwards each step reports +1 when
    max|s*dY| <= target_max/2, 0 in (target_max/2, target_max], -1 above target_max or when not
    finite; an all-zero gradient reports 0. Reports of data-parallel workers are summed; s doubles
    on a positive sum and halves on a negative one, clamped to [2^-64, 2^64], and the new s
    applies from the next step. ``target_max`` is the largest FP4 value (64 for radix-4 FP4).
    A step whose backward GEMM results overflow (FP16 accumulation of large sums) is skipped by
    the trainer and that layer's s halves (`back_off`) and does not grow for the next
    ``growth_hold`` steps (dynamic loss scaling's rule: grow only after N steps without an
    overflow, Micikevicius et al., ICLR 2018), so that a layer whose FP4 range and FP16 sums want
    different scales does not overflow every other step.
    One shared object for all layers is the global loss scale the paper compares with.
    """

    target_max: float
    exponent: int = 0
    calibrated: bool = False
    pending: list[int] = field(default_factory=list)
    observed_max: float = 0.0  # max|dY| (unscaled) seen since the last update, for the global mode
    overflowed: bool = False  # a backward GEMM of this step gave a non-finite (overflowed) result
    growth_hold: int = GROWTH_HOLD_STEPS  # steps after an overflow during which s does not grow
    held: int = 0  # steps of the current hold left

    MIN_EXPONENT = -64
    MAX_EXPONENT = 64

    @property
    def scale(self) -> float:
        return float(2.0**self.exponent)

    def _clamp(self, e: int) -> int:
        return max(self.MIN_EXPONENT, min(self.MAX_EXPONENT, e))

    def calibrate(self, max_abs: float) -> None:
        """Set s from the first step's max|dY| (unscaled); no-op for zero or non-finite input."""
        if self.calibrated or not np.isfinite(max_abs) or max_abs <= 0:
            return
        e = int(np.frexp(self.target_max)[1] - np.frexp(max_abs)[1])  # within one of the answer
        while np.ldexp(max_abs, e) > self.target_max:  # exact power-of-two scaling
            e -= 1
        while np.ldexp(max_abs, e) <= self.target_max / 2:
            e += 1
        self.exponent = self._clamp(e)
        self.calibrated = True

    def report(self, scaled_max_abs: float) -> int:
        """The ternary report of one worker for max|s*dY| of this step."""
        if not np.isfinite(scaled_max_abs) or scaled_max_abs > self.target_max:
            return -1
        if scaled_max_abs == 0:
            return 0
        return 1 if scaled_max_abs <= self.target_max / 2 else 0

    def observe(self, dy_max_abs: float) -> None:
        """Record this step's max|dY| (unscaled): calibrates on the first call, then queues the
        report that `update` applies."""
        if not self.calibrated:
            self.calibrate(dy_max_abs)
        self.observed_max = max(self.observed_max, dy_max_abs) if np.isfinite(dy_max_abs) else np.inf
        self.pending.append(self.report(dy_max_abs * self.scale))

    def update(self) -> int:
        """Apply the summed reports queued by `observe` (from the next step on); returns the
        exponent change (-1, 0 or +1)."""
        total = sum(self.pending)
        self.pending.clear()
        self.observed_max = 0.0
        step = (total > 0) - (total < 0)
        if self.held:
            self.held -= 1
            step = min(step, 0)
        self.exponent = self._clamp(self.exponent + step)
        return step

    def back_off(self) -> int:
        """After a step whose gradients overflowed (and was skipped, as dynamic loss scaling does,
        Micikevicius et al., ICLR 2018): halve s if this scale's own GEMM overflowed, else keep it
        (its reports saw the overflow's aftermath, not its own range); returns the change."""
        own = self.overflowed  # a skip for another layer's overflow counts as one step of this one's hold
        self.pending = [-1] if own else []
        self.overflowed = False
        change = self.update()
        if own:
            self.held = self.growth_hold
        return change

    def update_global(self) -> int:
        """Global loss scale: one report on the largest max|dY| over all layers of the step."""
        report = self.report(self.observed_max * self.scale)
        self.pending = [report]
        return self.update()

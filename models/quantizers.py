"""Quantizer objects the layers use: SAWB, PACT (with its straight-through estimator), casts to
float formats, the FP4 log quantizer with Two-Phase Rounding, GradScale and min-max.

Each quantizer returns a `QTensor`: the exact operand values a GEMM consumes (INT4 codes as
integers, FP4/FP8/FP16 values on their grid) and the one scale that turns them back into real
numbers (real = values * scale). Scales are applied once, to the GEMM result, in FP32
(design.md section 3). Sources: Sun et al., NeurIPS 2020 ([P]) sections 2, 3.2, 3.3; Choi et al.,
PACT (arXiv 1805.06085); SAWB coefficients from IBM's fms-model-optimizer (technique.md 1.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fourbit.models import numerics
from fourbit.models.numerics import QuantStats
from fourbit.traces.errors import ConfigError
from fourbit.traces.formats import Format, LogFormat, get_format

__all__ = [
    "GradScale",
    "QTensor",
    "quantize_act",
    "quantize_grad",
    "quantize_weight",
]


@dataclass
class QTensor:
    """A quantized tensor: ``values`` (exact operand values, any shape), its ``format``, the real
    ``scale`` (real value = values * scale) and the quantizer's statistics (None when the values
    were not quantized, e.g. FP32)."""

    values: np.ndarray
    format: Format
    scale: float = 1.0
    stats: QuantStats | None = None
    codes: np.ndarray | None = None  # log-format codes (for the trace's code histogram)

    @property
    def T(self) -> QTensor:  # noqa: N802 - numpy's name
        return QTensor(self.values.T, self.format, self.scale, self.stats,
                       None if self.codes is None else self.codes.T)

    def real(self) -> np.ndarray:
        """values * scale as float32 (what an FP32 reference would see)."""
        return (self.values.astype(np.float32) * np.float32(self.scale)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# weights and activations
# ---------------------------------------------------------------------------------------------
WEIGHT_METHODS = ("fp32", "fp16", "fp8_e4m3", "int4_sawb", "int8_max")
ACT_METHODS = ("fp32", "fp16", "fp8_e4m3", "uint4_pact", "uint4_minmax", "int4_sawb", "int8_max")
"""Quantizers by name: a float format is a cast (FP8 saturating); ``int4_sawb`` is SAWB (signed
-7..7, also the signed activations of embeddings and LSTMs, design.md section 3); ``uint4_pact``
PACT with the layer's trained clip; ``uint4_minmax`` the per-iteration max baseline; ``int8_max``
symmetric INT8, step = max|x|/127."""
FLOAT_METHODS = ("fp32", "fp16", "fp8_e4m3", "fp8_e5m2")


def _cast(x: np.ndarray, fmt_name: str) -> QTensor:
    if fmt_name == "fp32":
        return QTensor(np.asarray(x, np.float32), get_format("fp32"))
    values, stats = numerics.quantize_float(x, fmt_name)
    return QTensor(values.astype(np.float32), get_format(fmt_name), 1.0, stats)


def _int_uniform(x: np.ndarray, step: float, lo: int, hi: int, fmt: str, alpha: float) -> QTensor:
    """Uniform integer codes with their statistics; step 0 (an all-zero tensor) gives zeros."""
    dtype = np.uint8 if lo >= 0 else np.int8
    if step == 0.0:
        return QTensor(np.zeros(np.shape(x), dtype), get_format(fmt), 0.0,
                       QuantStats(int(np.size(x)), 0, 0, int(np.size(x))))
    codes, stats = numerics.quantize_uniform(x, step, lo, hi, dtype)
    clipped = int(np.count_nonzero(np.abs(x) > alpha)) if lo < 0 else int(np.count_nonzero(x > alpha))
    return QTensor(codes, get_format(fmt), step,
                   QuantStats(stats.elements, clipped, stats.flushed, stats.zeros))


def _int8_max(x: np.ndarray) -> QTensor:
    top = float(np.max(np.abs(x))) if np.size(x) else 0.0
    return _int_uniform(x, top / 127, -127, 127, "int8", top)


def quantize_weight(w: np.ndarray, method: str) -> QTensor:
    """Quantize FP32 master weights (any shape) for the forward and backward-data GEMMs.

    ``int4_sawb``: SAWB per tensor, codes -7..7, recomputed every call ("rescaled every
    iteration", [P] section 2); ``int8_max``: symmetric INT8; float formats: a cast.

    Returns a `QTensor`: codes (int8, the shape of ``w``; float64 values for float formats), the
    format, the step (real value of one code) and the clip/flush statistics. Raises ConfigError
    for an unknown ``method`` and NumericsError for NaN weights.
    """
    if method == "int4_sawb":
        alpha = numerics.sawb_alpha(w) if np.size(w) else 0.0
        return _int_uniform(w, alpha / 7, -7, 7, "int4", alpha)
    if method == "int8_max":
        return _int8_max(w)
    if method in FLOAT_METHODS:
        return _cast(w, method)
    raise ConfigError(f"weight quantizer must be one of {WEIGHT_METHODS}, got {method!r}")


def quantize_act(x: np.ndarray, method: str, alpha: float | None = None) -> QTensor:
    """Quantize activations (any shape) for the forward and backward-weight GEMMs.

    ``uint4_pact``: PACT with the layer's trained clip ``alpha`` (codes 0..15);
    ``uint4_minmax``: per-iteration max scaling (the simple baseline: alpha = max(x));
    ``int4_sawb``: signed inputs (LSTM, embeddings) with the SAWB clip; ``int8_max``; float
    formats: a cast.

    Returns a `QTensor` (codes uint8 of the shape of ``x`` for PACT; the step is alpha/15).
    Raises ConfigError for an unknown ``method`` and NumericsError for NaN input or a PACT
    ``alpha`` that is not finite and positive.
    """
    if method == "uint4_pact":
        codes, step = numerics.quantize_uint4_pact(x, alpha)
        clipped = int(np.count_nonzero(x > alpha))
        flushed = int(np.count_nonzero((codes == 0) & (x > 0)))
        return QTensor(codes, get_format("uint4"), step,
                       QuantStats(codes.size, clipped, flushed, int(np.count_nonzero(codes == 0))))
    if method == "uint4_minmax":
        top = float(np.max(x)) if np.size(x) else 0.0
        if top <= 0:
            return QTensor(np.zeros(np.shape(x), np.uint8), get_format("uint4"), 0.0,
                           QuantStats(int(np.size(x)), 0, 0, int(np.size(x))))
        return quantize_act(x, "uint4_pact", top)
    if method in ("int4_sawb", "int8_max"):
        return quantize_weight(x, method)
    if method in FLOAT_METHODS:
        return _cast(x, method)
    raise ConfigError(f"activation quantizer must be one of {ACT_METHODS}, got {method!r}")


def pact_backward(dq: np.ndarray, x: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """PACT's straight-through estimator (Choi et al. 2018, eq. 3).

    dL/dx = dL/dq where 0 <= x < alpha, else 0; dL/dalpha = sum of dL/dq where x >= alpha.
    Returns (dx float32 of x's shape, dalpha float).
    """
    inside = (x >= 0) & (x < alpha)
    dx = np.where(inside, dq, 0.0).astype(np.float32)
    dalpha = float(np.sum(dq[x >= alpha], dtype=np.float64))
    return dx, dalpha


# ---------------------------------------------------------------------------------------------
# gradients: FP4 with Two-Phase Rounding, and the casts
# ---------------------------------------------------------------------------------------------
def quantize_grad(g_scaled: np.ndarray, fmt_name: str, tie: str = "up") -> QTensor:
    """Quantize an already scaled gradient onto a gradient format: a log format (FP4), a float
    format (fp16, fp8_e5m2: saturating casts), fp32, or ``int8`` (symmetric, step = max/127).

    The GradScale factor stays in the values: the caller removes it after the GEMM.

    Returns a `QTensor`: float64 values of the shape of ``g_scaled`` (for log formats also the
    uint8 codes and the clip/flush statistics, [P] section 3). Raises FormatError for an unknown
    format and NumericsError for NaN input.
    """
    if fmt_name == "int8":
        return _int8_max(g_scaled)
    fmt = get_format(fmt_name)
    if isinstance(fmt, LogFormat):
        values, codes, stats = numerics.quantize_fp4_codes(g_scaled, fmt, tie)
        return QTensor(values, fmt, 1.0, stats, codes)
    return _cast(g_scaled, fmt_name)


# ---------------------------------------------------------------------------------------------
# GradScale
# ---------------------------------------------------------------------------------------------
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
    the trainer and that layer's s halves (`back_off`).
    One shared object for all layers is the global loss scale the paper compares with.
    """

    target_max: float
    exponent: int = 0
    calibrated: bool = False
    pending: list[int] = field(default_factory=list)
    observed_max: float = 0.0  # max|dY| (unscaled) seen since the last update, for the global mode
    overflowed: bool = False  # a backward GEMM of this step gave a non-finite (overflowed) result

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
        self.exponent = self._clamp(self.exponent + step)
        return step

    def back_off(self) -> int:
        """After a step whose gradients overflowed (and was skipped, as dynamic loss scaling does,
        Micikevicius et al., ICLR 2018): halve s if this scale's own GEMM overflowed, else keep it
        (its reports saw the overflow's aftermath, not its own range); returns the change."""
        self.pending = [-1] if self.overflowed else []
        self.overflowed = False
        return self.update()

    def update_global(self) -> int:
        """Global loss scale: one report on the largest max|dY| over all layers of the step."""
        report = self.report(self.observed_max * self.scale)
        self.pending = [report]
        return self.update()

"""The emulator's trace recorder: the step recorder of `fourbit.traces.registry` (where each op
runs) plus what only computed values give: each GEMM operand's scaling and statistics (zero,
clip and flush fractions, the gradient operand's log-code histogram, accumulator events, scales).
"""

from __future__ import annotations

import numpy as np

from fourbit.models.quantizers import QTensor
from fourbit.traces import schema
from fourbit.traces.formats import LogFormat
from fourbit.traces.lowering import GemmShape
from fourbit.traces.registry import StepRecorder, gemm_row

__all__ = ["Recorder", "operand_columns"]


def _zero_frac(values: np.ndarray) -> float:
    return float(np.count_nonzero(values == 0)) / values.size if values.size else 0.0


def operand_columns(prefix: str, q: QTensor) -> dict:
    """The trace columns that describe operand ``prefix`` (``a``: M x K, ``b``: K x N): its
    scaling, block size and the GEMM dimension blocks run along, the scale format, bits per
    element with scales, and its per-tensor scale."""
    s = q.scaling
    cols = {f"{prefix}_scale_kind": s.kind, f"{prefix}_scale_format": s.format,
            f"{prefix}_bits": float(q.format.bits_per_element + s.bits_per_element)}
    if s.kind == "tensor":
        cols[f"{prefix}_scale"] = q.scale
    else:
        cols[f"{prefix}_block"] = s.block
    if s.kind == "block":
        last = s.axis % q.values.ndim == q.values.ndim - 1
        cols[f"{prefix}_block_axis"] = ("K" if last else "M") if prefix == "a" else ("N" if last else "K")
    return cols


class Recorder(StepRecorder):
    """Collects ``gemms`` and ``ops`` rows of the steps being recorded (`StepRecorder`), with
    the statistics of the operands the emulator computed."""

    def gemm(self, layer: str, layer_type: str, phase: str, shape: GemmShape, a: QTensor,
             b: QTensor, acc_format: str, out_format: str, *, acc_stats=None,
             geometry: dict | None = None, grad_scale_log2: float | None = None,
             roles: tuple[str, str, str] | None = None,
             tensors: tuple[tuple[str, int], tuple[str, int]] | None = None) -> None:
        """Record one GEMM (`fourbit.traces.registry.gemm_row`) with its operands' scaling and
        statistics. ``roles`` (a, b, result) default to a weight layer's; ``tensors`` ((a tensor,
        copy), (b tensor, copy)) are not recorded when None."""
        if not self.active:
            return
        operands = {**operand_columns("a", a), **operand_columns("b", b),
                    "a_zero_frac": _zero_frac(a.values), "b_zero_frac": _zero_frac(b.values)}
        for prefix, q in (("a", a), ("b", b)):
            if q.stats is not None:
                operands[f"{prefix}_clip_frac"] = q.stats.clip_frac
                operands[f"{prefix}_flush_frac"] = q.stats.flush_frac
        if isinstance(a.format, LogFormat) and a.codes is not None:
            mags = np.asarray(a.codes) & (2**a.format.exponent_bits - 1)
            hist = np.bincount(mags.ravel(), minlength=schema.HIST_BINS)
            operands.update({f"grad_code_{i:02d}": int(hist[i]) for i in range(schema.HIST_BINS)})
        if acc_stats is not None:
            operands["acc_overflows"] = acc_stats.overflows
            operands["acc_underflows"] = acc_stats.underflows
        if grad_scale_log2 is not None:
            operands["grad_scale_log2"] = float(grad_scale_log2)
        self.add_gemm(gemm_row(layer, layer_type, phase, shape, (a.format.name, b.format.name, acc_format, out_format),
                               roles=roles, tensors=tensors, operands=operands, geometry=geometry))

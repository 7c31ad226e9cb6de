"""The one object through which layers record what they compute into the trace.

Layers call `Recorder.gemm` for each of their GEMMs and `Recorder.op` for vector work; the
recorder keeps rows only while a step is being recorded (`start` / `stop`), so non-recorded
steps cost nothing. Ops are attributed to the GEMM whose output path runs them (the most recent
GEMM, ``fused=True``) unless the caller names the layer and phase; an op before any GEMM of the
step is a separate pass of its own layer (``fused=False``). An op that needs a pass of its own
(``fused=False``: BatchNorm needs the statistics of the whole tensor) starts a pass that the
following ops join; the pass runs before the next GEMM, so it is attributed to that GEMM.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fourbit.models.quantizers import QTensor
from fourbit.traces import schema
from fourbit.traces.formats import LogFormat
from fourbit.traces.lowering import GemmShape
from fourbit.traces.schema import OP_KINDS

__all__ = ["Recorder"]


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


class Recorder:
    """Collects ``gemms`` and ``ops`` rows of the steps being recorded."""

    def __init__(self) -> None:
        self.gemm_rows: list[dict] = []
        self.op_rows: list[dict] = []
        self.active = False
        self.step = 0
        self._producer: tuple[str, str] | None = None
        self._pending: list[dict] = []  # a separate pass waiting for the GEMM it precedes

    def start(self, step: int) -> None:
        """Record everything until `stop`, as step ``step``."""
        self.active = True
        self.step = int(step)
        self._producer = None
        self._pending = []

    def stop(self) -> None:
        if self._pending and self._producer is not None:  # a pass after the last GEMM
            for row in self._pending:
                row["layer"], row["phase"] = self._producer
            self.op_rows += self._pending
        self.active = False
        self._producer = None
        self._pending = []

    def gemm(self, layer: str, layer_type: str, phase: str, shape: GemmShape, a: QTensor,
             b: QTensor, acc_format: str, out_format: str, *, acc_stats=None,
             geometry: dict | None = None, grad_scale_log2: float | None = None,
             roles: tuple[str, str, str] | None = None,
             tensors: tuple[tuple[str, int], tuple[str, int]] | None = None) -> None:
        """Record one GEMM with its operands' descriptions (role, scaling, bits, which copy of
        which tensor) and statistics (zero, clip and flush fractions, the gradient operand's
        log-code histogram, accumulator events, scales). ``roles`` (a, b, result) default to a
        weight layer's (`fourbit.traces.schema.PHASE_ROLES`); ``tensors`` ((a tensor, copy),
        (b tensor, copy)) are not recorded when None."""
        if not self.active:
            return
        self._producer = (layer, phase)
        for pending in self._pending:  # the separate pass runs before this GEMM
            pending["layer"], pending["phase"] = layer, phase
        self.op_rows += self._pending
        self._pending = []
        row = {
            "step": self.step, "layer": layer, "layer_type": layer_type, "phase": phase,
            "M": shape.M, "N": shape.N, "K": shape.K, "groups": shape.groups,
            "a_format": a.format.name, "b_format": b.format.name, "acc_format": acc_format,
            "out_format": out_format,
            "a_zero_frac": _zero_frac(a.values), "b_zero_frac": _zero_frac(b.values),
        }
        row["a_role"], row["b_role"], row["out_role"] = roles or schema.PHASE_ROLES[phase]
        for prefix, q, i in (("a", a, 0), ("b", b, 1)):
            row.update(operand_columns(prefix, q))
            if tensors is not None:
                row[f"{prefix}_tensor"], row[f"{prefix}_copy"] = tensors[i]
        for prefix, q in (("a", a), ("b", b)):
            if q.stats is not None:
                row[f"{prefix}_clip_frac"] = q.stats.clip_frac
                row[f"{prefix}_flush_frac"] = q.stats.flush_frac
        grad = a if isinstance(a.format, LogFormat) else None
        if grad is not None and grad.codes is not None:
            mags = np.asarray(grad.codes) & (2**grad.format.exponent_bits - 1)
            hist = np.bincount(mags.ravel(), minlength=schema.HIST_BINS)
            row.update({f"grad_code_{i:02d}": int(hist[i]) for i in range(schema.HIST_BINS)})
        if acc_stats is not None:
            row["acc_overflows"] = acc_stats.overflows
            row["acc_underflows"] = acc_stats.underflows
        if grad_scale_log2 is not None:
            row["grad_scale_log2"] = float(grad_scale_log2)
        row.update(geometry or {})
        self.gemm_rows.append(row)

    def op(self, op: str, elements: int, in_format: str, out_format: str, *, layer: str | None = None,
           phase: str | None = None, default: tuple[str, str] | None = None, fused: bool = True) -> None:
        """Record vector work. With ``layer``/``phase`` it is fused into that GEMM's output path;
        without, into the most recent GEMM's; before any GEMM, a separate pass of ``default``;
        with ``fused=False`` (or while such a pass is open) it joins the pass before the next GEMM."""
        if not self.active:
            return
        if op not in OP_KINDS:
            raise ValueError(f"unknown op {op!r}; known ops: {OP_KINDS}")
        if layer is None and (not fused or self._pending):
            self._pending.append({"step": self.step, "layer": None, "phase": None, "op": op,
                                  "elements": int(elements), "in_format": in_format,
                                  "out_format": out_format, "fused": False})
            return
        if layer is not None:
            where, fused = (layer, phase), True
        elif self._producer is not None:
            where, fused = self._producer, True
        else:
            where, fused = default, False
        self.op_rows.append({
            "step": self.step, "layer": where[0], "phase": where[1], "op": op,
            "elements": int(elements), "in_format": in_format, "out_format": out_format,
            "fused": fused,
        })

    def tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The recorded ``gemms`` and ``ops`` tables, in the schema's dtypes."""
        return schema.from_records("gemms", self.gemm_rows), schema.from_records("ops", self.op_rows)

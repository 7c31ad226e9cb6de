"""The trace schema, version 1: tables, columns, dtypes, units, and validation.

A run directory holds ``meta.json`` and three Parquet tables (design.md section 4):

``gemms``
    One row per GEMM per recorded step, in execution order. A GEMM multiplies ``a`` (M x K) by
    ``b`` (K x N), ``groups`` times (grouped and depthwise convolutions; MACs = groups*M*N*K). The
    operand roles are fixed by the phase (`fourbit.traces.lowering`): ``fwd`` a = activations (ifmap),
    b = weights (filter); ``bwd_data`` a = output gradient, b = weights; ``bwd_weight`` a = output
    gradient (transposed), b = activations. Statistics columns are nullable (``Float64``,
    ``Int64``): <NA> means "not recorded" (shape-only traces are valid); NaN is an error.
``ops``
    The non-GEMM vector work of a (layer, phase): quantize, max-abs, GradScale, activation, BN,
    col2im adds, optimizer update; ``elements`` per op. ``fused`` ops run on the GEMM's output
    path (the scaling unit); the others are separate passes over memory.
``metrics``
    Loss and accuracy per step or epoch, train and test.

Counts are plain numbers (``M``, ``elements``); fractions end in ``_frac``; everything else
carries its unit in its name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fourbit.traces.errors import FormatError, TraceError
from fourbit.traces.formats import Accumulator, get_format

__all__ = [
    "HIST_BINS",
    "LAYER_TYPES",
    "OP_KINDS",
    "OP_PHASES",
    "PHASES",
    "SCHEMA_VERSION",
    "TABLES",
    "Column",
    "coerce",
    "from_records",
    "validate",
]

SCHEMA_VERSION = "1.0"
"""major.minor: a reader refuses an unknown major version and reads newer minors."""

PHASES = ("fwd", "bwd_data", "bwd_weight")
OP_PHASES = PHASES + ("update",)
LAYER_TYPES = ("linear", "conv2d", "dwconv2d", "lstm", "embedding", "matmul")
HIST_BINS = 16
"""Magnitude codes of a log format (exponent bits <= 4): the gradient-code histogram's bins."""
OP_KINDS = (
    "cast", "quantize_uniform", "quantize_log", "quantize_block", "maxabs", "moments", "scale", "bias_add",
    "relu", "relu_bwd", "pact_bwd", "softmax_xent", "sgd_momentum", "bn_fwd", "bn_bwd",
    "col2im_add", "pool_fwd", "pool_bwd", "residual_add", "embedding_bwd", "lstm_cell",
    "lstm_cell_bwd", "grad_norm",
)
"""The op vocabulary of the ``ops`` table; `fourbit.hwsim.blocks.scaling_unit.OPS` gives each its cost."""


@dataclass(frozen=True)
class Column:
    """One column: name, pandas dtype, whether it must be present in every row (non-null), the
    check applied to its values and a description with the unit."""

    name: str
    dtype: str
    required: bool
    check: str  # "", "positive", "nonneg", "fraction", "finite", "phase", "op_phase", "op", "format", "acc", "layer_type"
    doc: str


def _stat(name: str, doc: str, dtype: str = "Float64", check: str = "fraction") -> Column:
    return Column(name, dtype, False, check, doc)


_GEOMETRY = [
    Column(n, "Int64", False, "positive", d)
    for n, d in [
        ("batch", "batch size B of a convolution"),
        ("in_channels", "input channels C"),
        ("out_channels", "filters F"),
        ("in_h", "input height H (pixels, before padding)"),
        ("in_w", "input width W (pixels, before padding)"),
        ("kernel_h", "filter height R"),
        ("kernel_w", "filter width S"),
        ("stride", "stride s (pixels)"),
    ]
] + [Column("padding", "Int64", False, "nonneg", "zero padding p on each side (pixels)")]

GEMMS = [
    Column("step", "int64", True, "nonneg", "training step the row was recorded at"),
    Column("layer", "string", True, "", "layer name"),
    Column("layer_type", "string", True, "layer_type", f"one of {LAYER_TYPES}"),
    Column("phase", "string", True, "phase", f"one of {PHASES}"),
    Column("M", "int64", True, "positive", "rows of a and of the result"),
    Column("N", "int64", True, "positive", "columns of b and of the result"),
    Column("K", "int64", True, "positive", "reduction length"),
    Column("groups", "int64", True, "positive", "independent GEMMs of this shape (grouped convs)"),
    *_GEOMETRY,
    Column("a_format", "string", True, "format", "format of operand a (traces.formats)"),
    Column("b_format", "string", True, "format", "format of operand b"),
    Column("acc_format", "string", True, "acc", "accumulator (Accumulator.name)"),
    Column("out_format", "string", True, "format", "format the result is rounded to"),
    _stat("a_zero_frac", "fraction of zero values in a"),
    _stat("b_zero_frac", "fraction of zero values in b"),
    _stat("a_clip_frac", "fraction of a's inputs beyond the quantizer's range (saturated)"),
    _stat("a_flush_frac", "fraction of a's non-zero inputs quantized to zero"),
    _stat("b_clip_frac", "fraction of b's inputs beyond the quantizer's range"),
    _stat("b_flush_frac", "fraction of b's non-zero inputs quantized to zero"),
    *[_stat(f"grad_code_{i:02d}", f"count of gradient operand values with magnitude code {i}",
            "Int64", "nonneg") for i in range(HIST_BINS)],
    _stat("acc_overflows", "accumulator roundings that overflowed to +-inf", "Int64", "nonneg"),
    _stat("acc_underflows", "non-zero accumulator values rounded to zero", "Int64", "nonneg"),
    _stat("grad_scale_log2", "log2 of the GradScale factor s of this layer", "Float64", "finite"),
    _stat("a_scale", "real value of one unit of a's values (step size; 1 for float formats)",
          "Float64", "finite"),
    _stat("b_scale", "real value of one unit of b's values", "Float64", "finite"),
]

OPS = [
    Column("step", "int64", True, "nonneg", "training step"),
    Column("layer", "string", True, "", "layer whose GEMM output path runs the op"),
    Column("phase", "string", True, "op_phase", f"one of {OP_PHASES}"),
    Column("op", "string", True, "op", f"one of {OP_KINDS}"),
    Column("elements", "int64", True, "nonneg", "elements the op processes"),
    Column("in_format", "string", True, "format", "format of the op's input"),
    Column("out_format", "string", True, "format", "format of the op's output"),
    Column("fused", "bool", True, "", "runs on the GEMM's output path (else a separate pass)"),
]

METRICS = [
    Column("step", "int64", True, "nonneg", "training steps done when measured"),
    Column("epoch", "int64", True, "nonneg", "epochs done when measured"),
    Column("split", "string", True, "", "train, test or val"),
    Column("metric", "string", True, "", "loss (nats per sample) or accuracy (fraction)"),
    Column("value", "float64", True, "finite", "the value"),
]

TABLES: dict[str, list[Column]] = {"gemms": GEMMS, "ops": OPS, "metrics": METRICS}


def _columns(table: str) -> list[Column]:
    if table not in TABLES:
        raise TraceError(f"unknown table {table!r}; tables: {', '.join(TABLES)}")
    return TABLES[table]


def coerce(table: str, df: pd.DataFrame | None) -> pd.DataFrame:
    """Bring a writer's DataFrame to the schema: add absent optional columns as <NA>, order the
    columns, cast to the schema dtypes.

    Raises
    ------
    TraceError
        A required column is absent, an unknown column is present, a float column holds NaN (NaN
        would become <NA> in a nullable column: "not recorded" and "an error" must not mix), or a
        value does not fit its dtype.
    """
    cols = _columns(table)
    df = pd.DataFrame(columns=[c.name for c in cols]) if df is None else df
    names = [c.name for c in cols]
    extra = [c for c in df.columns if c not in names]
    if extra:
        raise TraceError(f"table {table}: unknown column {extra[0]!r}")
    out = {}
    n = len(df)
    for c in cols:
        if c.name not in df.columns:
            if c.required and n:
                raise TraceError(f"table {table}: missing column {c.name!r} ({c.doc})")
            out[c.name] = pd.array([pd.NA] * n, dtype=c.dtype) if not c.required else pd.array([], dtype=c.dtype)
            continue
        col = df[c.name]
        if isinstance(col.dtype, np.dtype) and col.dtype.kind == "f" and np.isnan(col.to_numpy()).any():
            row = int(np.flatnonzero(np.isnan(col.to_numpy()))[0])
            raise TraceError(f"table {table}, column {c.name!r}, row {row}: NaN (use <NA> for not recorded)")
        try:
            out[c.name] = col.astype(c.dtype).reset_index(drop=True)
        except (TypeError, ValueError) as exc:
            raise TraceError(f"table {table}, column {c.name!r}: cannot be {c.dtype}: {exc}") from exc
    return pd.DataFrame(out)


def from_records(table: str, rows: list[dict]) -> pd.DataFrame:
    """Build a table from row dicts; a key absent from a row is <NA> ("not recorded").

    Raises
    ------
    TraceError
        An unknown key, a NaN value (an error, not "not recorded"), or a value that does not fit
        its column's dtype.
    """
    cols = _columns(table)
    names = {c.name for c in cols}
    for i, row in enumerate(rows):
        for key, value in row.items():
            if key not in names:
                raise TraceError(f"table {table}, row {i}: unknown column {key!r}")
            if isinstance(value, float) and value != value:
                raise TraceError(f"table {table}, column {key!r}, row {i}: NaN (use <NA> for not recorded)")
    data = {}
    for c in cols:
        values = [row.get(c.name, pd.NA) for row in rows]
        try:
            data[c.name] = pd.array(values, dtype=c.dtype)
        except (TypeError, ValueError) as exc:
            raise TraceError(f"table {table}, column {c.name!r}: cannot be {c.dtype}: {exc}") from exc
    return coerce(table, pd.DataFrame(data))


def _fail(table: str, col: str, rows: np.ndarray, what: str, values) -> None:
    row = int(rows[0])
    raise TraceError(f"table {table}, column {col!r}, row {row}: {what} (got {values[row]!r})")


def validate(table: str, df: pd.DataFrame) -> None:
    """Check a table read from disk against the schema.

    Raises
    ------
    TraceError
        Naming the table, the column and the first offending row: a missing or extra column, a
        wrong dtype, a null in a required column, a non-positive M/N/K/groups, an unknown phase,
        layer type or format, a fraction outside [0, 1], a negative count.
    """
    cols = _columns(table)
    names = [c.name for c in cols]
    for name in df.columns:
        if name not in names:
            raise TraceError(f"table {table}: unexpected column {name!r}")
    for c in cols:
        if c.name not in df.columns:
            raise TraceError(f"table {table}: missing column {c.name!r} ({c.doc})")
        col = df[c.name]
        if str(col.dtype) != c.dtype:
            raise TraceError(f"table {table}, column {c.name!r}: dtype {col.dtype}, expected {c.dtype}")
        isna = col.isna().to_numpy()
        if c.required and isna.any():
            _fail(table, c.name, np.flatnonzero(isna), "missing value in a required column", col.to_numpy())
        _check_values(table, c, col, ~isna)


def _check_values(table: str, c: Column, col: pd.Series, present: np.ndarray) -> None:
    if not present.any() or not c.check:
        return
    vals = col.to_numpy(dtype=object if c.dtype == "string" else None)
    idx = np.flatnonzero(present)
    if c.check in ("positive", "nonneg", "fraction", "finite"):
        v = np.asarray(col.to_numpy(dtype="float64", na_value=0.0))[idx]
        bad = {
            "positive": v <= 0,
            "nonneg": v < 0,
            "fraction": (v < 0) | (v > 1),
            "finite": ~np.isfinite(v),
        }[c.check]
        what = {"positive": "must be > 0", "nonneg": "must be >= 0",
                "fraction": "must be in [0, 1]", "finite": "must be finite"}[c.check]
        if bad.any():
            _fail(table, c.name, idx[bad], what, vals)
        return
    allowed = {"phase": PHASES, "op_phase": OP_PHASES, "layer_type": LAYER_TYPES, "op": OP_KINDS}.get(c.check)
    present_vals = vals[idx]
    for value in pd.unique(present_vals):  # check each distinct value once
        rows = idx[present_vals == value]
        if allowed is not None:
            if value not in allowed:
                _fail(table, c.name, rows, f"unknown value, allowed {allowed}", vals)
        elif c.check in ("format", "acc"):
            try:
                Accumulator.parse(value) if c.check == "acc" else get_format(value)
            except FormatError as exc:
                kind = "accumulator" if c.check == "acc" else "format"
                _fail(table, c.name, rows, f"unknown {kind}: {exc}", vals)

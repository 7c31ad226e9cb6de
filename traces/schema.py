"""The trace schema, version 2: tables, columns, dtypes, units, and validation.

A run directory holds ``meta.json`` and three Parquet tables (design.md section 4):

``gemms``
    One row per GEMM per recorded step, in execution order. A GEMM multiplies ``a`` (M x K) by
    ``b`` (K x N), ``groups`` times (grouped and depthwise convolutions, attention heads;
    MACs = groups*M*N*K). The phases keep their GEMM meaning: with the forward GEMM Y = A B,
    ``fwd`` computes Y (a = A, b = B), ``bwd_data`` dA = dY B^T (a = dY, b = B^T), ``bwd_weight``
    the gradient of the second operand, dB^T = dY^T A (a = dY^T, b = A; its M is the forward's N,
    its N the forward's K). Each operand says what it is: its ``role`` (``activation``,
    ``weight``, ``gradient``), its format and scaling (``scale_kind`` per tensor or per block,
    ``block`` size, ``block_axis`` the GEMM dimension blocks run along, ``scale_format``), its
    bits per element with its scales (``bits``), and which quantized copy of which tensor it is
    (``tensor``, ``copy``: two GEMMs that read the same copy read the same bits). ``out_role`` is
    what the result is: ``activation`` (fwd), ``gradient`` (of an activation) or
    ``weight_gradient`` (bwd_weight of a GEMM whose second operand is a weight: only these get a
    weight update, master-weight traffic and weight requantization). Statistics columns are
    nullable (``Float64``, ``Int64``): <NA> means "not recorded" (shape-only traces are valid);
    NaN is an error. Version 1 traces (no operand descriptions) are read through `upgrade_v1`.
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
    "ATTENTION_ROLES",
    "HIST_BINS",
    "LAYER_TYPES",
    "OUT_ROLES",
    "PHASE_ROLES",
    "ROLES",
    "SCALE_KINDS",
    "WEIGHT_UPDATE_OPS",
    "OP_KINDS",
    "OP_PHASES",
    "PHASES",
    "SCHEMA_VERSION",
    "TABLES",
    "Column",
    "coerce",
    "from_records",
    "upgrade_v1",
    "validate",
    "validate_step_ops",
]

SCHEMA_VERSION = "2.0"
"""major.minor: a reader refuses an unknown major version and reads newer minors."""

PHASES = ("fwd", "bwd_data", "bwd_weight")
OP_PHASES = PHASES + ("update",)
LAYER_TYPES = ("linear", "conv2d", "dwconv2d", "lstm", "embedding", "matmul", "attention")
"""What a GEMM row's layer is: ``attention`` is an activation x activation GEMM (scores Q K^T,
context P V); ``matmul`` a bare GEMM with a weight (benchmarks, anchors)."""
ROLES = ("activation", "weight", "gradient")
OUT_ROLES = ("activation", "gradient", "weight_gradient")
SCALE_KINDS = ("tensor", "block", "block2d")
PHASE_ROLES = {"fwd": ("activation", "weight", "activation"), "bwd_data": ("gradient", "weight", "gradient"),
               "bwd_weight": ("gradient", "activation", "weight_gradient")}
"""(a_role, b_role, out_role) of each phase of a layer with a weight: the roles a writer that
does not say otherwise gets, and what a version 1 trace meant."""
ATTENTION_ROLES = {"fwd": ("activation", "activation", "activation"),
                   "bwd_data": ("gradient", "activation", "gradient"),
                   "bwd_weight": ("gradient", "activation", "gradient")}
"""(a_role, b_role, out_role) of an activation x activation GEMM (attention scores and context):
its ``bwd_weight`` is the gradient of its second operand, an activation."""
WEIGHT_UPDATE_OPS = ("sgd_momentum", "moments", "grad_norm")
"""Ops that exist only for a weight: on a GEMM's output path they belong to a weight gradient."""
HIST_BINS = 16
"""Magnitude codes of a log format (exponent bits <= 4): the gradient-code histogram's bins."""
OP_KINDS = (
    "cast", "quantize_uniform", "quantize_log", "quantize_block", "maxabs", "moments", "scale", "bias_add",
    "relu", "relu_bwd", "pact_bwd", "softmax_xent", "sgd_momentum", "bn_fwd", "bn_bwd",
    "col2im_add", "pool_fwd", "pool_bwd", "residual_add", "embedding_bwd", "lstm_cell",
    "lstm_cell_bwd", "grad_norm", "softmax", "softmax_bwd", "layer_norm", "layer_norm_bwd", "gelu", "gelu_bwd",
    "hadamard",
)
"""The op vocabulary of the ``ops`` table; `fourbit.hwsim.blocks.scaling_unit.OPS` gives each its cost."""


@dataclass(frozen=True)
class Column:
    """One column: name, pandas dtype, whether it must be present in every row (non-null), the
    check applied to its values and a description with the unit."""

    name: str
    dtype: str
    required: bool
    check: str  # "", "positive", "nonneg", "fraction", "finite", "phase", "op_phase", "op", "format", "acc", "layer_type", "role", "out_role", "scale_kind", "axis_a", "axis_b"
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
    *[c for x, axis in (("a", "M"), ("b", "N")) for c in (
        Column(f"{x}_role", "string", True, "role", f"what operand {x} is: one of {ROLES}"),
        Column(f"{x}_scale_kind", "string", True, "scale_kind", f"how {x}'s values are scaled: one of {SCALE_KINDS}"),
        Column(f"{x}_block", "Int64", False, "positive", f"elements per scale block of {x} (per side for 2-D blocks)"),
        Column(f"{x}_block_axis", "string", False, f"axis_{x}", f"the GEMM dimension {x}'s blocks run along: K or {axis}"),
        Column(f"{x}_scale_format", "string", True, "format", f"format {x}'s scales are stored in"),
        Column(f"{x}_bits", "Float64", True, "positive", f"bits stored per element of {x}, scales included"),
        Column(f"{x}_tensor", "string", False, "", f"the tensor {x} is a quantized copy of"),
        Column(f"{x}_copy", "Int64", False, "nonneg", f"which quantized copy of {x}_tensor (0, 1, ...) this step"),
    )],
    Column("out_role", "string", True, "out_role", f"what the result is: one of {OUT_ROLES}"),
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
    if table == "gemms":
        df = upgrade_v1(df)
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
    present = {key for row in rows for key in row}
    for c in cols:
        if c.name not in present and c.name in _DERIVED:
            continue  # left to `upgrade_v1`, which derives it
        values = [row.get(c.name, pd.NA) for row in rows]
        try:
            data[c.name] = pd.array(values, dtype=c.dtype)
        except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: an integer beyond int64
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
    allowed = {"phase": PHASES, "op_phase": OP_PHASES, "layer_type": LAYER_TYPES, "op": OP_KINDS, "role": ROLES,
               "out_role": OUT_ROLES, "scale_kind": SCALE_KINDS, "axis_a": ("K", "M"),
               "axis_b": ("K", "N")}.get(c.check)
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


_DERIVED = ("a_role", "b_role", "out_role", "a_scale_kind", "b_scale_kind", "a_scale_format", "b_scale_format",
            "a_bits", "b_bits")
"""The required gemms columns `upgrade_v1` derives when a table leaves them out."""


def upgrade_v1(gemms: pd.DataFrame) -> pd.DataFrame:
    """A ``gemms`` table with the operand descriptions of version 2 filled in where its columns
    are absent: the roles of a layer with a weight (`PHASE_ROLES`; an ``attention`` row's
    `ATTENTION_ROLES`), per-tensor FP32 scales, bits
    per element from the formats, tensor and copy not recorded. This reads a version 1 trace
    (which meant exactly that) and lets a writer that has shapes only leave them out; a column
    that is present is kept as it is.

    Raises TraceError for a phase or format the defaults cannot be derived from."""
    need = [name for name in _DERIVED if name not in gemms.columns]
    if not need or not len(gemms):
        return gemms
    df = gemms.copy()
    phases = df["phase"].astype(str)
    bad = ~phases.isin(PHASES)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise TraceError(f"table gemms, column 'phase', row {row}: unknown value, allowed {PHASES} "
                         f"(got {phases.iloc[row]!r})")
    attention = df["layer_type"].astype(str).eq("attention").to_numpy() if "layer_type" in df else np.zeros(len(df), bool)
    for i, name in enumerate(("a_role", "b_role", "out_role")):
        if name in need:
            df[name] = [ATTENTION_ROLES[ph][i] if att else PHASE_ROLES[ph][i] for ph, att in zip(phases, attention, strict=True)]
    for x in ("a", "b"):
        if f"{x}_scale_kind" in need:
            df[f"{x}_scale_kind"] = "tensor"
        if f"{x}_scale_format" in need:
            df[f"{x}_scale_format"] = "fp32"
        if f"{x}_bits" in need:
            try:
                df[f"{x}_bits"] = [float(get_format(f).bits_per_element) for f in df[f"{x}_format"].astype(str)]
            except FormatError as exc:
                raise TraceError(f"table gemms, column '{x}_format': {exc}") from None
    return df


def validate_step_ops(gemms: pd.DataFrame, ops: pd.DataFrame) -> None:
    """Check that weight-update ops (`WEIGHT_UPDATE_OPS`) sit only on the output path of a weight
    gradient: a (layer, phase) of ``ops`` with such an op must have a GEMM row of that step whose
    ``out_role`` is ``weight_gradient``.

    Raises TraceError naming the op's row, layer and phase."""
    if not len(ops):
        return
    weight_grads = set(zip(gemms.step[gemms.out_role == "weight_gradient"],
                           gemms.layer[gemms.out_role == "weight_gradient"], strict=True))
    updates = ops[ops.op.isin(WEIGHT_UPDATE_OPS)]
    for i, r in zip(updates.index, updates.itertuples(index=False), strict=True):
        if (r.step, r.layer) not in weight_grads or r.phase != "bwd_weight":
            raise TraceError(f"table ops, row {int(i)}: {r.op} on {r.layer} {r.phase}, which is not the "
                             "bwd_weight of a GEMM whose second operand is a weight (out_role weight_gradient)")

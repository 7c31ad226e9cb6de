"""Write and read a run directory: ``meta.json`` plus the Parquet tables of `fourbit.traces.schema`.

One module writes and reads (style.md rule 13). Writing is atomic: the directory is built under a
temporary name next to the target and renamed into place, and ``meta.json`` (written last)
carries the sha256 of every table, so a crash never leaves a half-written trace that reads as
valid. Reading checks the schema version (version 1 is read through
`fourbit.traces.schema.upgrade_v1`; an unknown major version is refused; a newer minor is read,
without the columns it added, since a minor version only adds columns), every checksum, every
table (`fourbit.traces.schema.validate`) and that weight-update ops sit on weight gradients.

``meta.json`` records the definition of every number format the tables name (``formats``:
`fourbit.traces.formats.format_spec`), so a trace of a format a user defined reads anywhere:
reading registers the formats it defines and refuses one whose name means another format here.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fourbit.traces import schema
from fourbit.traces.errors import ConfigError, FormatError, TraceError
from fourbit.traces.files import atomic_dir, previous_dir
from fourbit.traces.formats import (
    format_from_spec,
    format_names,
    format_spec,
    get_format,
    register_format,
    unregister_formats,
)

__all__ = ["Trace", "package_version", "read", "read_table", "write"]

META = "meta.json"

_ARROW_OK = {  # schema dtype -> accepted Arrow types of its Parquet column
    "int64": pa.types.is_int64,
    "Int64": pa.types.is_int64,
    "float64": pa.types.is_float64,
    "Float64": pa.types.is_float64,
    "string": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
    "bool": pa.types.is_boolean,
}

_PANDAS_TYPES = {pa.int64(): pd.Int64Dtype(), pa.float64(): pd.Float64Dtype(), pa.bool_(): pd.BooleanDtype()}
"""Arrow type -> the pandas dtype a column is read as before its cast to the schema's dtype (nullable:
no integer column passes through float64)."""


def package_version() -> str:
    """The installed fourbit version ("0+unknown" when running from a source tree)."""
    try:
        return metadata.version("fourbit")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass
class Trace:
    """A training trace: metadata (dict) and the tables ``gemms``, ``ops``, ``metrics``
    (DataFrames with the dtypes of `fourbit.traces.schema`)."""

    meta: dict = field(default_factory=dict)
    gemms: pd.DataFrame = field(default_factory=lambda: schema.coerce("gemms", None))
    ops: pd.DataFrame = field(default_factory=lambda: schema.coerce("ops", None))
    metrics: pd.DataFrame = field(default_factory=lambda: schema.coerce("metrics", None))

    def write(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write atomically to the run directory ``path`` (see `write`)."""
        return write(self, path, overwrite=overwrite)

    @property
    def steps(self) -> list[int]:
        """The recorded steps, increasing."""
        return sorted(int(s) for s in self.gemms["step"].unique())

    def step(self, step: int | None = None) -> Trace:
        """The GEMM and op rows of one recorded step (default: the last one).

        Raises TraceError when the step was not recorded.
        """
        steps = self.steps
        if not steps:
            raise TraceError("the trace has no GEMM rows")
        s = steps[-1] if step is None else int(step)
        if s not in steps:
            raise TraceError(f"step {s} was not recorded; recorded steps: {steps[:10]}{'...' if len(steps) > 10 else ''}")
        g = self.gemms[self.gemms["step"] == s].reset_index(drop=True)
        o = self.ops[self.ops["step"] == s].reset_index(drop=True)
        return Trace(dict(self.meta), g, o, self.metrics)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write(trace: Trace, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``trace`` as a run directory at ``path``, atomically (`fourbit.traces.files.atomic_dir`);
    returns the path. A ``checkpoint`` of a training run already at ``path`` moves into the new
    directory.

    Raises
    ------
    ConfigError
        ``path`` holds a run directory and ``overwrite`` is False, or holds something that is not a
        run directory.
    TraceError
        A table that does not fit the schema (`fourbit.traces.schema.coerce`).
    OSError
        The parent directory is not writable.
    """
    path = Path(path)
    if (path / META).exists() and not overwrite:
        raise ConfigError(f"{path} already holds a run directory; pass --overwrite (overwrite=True) to replace it")
    tables = {name: schema.coerce(name, getattr(trace, name)) for name in schema.TABLES}
    with atomic_dir(path, marker=META, keep=("checkpoint",)) as tmp:
        entries = {}
        for name, df in tables.items():
            f = tmp / f"{name}.parquet"
            df.to_parquet(f, index=False)
            entries[name] = {"file": f.name, "rows": len(df), "sha256": _sha256(f)}
        meta = {k: v for k, v in trace.meta.items() if k not in ("schema_version", "tables", "formats")}
        meta = {"schema_version": schema.SCHEMA_VERSION, **meta, "formats": _format_specs(tables), "tables": entries}
        meta.setdefault("package_version", package_version())
        with open(tmp / META, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, sort_keys=False, default=_json_default)
            f.write("\n")
    trace.meta = meta
    return path


def _format_specs(tables: dict[str, pd.DataFrame]) -> dict:
    """The definition of every format the tables name (their format columns)."""
    names = set()
    for name, df in tables.items():
        for c in schema.TABLES[name]:
            if c.check == "format" and c.name in df.columns:
                names.update(str(v) for v in df[c.name].dropna().unique())
    return {n: format_spec(get_format(n)) for n in sorted(names)}


def _register_formats(f: Path, meta: dict) -> list[str]:
    """Make the formats the trace defines known (`register_format`); returns the names it added.
    TraceError (nothing added) for a malformed definition or a name that means another format
    here."""
    specs = meta.get("formats", {})
    if not isinstance(specs, dict):
        raise TraceError(f"{f}: field 'formats' must map format names to their definitions")
    formats = []
    for name, spec in specs.items():
        try:
            fmt = format_from_spec(spec)
            if fmt.name != name:
                raise FormatError(f"its definition names {fmt.name!r}")
            known = get_format(name) if name in format_names() else None
            if known is not None and known != fmt:
                raise FormatError(f"this fourbit's {name!r} is a different format ({known!r})")
        except FormatError as exc:
            raise TraceError(f"{f}: format {name!r}: {exc}") from None
        if known is None:
            formats.append(fmt)
    return [register_format(fmt).name for fmt in formats]


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"meta value of type {type(obj).__name__} is not JSON-serialisable")


def _read_meta(path: Path) -> dict:
    f = path / META
    if not f.is_file():
        raise TraceError(f"{path}: no {META}; not a run directory (or an interrupted write)")
    try:
        with open(f, encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TraceError(f"{f}: unreadable ({exc})") from exc
    if not isinstance(meta, dict):
        raise TraceError(f"{f}: expected a JSON object with schema_version and tables, got {type(meta).__name__}")
    version = str(meta.get("schema_version", ""))
    major = version.split(".")[0]
    if major not in (schema.SCHEMA_VERSION.split(".")[0], "1"):
        raise TraceError(
            f"{f}: schema_version {version!r} has an unknown major version; this fourbit reads "
            f"{schema.SCHEMA_VERSION.split('.')[0]}.x (and 1.x, converted)"
        )
    if not isinstance(meta.get("tables"), dict):
        raise TraceError(f"{f}: field 'tables' is missing")
    _check_meta_fields(f, meta)
    return meta


_META_FIELDS = {"batch_size": (int, 1), "epochs": (int, 1), "steps": (int, 0), "seed": (int, 0),
                "model": (str, None), "dataset": (str, None), "recipe": (dict, None), "final": (dict, None),
                "source": (dict, None), "train_config": (dict, None), "model_params": (dict, None),
                "data_input_layer": (str, None)}
"""meta.json fields that readers use, with their type and least value (None: any); each may be
null (an imported trace has no dataset, seed or epochs)."""

_SOURCE_FIELDS = {"kind": str, "topology": str, "batchnorm": bool}
"""Fields of meta.json's ``source`` (how an imported trace was made) that readers use, with their type."""


def _check_meta_fields(f: Path, meta: dict) -> None:
    """TraceError naming the field and value of a meta.json field of the wrong type or range,
    a ``tables`` entry that is not a mapping, or the ``source`` of a trace imported from a
    SCALE-Sim topology without the topology and the batch it was imported at (what a job needs to
    import it again with another recipe)."""
    for name, entry in meta["tables"].items():
        if not isinstance(entry, dict):
            raise TraceError(f"{f}: tables.{name} is {entry!r}, not a mapping with file, sha256 and rows")
    for key, (kind, least) in _META_FIELDS.items():
        value = meta.get(key)
        if value is None:
            continue
        if not isinstance(value, kind) or isinstance(value, bool) or (least is not None and value < least):
            allowed = f"an integer >= {least}" if kind is int else f"a {'mapping' if kind is dict else 'string'}"
            raise TraceError(f"{f}: {key} is {value!r}, expected {allowed} or null")
    source = meta.get("source") or {}
    for key, kind in _SOURCE_FIELDS.items():
        if key in source and not isinstance(source[key], kind):
            allowed = "true or false" if kind is bool else "a string"
            raise TraceError(f"{f}: source.{key} is {source[key]!r}, expected {allowed}")
    if source.get("kind") == "scalesim" and ("topology" not in source or meta.get("batch_size") is None):
        raise TraceError(f"{f}: a trace imported from a SCALE-Sim topology (source.kind 'scalesim') needs "
                         f"source.topology and batch_size")


def _upgraded(meta: dict) -> bool:
    """Whether the trace has schema version 1 (read through `fourbit.traces.schema.upgrade_v1`)."""
    return str(meta.get("schema_version", "")).split(".")[0] == "1"


def _newer_minor(meta: dict) -> bool:
    """Whether the trace was written by a newer minor version of the schema than this reader's."""
    if _upgraded(meta):
        return False

    def minor(v: str) -> int:
        part = v.split(".")[1] if "." in v else "0"
        return int(part) if part.isdigit() else 0
    return minor(str(meta.get("schema_version", ""))) > minor(schema.SCHEMA_VERSION)


def _read_table(path: Path, name: str, entry: dict, newer_minor: bool = False, v1: bool = False) -> pd.DataFrame:
    given = entry.get("file", f"{name}.parquet")
    if not isinstance(given, str) or given in ("", ".", "..") or Path(given).name != given:
        raise TraceError(f"{path / META}: table {name}: file {given!r} is not the name of a file inside the run "
                         "directory (no path separators, no '..')")
    f = path / given
    if not f.is_file():
        raise TraceError(f"table {name}: file {f} is missing")
    if entry.get("sha256") != _sha256(f):
        raise TraceError(f"table {name}: checksum mismatch for {f} (the file changed after writing)")
    df = read_table(f, name, newer_minor=newer_minor, v1=v1)
    if len(df) != entry.get("rows", len(df)):
        raise TraceError(f"{f}: table {name}: {len(df)} rows, meta.json says {entry.get('rows')!r}")
    return df


def read_table(f: Path, name: str, *, newer_minor: bool = False, v1: bool = False) -> pd.DataFrame:
    """Read the Parquet file ``f`` as the schema's table ``name`` (of a run directory or of a
    training checkpoint), in the schema's dtypes, and validate it (`fourbit.traces.schema.validate`).
    ``newer_minor``: the file is of a newer minor schema version (its columns unknown here are
    left out); ``v1``: of version 1 (read through `fourbit.traces.schema.upgrade_v1`).

    Raises TraceError naming ``f``: unreadable, a column of another Arrow type, unknown or
    missing, a null in a required column, NaN, or a value the schema refuses (with the row).
    """
    try:
        table = pq.read_table(f)
        table.validate(full=True)  # e.g. invalid UTF-8 in a string column, which pyarrow reads unchecked
    except (pa.ArrowException, OSError, ValueError) as exc:  # pyarrow's errors derive from ArrowException
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__  # one line
        raise TraceError(f"table {name}: unreadable Parquet file {f}: {first}") from exc
    dtypes = {c.name: c.dtype for c in schema.TABLES[name]}
    required = {c.name for c in schema.TABLES[name] if c.required}
    if newer_minor:  # a newer minor version only adds columns: read the ones this version knows
        table = table.select([c for c in table.column_names if c in dtypes])
    for col in table.column_names:
        arr = table.column(col)
        want = dtypes.get(col)
        if want is None:  # before pandas converts it (a column of any Arrow type)
            raise TraceError(f"{f}: table {name}: unexpected column {col!r}")
        if not _ARROW_OK[want](arr.type):
            raise TraceError(f"{f}: table {name}, column {col!r}: dtype {arr.type}, expected {want}")
        if arr.null_count and col in required:  # before pandas casts it (an int64 column cannot hold it)
            row = pc.index(pc.is_null(arr), True).as_py()
            raise TraceError(f"{f}: table {name}, column {col!r}, row {row}: missing value in a required column")
        if pa.types.is_floating(arr.type) and pc.any(pc.is_nan(arr)).as_py():
            # NaN is an error; <NA> (null) means "not recorded"
            row = pc.index(pc.is_nan(arr), True).as_py()
            raise TraceError(f"{f}: table {name}, column {col!r}, row {row}: NaN (not recorded must be <NA>)")
    # the schema says every column's dtype: the pandas metadata in the file is dropped unread (damaged,
    # pyarrow's conversion fails on it with a KeyError, a TypeError or a JSON error)
    df = table.replace_schema_metadata(None).to_pandas(types_mapper=_PANDAS_TYPES.get)
    for col in df.columns:
        if str(df[col].dtype) != dtypes[col]:
            df[col] = df[col].astype(dtypes[col])  # same Arrow type, pandas' default mapping differs
    try:
        if v1 and name == "gemms":
            df = schema.coerce(name, df)  # the operand descriptions version 1 left implicit
        schema.validate(name, df)
    except TraceError as exc:
        raise TraceError(f"{f}: {exc}") from None
    return df


def read(path: str | os.PathLike) -> Trace:
    """Read and validate the run directory at ``path``.

    Raises
    ------
    TraceError
        Not a run directory, an unknown major schema version, a checksum mismatch, or a table
        that breaks the schema; the message names the file (``meta.json`` or the table's), and
        for a table the column and row.
    """
    path = Path(path)
    if not path.is_dir():
        left = previous_dir(path)
        hint = (f"; an overwrite was interrupted between its two renames: the previous run directory "
                f"is at {left}") if left else ""
        what = "not a directory" if path.exists() else "does not exist"
        raise TraceError(f"{path}: {what} (a run directory holds {META} and Parquet tables){hint}")
    meta = _read_meta(path)
    added = _register_formats(path / META, meta)
    try:
        tables = {}
        for name in schema.TABLES:
            entry = meta["tables"].get(name)
            if entry is None:
                raise TraceError(f"{path / META}: table {name!r} is not listed")
            tables[name] = _read_table(path, name, entry, _newer_minor(meta), _upgraded(meta))
        try:
            schema.validate_step_ops(tables["gemms"], tables["ops"])
        except TraceError as exc:  # an op row's fault: named in the ops table's file
            raise TraceError(f"{path / meta['tables']['ops'].get('file', 'ops.parquet')}: {exc}") from None
    except BaseException:
        unregister_formats(added)  # a trace that is refused leaves nothing behind
        raise
    if _upgraded(meta):
        meta = {**meta, "schema_version": schema.SCHEMA_VERSION, "upgraded_from": meta["schema_version"]}
    return Trace(meta, tables["gemms"], tables["ops"], tables["metrics"])

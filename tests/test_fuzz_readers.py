"""Fuzzing the public readers: a valid input mutated at random (hypothesis) is either read, or
refused with fourbit's own error (`fourbit.traces.errors.FourbitError`) in one line naming the
file; never another exception (a KeyError, TypeError, AttributeError, OverflowError, pyarrow's,
numpy's, zipfile's, json's or tomllib's errors), never a hang.

The readers: a trace directory (`fourbit.read`), a chip TOML file (`fourbit.load_chip`), a
SCALE-Sim topology (`fourbit.import_topology`, the trace then written), a training checkpoint
(`fourbit.train(..., resume=True)`). What is read is then used as the jobs use it (a trace's
`fourbit.Source` workloads and a step simulated; a loaded chip simulating a small trace); there
any fourbit error will do (a valid trace that a chip cannot run names no file). Each reader starts
from one valid input made once per module and copied per example, so examples are independent.
Hypothesis draws the mutations: in the "ci" profile the same 60 examples per reader on every run;
``HYPOTHESIS_PROFILE=explore`` draws 500 new ones.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import event, given, note
from hypothesis import strategies as st

from fourbit.traces import schema
from fourbit.traces.errors import FourbitError
from fourbit.traces.formats import format_names, unregister_formats

from .analysis import import_topology_traces
from .analysis.test_sweep import TOPOLOGY

# ------------------------------------------------------------------------------------------------
# mutations shared by every reader
# ------------------------------------------------------------------------------------------------
ODD_VALUES = [None, True, False, 0, -1, 1, 3, 2**31, 2**63, -(2**63) - 1, 10**30, 0.0, -0.5, 0.5, 1e308,
              math.inf, -math.inf, math.nan, "", "x", "nan", "inf", "-1", "1e999", "fp4", "int4", "fwd",
              [], [1, "a"], {}, {"kind": "int", "name": "x", "bits": 4}]
"""Values of other types and edge values that a mutation puts in place of a value."""

odd_values = st.one_of(st.sampled_from(ODD_VALUES), st.integers(), st.floats(), st.text(max_size=6),
                       st.lists(st.integers(), max_size=2))


def _keys(node) -> list:
    return list(node) if isinstance(node, dict) else list(range(len(node)))


def mutate_tree(data, doc, values=odd_values) -> str:
    """Change ``doc`` (nested dicts and lists, as read from JSON or TOML) in place at one place
    drawn by ``data``: a value replaced, a key or item deleted, or one added; returns what was
    done (for the failure report)."""
    node, path = doc, []
    while True:
        keys = _keys(node)
        if not keys:
            break
        key = data.draw(st.sampled_from(keys))
        child = node[key]
        if isinstance(child, dict | list) and child and data.draw(st.booleans()):
            node, path = child, [*path, key]
            continue
        break
    action = data.draw(st.sampled_from(["replace", "delete", "add"])) if keys else "add"
    if action == "delete":
        del node[key]
        return f"delete {'.'.join(map(str, [*path, key]))}"
    value = copy.deepcopy(data.draw(values))  # a copy: a later change must not change the constant drawn
    if action == "replace":
        node[key] = value
    elif isinstance(node, dict):
        key = data.draw(st.sampled_from(["extra", "", "tables", "run", "M"]) | st.text(max_size=5))
        node[key] = value
    else:
        key = len(node)
        node.append(value)
    return f"{action} {'.'.join(map(str, [*path, key]))}"


def mutate_bytes(data, raw: bytes) -> bytes:
    """``raw`` with bytes flipped, cut, inserted, or emptied."""
    how = data.draw(st.sampled_from(["flip", "truncate", "insert", "empty"]))
    if how == "empty" or not raw:
        return b""
    at = data.draw(st.integers(0, len(raw) - 1))
    if how == "flip":
        out = bytearray(raw)
        for i in range(data.draw(st.integers(1, 4))):
            j = (at + i * data.draw(st.integers(1, 64))) % len(out)
            out[j] ^= data.draw(st.integers(1, 255))
        return bytes(out)
    if how == "truncate":
        return raw[:at]
    return raw[:at] + data.draw(st.binary(min_size=1, max_size=8)) + raw[at:]


def check_refusal(exc: FourbitError, files: list[Path]) -> None:
    """The error is one line naming one of ``files`` (by name or path)."""
    msg = str(exc)
    assert "\n" not in msg, f"a message of more than one line: {msg!r}"
    assert any(f.name in msg or str(f) in msg for f in files), f"{type(exc).__name__} names none of " \
        f"{[f.name for f in files]}: {msg}"


def read_or_refused(read, files: list[Path], done: str):
    """``read()``'s result, or None when it raised fourbit's error in one line naming one of
    ``files`` (any other exception fails the test); records which happened."""
    try:
        value = read()
    except FourbitError as exc:
        event(f"refused: {type(exc).__name__}")
        check_refusal(exc, files)
        return None
    event(done)
    return value


def use_or_refused(use, done: str) -> None:
    """``use()`` of what a reader accepted, as the jobs use it: fourbit's error is accepted there
    (a step without GEMMs, a format no unit of the chip computes); any other exception fails."""
    try:
        use()
    except FourbitError as exc:
        event(f"{done}, then refused: {type(exc).__name__}")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A directory for the examples' copies (one fresh subdirectory per example)."""
    return tmp_path_factory.mktemp("fuzz")


def _fresh(scratch: Path, original: Path) -> Path:
    """A copy of the directory ``original`` in a new directory under ``scratch``."""
    target = Path(tempfile.mkdtemp(dir=scratch)) / original.name
    shutil.copytree(original, target)
    return target


# ------------------------------------------------------------------------------------------------
# 1. trace directories: fourbit.read
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def topology_trace(tmp_path_factory):
    """A three-layer SCALE-Sim topology imported at batch 8 with the int4 recipe (a valid trace)."""
    return import_topology_traces(tmp_path_factory.mktemp("topo"), TOPOLOGY, ("int4",))["int4"]


def _sha256(f: Path) -> str:
    import hashlib

    return hashlib.sha256(f.read_bytes()).hexdigest()


def _fix_meta(run: Path, table: str, rows: int | None) -> None:
    """meta.json's checksum (and row count) of ``table`` set to the file's, so that the reader
    gets past the checksum to the content."""
    meta = json.loads((run / "meta.json").read_text())
    meta["tables"][table]["sha256"] = _sha256(run / f"{table}.parquet")
    if rows is not None:
        meta["tables"][table]["rows"] = rows
    (run / "meta.json").write_text(json.dumps(meta))


VOCABULARY = sorted({*schema.PHASES, *schema.OP_PHASES, *schema.LAYER_TYPES, *schema.ROLES, *schema.OUT_ROLES,
                     *schema.SCALE_KINDS, *schema.OP_KINDS, "K", "M", "N", "", "conv1", "conv2", "fc", "fp32", "fp16",
                     "bf16", "int4", "uint4", "int8", "int32", "fp4_r4_e3", "fp4_r2_e2_odd", "mxfp4", "nvfp4",
                     "int4_block_b32_2d", "fp16/g4/c64", "fp32/g1", "fp16/g4/c6", "fp8_e4m3", "exact"})
"""Values of the trace's string columns (valid in one column or another) besides random text."""


def _column_values(data, arr: pa.ChunkedArray) -> pa.Array:
    """A column of the same length with one value changed, its type changed, or nulls."""
    values = arr.to_pylist()
    n = len(values)
    how = data.draw(st.sampled_from(["value", "null", "type", "all"]))
    if how == "null" and n:
        values[data.draw(st.integers(0, n - 1))] = None
        return pa.array(values, arr.type)
    if how == "type" or not n:
        kind = data.draw(st.sampled_from(["string", "float64", "int32", "bool", "int64", "null"]))
        if kind == "null":
            return pa.nulls(n)
        convert = {"string": str, "float64": lambda v: float(len(v)) if isinstance(v, str) else float(v),
                   "int32": lambda v: len(v) if isinstance(v, str) else int(v) % 2**31,
                   "bool": bool, "int64": lambda v: len(v) if isinstance(v, str) else int(v)}[kind]
        return pa.array([None if v is None or (isinstance(v, float) and math.isnan(v)) else convert(v)
                         for v in values], kind)
    if pa.types.is_integer(arr.type):
        pick = st.sampled_from([1, 2, 3, 7, 64, 1000, 0, -1, -(2**63), 2**63 - 1, 2**40, 10**18]) \
            | st.integers(-(2**63), 2**63 - 1)
    elif pa.types.is_floating(arr.type):
        pick = st.sampled_from([0.0, -1.0, 2.0, 1e300, math.inf, -math.inf, math.nan]) | st.floats()
    elif pa.types.is_boolean(arr.type):
        pick = st.booleans()
    else:
        pick = st.sampled_from(VOCABULARY) | st.text(max_size=6)
    if how == "all":
        return pa.array([data.draw(pick)] * n, arr.type)
    values[data.draw(st.integers(0, n - 1))] = data.draw(pick)
    return pa.array(values, arr.type)


def _mutate_table(data, t: pa.Table) -> pa.Table:
    """``t`` with a column changed (`_column_values`), dropped or added, rows repeated or
    dropped, or no rows."""
    how = data.draw(st.sampled_from(["column", "drop", "extra", "rows", "empty"]))
    names = t.column_names
    if how == "drop":
        return t.drop_columns([data.draw(st.sampled_from(names))])
    if how == "extra":
        name = data.draw(st.sampled_from(["extra", "M", "step", "value"]) | st.text(min_size=1, max_size=5))
        if name in names:
            return t
        return t.append_column(name, pa.array([data.draw(st.integers(-5, 5))] * t.num_rows, pa.int64()))
    if how == "rows":  # rows repeated, reordered or dropped
        idx = data.draw(st.lists(st.integers(0, max(t.num_rows - 1, 0)), max_size=t.num_rows + 2))
        return t.take(pa.array(idx, pa.int64())) if t.num_rows else t
    if how == "empty":
        return t.slice(0, 0)
    col = data.draw(st.sampled_from(names))
    return t.set_column(names.index(col), col, _column_values(data, t.column(col)))


def _mutate_trace(data, run: Path) -> str:
    """Damage the run directory ``run``: meta.json's values or bytes, a table's bytes (mostly with
    the checksum fixed, so pyarrow reads them), a table rewritten (`_mutate_table`) or removed;
    returns what was done."""
    tables = ["gemms", "ops", "metrics"]
    how = data.draw(st.sampled_from(["meta", "meta_bytes", "table", "table_bytes", "remove"]))
    if how == "meta":
        meta = json.loads((run / "meta.json").read_text())
        done = [mutate_tree(data, meta) for _ in range(data.draw(st.integers(1, 3)))]
        (run / "meta.json").write_text(json.dumps(meta))
        return f"meta.json: {done}"
    if how == "meta_bytes":
        (run / "meta.json").write_bytes(mutate_bytes(data, (run / "meta.json").read_bytes()))
        return "meta.json bytes"
    table = data.draw(st.sampled_from(tables))
    f = run / f"{table}.parquet"
    if how == "remove":
        f.unlink()
        return f"{table}.parquet removed"
    if how == "table_bytes":
        f.write_bytes(mutate_bytes(data, f.read_bytes()))
        if data.draw(st.sampled_from([True, True, True, False])):  # mostly past the checksum, to pyarrow
            _fix_meta(run, table, None)
        return f"{table}.parquet bytes"
    t = _mutate_table(data, pq.read_table(f))
    pq.write_table(t, f)
    _fix_meta(run, table, t.num_rows if data.draw(st.sampled_from([True, True, True, False])) else None)
    return f"{table}.parquet rewritten"


@functools.cache
def fourbit_chip():
    """The ``fourbit`` preset (a function, not a fixture: hypothesis would print it with every
    failing example)."""
    from fourbit.hwsim.config import load_chip

    return load_chip("fourbit")


def _use_trace(trace, run: Path | None = None) -> None:
    """What the jobs do with a trace (``run``: its directory): the workloads of other recipes
    (`fourbit.Source`, from the trace's metadata: nothing is trained or imported here); what the
    simulator does: one step's GEMMs and ops, their shapes and formats, the step simulated when
    its GEMMs are small (the fuzz must stay fast)."""
    from fourbit.analysis.workloads import Source
    from fourbit.hwsim.engine import simulate

    if run is not None:
        source = Source(trace=run)
        source.key()
        source.workloads(["fp32", "int4"], run.parent / "jobs")
    step = trace.step()
    g = step.gemms
    macs = sum(int(r.groups) * int(r.M) * int(r.N) * int(r.K) for r in g.itertuples(index=False))
    sizes = g[["M", "N", "K", "groups"]].to_numpy()
    if macs <= 10**9 and (sizes <= 1 << 16).all():
        simulate(step, fourbit_chip()).totals()
        event("simulated")


@given(data=st.data())
def test_a_mutated_trace_directory_is_read_or_refused_naming_the_file(data, topology_trace, scratch):
    from fourbit.traces.io import read

    run = _fresh(scratch, topology_trace)
    what = _mutate_trace(data, run)
    note(what)
    known = set(format_names())
    try:
        files = [run / "meta.json", *(run / f"{t}.parquet" for t in ("gemms", "ops", "metrics"))]
        trace = read_or_refused(lambda: read(run), files, "read")
        if trace is not None:
            use_or_refused(lambda: _use_trace(trace, run), "read")
    finally:
        unregister_formats([n for n in format_names() if n not in known])  # the formats the trace defined


# ------------------------------------------------------------------------------------------------
# 2. chip TOML files: fourbit.load_chip
# ------------------------------------------------------------------------------------------------
TOML_TOKENS = ["", "nan", "-nan", "inf", "-inf", "1e999", "0", "-1", "0.0", "1e-300", "99999999999999999999999",
               "9223372036854775808", '"64"', '"nan"', '"inf"', "true", "[1, 2]", "{ a = 1 }", "1979-05-27",
               "'ws'", '"fp16"', "4", "65537", "1.5", '"""x"""', "= 1"]
"""Raw TOML text put in place of a value (some of it not valid TOML)."""

toml_values = st.one_of(st.sampled_from([v for v in ODD_VALUES if v is not None]), st.integers(),
                        st.floats(), st.text(max_size=6), st.booleans(),
                        st.dictionaries(st.sampled_from(["rows", "macs_per_pe", "accumulator", "x"]),
                                        st.integers(-2, 2) | st.text(max_size=3), max_size=2))


EDGE_NUMBERS = [0, 1, 2, 3, 4, 16, 1 << 16, (1 << 16) + 1, 10**9, 10**9 + 1, 1 << 40, (1 << 40) + 1, -1, 1e3, 999.0,
                1e12, 1.0, 0.5, 1e-300, math.inf, math.nan]
"""Numbers at and just past the ends of the chip fields' ranges."""


def _tables(doc: dict) -> list[dict]:
    """``doc`` and every table inside it."""
    return [doc] + [t for v in doc.values() if isinstance(v, dict) for t in _tables(v)]


def _mutate_toml(data, text: str) -> str:
    """A chip's TOML ``text`` with values of other types, numbers at the ends of their ranges,
    keys deleted or added (``tree``, ``edge``), a value's text replaced (``line``) or bytes
    damaged."""
    import tomllib

    import tomli_w

    how = data.draw(st.sampled_from(["tree", "edge", "line", "bytes"]))
    if how == "edge":  # numbers at and past the ends of their ranges
        doc = tomllib.loads(text)
        leaves = [(table, key) for table in _tables(doc) for key, v in table.items()
                  if isinstance(v, int | float) and not isinstance(v, bool)]
        for _ in range(data.draw(st.integers(1, 3))):
            table, key = data.draw(st.sampled_from(leaves))
            table[key] = data.draw(st.sampled_from(EDGE_NUMBERS))
            note(f"{key} = {table[key]!r}")
        return tomli_w.dumps(doc)
    if how == "tree":
        doc = tomllib.loads(text)
        done = [mutate_tree(data, doc, toml_values) for _ in range(data.draw(st.integers(1, 3)))]
        note(f"TOML: {done}")
        return tomli_w.dumps(doc)
    if how == "line":
        lines = text.splitlines()
        values = [i for i, line in enumerate(lines) if "=" in line and not line.startswith("#")]
        at = data.draw(st.sampled_from(values))
        key = lines[at].split("=", 1)[0]
        lines[at] = f"{key}= {data.draw(st.sampled_from(TOML_TOKENS) | st.text(max_size=4))}"
        note(f"line {at + 1}: {lines[at]!r}")
        return "\n".join(lines) + "\n"
    return mutate_bytes(data, text.encode()).decode("utf-8", "surrogateescape")


@functools.cache
def _read(path: Path):
    """The trace at ``path``, read once."""
    from fourbit.traces.io import read

    return read(path)


@given(data=st.data())
def test_a_mutated_chip_file_is_loaded_or_refused_naming_the_file(data, scratch, topology_trace):
    from importlib import resources

    from fourbit.hwsim.config import load_chip, preset_names
    from fourbit.hwsim.engine import simulate

    preset = data.draw(st.sampled_from(preset_names()))
    text = resources.files("fourbit.hwsim").joinpath("configs", f"{preset}.toml").read_text(encoding="utf-8")
    if data.draw(st.booleans()):
        text = load_chip(preset).to_toml()  # what `fourbit chip <preset>` prints
    path = Path(tempfile.mkdtemp(dir=scratch)) / "chip.toml"
    path.write_bytes(_mutate_toml(data, text).encode("utf-8", "surrogateescape"))
    chip = read_or_refused(lambda: load_chip(path), [path], "loaded")
    if chip is not None:  # the small topology's one step
        use_or_refused(lambda: simulate(_read(topology_trace), chip).totals(), "loaded")


# ------------------------------------------------------------------------------------------------
# 3. topology files: fourbit.import_topology
# ------------------------------------------------------------------------------------------------
GEMM_TOPOLOGY = "Layer, M, N, K,\nqkv, 16, 48, 16,\nproj, 16, 16, 16,\nfc_DP, 1, 10, 16,\n"
CELLS = ["", " ", "x", "-1", "0", "1", "2", "+4", "1" + "0" * 30, str(2**62), str(2**31), "1.5", "3e2", "0x10",
         "1_000", "\u0663", "nan", "inf", "conv1", "c_DP", "# 3", ",", '"5"', "\t9"]
"""Cells put in place of a topology cell: edge numbers, text, numbers Python reads but SCALE-Sim does not."""


def _mutate_topology(data, text: str) -> str:
    """A topology's CSV ``text`` with cells replaced (``cell``; ``big``: valid and large), a column
    or a row dropped, repeated or added, or bytes damaged."""
    how = data.draw(st.sampled_from(["cell", "big", "big", "column", "row", "bytes"]))
    if how == "bytes":
        return mutate_bytes(data, text.encode()).decode("utf-8", "surrogateescape")
    rows = [[c.strip() for c in line.split(",")] for line in text.splitlines()]
    for _ in range(data.draw(st.integers(1, 3))):
        if how == "big":  # valid, and large: input sizes, channels, filters, strides, M, N, K
            i = data.draw(st.integers(1, len(rows) - 1))
            j = data.draw(st.sampled_from([1, 2, 3] if len(rows[0]) < 8 else [1, 2, 5, 6, 7]))
            rows[i][j] = str(data.draw(st.sampled_from([2**16, 2**20, 2**31, 2**40, 2**62, 10**30])))
        elif how == "cell":
            i = data.draw(st.integers(1, len(rows) - 1)) if len(rows) > 1 and data.draw(st.integers(0, 7)) else 0
            if rows[i]:
                j = data.draw(st.integers(0, len(rows[i]) - 1))
                rows[i][j] = data.draw(st.sampled_from(CELLS) | st.text(max_size=4))
        elif how == "column":
            j = data.draw(st.integers(0, max(len(r) for r in rows)))
            cell = data.draw(st.sampled_from(CELLS))
            drop = data.draw(st.booleans())
            for r in rows:
                if drop:
                    del r[j:j + 1]
                else:
                    r.insert(j, cell)
        else:
            i = data.draw(st.integers(0, len(rows) - 1))
            what = data.draw(st.sampled_from(["drop", "repeat", "new"]))
            if what == "drop":
                del rows[i]
            elif what == "repeat":
                rows.insert(i, list(rows[i]))
            else:
                rows.insert(i, data.draw(st.lists(st.sampled_from(CELLS), max_size=9)))
            if not rows:
                break
    return "\n".join(", ".join(r) for r in rows) + "\n"


@functools.cache
def _recipe(name: str) -> dict:
    """The description of recipe ``name`` (what `fourbit.import_topology` takes)."""
    from fourbit.models.recipes import get_recipe

    return get_recipe(name).describe()


@given(data=st.data())
def test_a_mutated_topology_is_imported_or_refused_naming_the_file(data, scratch):
    from fourbit.traces.io import read
    from fourbit.traces.scalesim import import_topology

    base = data.draw(st.sampled_from([TOPOLOGY, GEMM_TOPOLOGY]))
    where = Path(tempfile.mkdtemp(dir=scratch))
    path = where / "topology.csv"
    path.write_bytes(_mutate_topology(data, base).encode("utf-8", "surrogateescape"))
    note(path.read_text(errors="replace"))
    batch = data.draw(st.sampled_from([1, 8, 64]))
    recipe = data.draw(st.sampled_from(["int4", "fp32", "nvfp4"]))
    run = read_or_refused(lambda: import_topology(path, batch, _recipe(recipe)).write(where / "run"), [path],
                          "imported")
    if run is not None:
        use_or_refused(lambda: _use_trace(read(run), run), "imported")


# ------------------------------------------------------------------------------------------------
# 4. checkpoints: fourbit.train(..., resume=True)
# ------------------------------------------------------------------------------------------------
RUN = dict(epochs=1, batch_size=256, progress=False)
"""The smallest run: the MLP on digits, one epoch of 5 steps (int4: GradScales and PACT clips)."""


@functools.cache
def digits():
    """scikit-learn's digits, loaded once."""
    from fourbit.models.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished run directory with its checkpoint (``checkpoint/``: arrays.npz, state.json and
    the trace rows so far); resumed as it is, the run ends at once with the same result (a
    damaged epoch count may make it train an epoch: 5 steps)."""
    from fourbit.models.trainer import train

    out = tmp_path_factory.mktemp("run") / "mlp-int4"
    train("mlp", digits(), "int4", out=out, **RUN)
    return out


def _mutate_arrays(data, f: Path) -> str:
    """Rewrite the npz file ``f`` with an array dropped, added, reshaped, of another dtype, with a
    non-finite or large value, or renamed; returns what was done."""
    arrays = dict(np.load(f))
    key = data.draw(st.sampled_from(sorted(arrays)))
    how = data.draw(st.sampled_from(["drop", "extra", "shape", "dtype", "values", "rename"]))
    if how == "drop":
        del arrays[key]
    elif how == "extra":
        name = data.draw(st.sampled_from(["velocity/fc1.weight", "param/fc9.weight", "buffer/x", "x", "velocity/"]))
        arrays[name] = np.zeros(data.draw(st.sampled_from([(), (3,), (256, 64)])), np.float32)
    elif how == "shape":
        a = arrays[key]
        arrays[key] = data.draw(st.sampled_from([a.ravel(), a[:1], a.reshape(1, *a.shape), np.float32(1.0)]))
    elif how == "dtype":
        arrays[key] = arrays[key].astype(data.draw(st.sampled_from(["float16", "float64", "int32", "bool",
                                                                    "complex64", "uint8"])))
    elif how == "values":
        a = arrays[key].copy()
        value = data.draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e30, 0.0, -1.0]))
        a.flat[data.draw(st.integers(0, a.size - 1))] = value
        arrays[key] = a
    else:
        name = data.draw(st.sampled_from(["param/" + key, key.upper(), key + "/", "velocity/fc1.bias"]))
        arrays[name] = arrays.pop(key)
    np.savez(f, **arrays)
    return f"{how} {key}"


STATE_VALUES = st.one_of(odd_values, st.sampled_from([0, 1, 2, 4, 5, 6, 1.5, "PCG64", "MT19937", {"exponent": 3},
                                                      {"exponent": 1, "calibrated": True, "held": -1}]))
"""Values put in a checkpoint's state.json: `ODD_VALUES` and values near the valid ones."""


def _mutate_checkpoint(data, ck: Path) -> Path:
    """Damage one file of the checkpoint ``ck``; returns it."""
    name = data.draw(st.sampled_from(["state.json", "state.json", "arrays.npz", "gemms.parquet", "ops.parquet"]))
    f = ck / name
    how = data.draw(st.sampled_from(["content", "content", "bytes"] + (["remove"] if name != "state.json" else [])))
    if how == "remove":
        f.unlink()
    elif how == "bytes":
        f.write_bytes(mutate_bytes(data, f.read_bytes()))
    elif name == "state.json":
        state = json.loads(f.read_text())
        note([mutate_tree(data, state, STATE_VALUES) for _ in range(data.draw(st.integers(1, 3)))])
        f.write_text(json.dumps(state))
    elif name == "arrays.npz":
        note(_mutate_arrays(data, f))
    else:
        pq.write_table(_mutate_table(data, pq.read_table(f)), f)
    note(f"{name}: {how}")
    return f


@given(data=st.data())
def test_a_damaged_checkpoint_is_resumed_or_refused_naming_the_file(data, finished_run, scratch):
    from fourbit.models.trainer import train

    out = _fresh(scratch, finished_run)
    f = _mutate_checkpoint(data, out / "checkpoint")
    run = read_or_refused(lambda: train("mlp", digits(), "int4", out=out, resume=True, **RUN), [f], "resumed")
    if run is None:
        return
    assert run.path == out

"""Write/read round trip of run directories."""

from __future__ import annotations

import re

import pandas as pd
import pyarrow as pa
import pytest

from fourbit.traces.errors import TraceError
from fourbit.traces.io import read


def test_round_trip_of_a_trainer_trace_and_the_committed_traces_are_current(tmp_path, digits_traces):
    """Training the committed int4 trace's run again gives it bit for bit (`tests/data/make_traces.py`
    regenerates them after a change of what the emulator records), and a written trace reads
    back equal."""
    from tests.data.make_traces import train_trace

    fresh = train_trace("mlp-digits-int4")
    back = read(fresh.write(tmp_path / "run"))
    for got in (back, digits_traces["int4"]):
        for name in ("gemms", "ops", "metrics"):
            pd.testing.assert_frame_equal(getattr(got, name), getattr(fresh, name))
        assert {k: v for k, v in got.meta.items() if k != "package_version"} == \
            {k: v for k, v in fresh.meta.items() if k != "package_version"}
    g = back.gemms
    assert set(g.phase) == {"fwd", "bwd_data", "bwd_weight"}
    assert {"M", "N", "K", "layer", "a_format", "b_format", "acc_format", "out_format"} <= set(g.columns)
    assert len(g) == 3 * 4  # three phases of the four Linear layers


def test_checksum_mismatch_is_refused(tmp_path, digits_traces):
    path = digits_traces["fp32"].write(tmp_path / "run")
    with open(path / "gemms.parquet", "ab") as f:
        f.write(b"junk")
    with pytest.raises(TraceError, match="table gemms: checksum mismatch"):
        read(path)


def test_meta_that_is_not_an_object_is_refused(tmp_path, digits_traces):
    path = digits_traces["fp32"].write(tmp_path / "run")
    (path / "meta.json").write_text("[]")
    with pytest.raises(TraceError, match="expected a JSON object"):
        read(path)


@pytest.mark.parametrize("file", ["/etc/passwd", "../outside.parquet", "sub/gemms.parquet", "..", 7])
def test_a_table_file_outside_the_run_directory_is_refused(tmp_path, digits_traces, file):
    """meta.json names each table's file: only a file name inside the run directory is read."""
    import json

    path = digits_traces["fp32"].write(tmp_path / "run")
    (tmp_path / "outside.parquet").write_bytes((path / "gemms.parquet").read_bytes())
    meta = json.loads((path / "meta.json").read_text())
    meta["tables"]["gemms"]["file"] = file
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(TraceError, match=r"meta.json: table gemms: file .* is not the name of a file inside the run"):
        read(path)


def _rewrite(path, table: str, fn) -> None:
    """Apply ``fn`` to a table's Arrow data and write it back with a matching checksum."""
    import hashlib
    import json

    import pyarrow.parquet as pq

    pq.write_table(fn(pq.read_table(path / f"{table}.parquet")), path / f"{table}.parquet")
    meta = json.loads((path / "meta.json").read_text())
    meta["tables"][table]["sha256"] = hashlib.sha256((path / f"{table}.parquet").read_bytes()).hexdigest()
    (path / "meta.json").write_text(json.dumps(meta))


def test_a_missing_value_in_a_required_integer_column_is_named(tmp_path, digits_traces):
    path = digits_traces["fp32"].write(tmp_path / "run")

    def null_m(t):
        values = t.column("M").to_pylist()
        values[1] = None
        return t.set_column(t.column_names.index("M"), "M", pa.array(values, type=pa.int64()))

    _rewrite(path, "gemms", null_m)
    with pytest.raises(TraceError, match=r"gemms.parquet: table gemms, column 'M', row 1: missing value in a required"):
        read(path)


@pytest.mark.parametrize("field, value, message", [
    ("batch_size", "64", "batch_size is '64', expected an integer >= 1 or null"),
    ("batch_size", True, "batch_size is True, expected an integer >= 1 or null"),
    ("epochs", 0, "epochs is 0, expected an integer >= 1 or null"),
    ("recipe", "int4", "recipe is 'int4', expected a mapping or null"),
    ("tables.gemms", "gemms.parquet", "tables.gemms is 'gemms.parquet', not a mapping"),
    # found by tests/test_fuzz_readers.py: fields the jobs use (fourbit.Source), were AttributeErrors and KeyErrors
    ("source", "scalesim", "source is 'scalesim', expected a mapping or null"),
    ("source", {"kind": "scalesim", "topology": 5}, "source.topology is 5, expected a string"),
    ("source", {"kind": "scalesim"},
     r"a trace imported from a SCALE-Sim topology \(source.kind 'scalesim'\) needs source.topology and batch_size"),
    ("train_config", [], r"train_config is \[\], expected a mapping or null"),
    ("model_params", 0, "model_params is 0, expected a mapping or null"),
    ("data_input_layer", 1, "data_input_layer is 1, expected a string or null"),
])
def test_meta_fields_of_the_wrong_type_are_named(tmp_path, digits_traces, field, value, message):
    import json

    path = digits_traces["fp32"].write(tmp_path / "run")
    meta = json.loads((path / "meta.json").read_text())
    if field.startswith("tables."):
        meta["tables"][field.split(".")[1]] = value
    else:
        meta[field] = value
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(TraceError, match=message):
        read(path)


@pytest.mark.parametrize("table, change, message", [
    ("gemms", lambda t: t.drop_columns(["K"]), "table gemms: missing column 'K' (reduction length)"),
    ("gemms", lambda t: t.append_column("extra", t.column("M")), "table gemms: unexpected column 'extra'"),
    ("metrics", lambda t: t.set_column(t.column_names.index("epoch"), "epoch", t.column("epoch").cast("int32")),
     "table metrics, column 'epoch': dtype int32, expected int64"),
    ("ops", lambda t: t.set_column(t.column_names.index("elements"), "elements", pa.array([-1] * t.num_rows)),
     "table ops, column 'elements', row 0: must be >= 0 (got np.int64(-1))"),
])
def test_a_table_that_breaks_the_schema_is_named_by_its_file(tmp_path, digits_traces, table, change, message):
    """Found by tests/test_fuzz_readers.py: the message named the table, not its file."""
    path = digits_traces["fp32"].write(tmp_path / "run")
    _rewrite(path, table, change)
    with pytest.raises(TraceError) as info:
        read(path)
    assert str(info.value) == f"{path / f'{table}.parquet'}: {message}"


def test_weight_update_ops_off_weight_gradients_are_named_by_the_ops_file(tmp_path, digits_traces):
    path = digits_traces["fp32"].write(tmp_path / "run")
    _rewrite(path, "gemms", lambda t: t.set_column(t.column_names.index("out_role"), "out_role",
                                                   pa.array(["gradient"] * t.num_rows, pa.string())))
    with pytest.raises(TraceError, match=rf"^{re.escape(str(path / 'ops.parquet'))}: table ops, row \d+: "
                                         r"sgd_momentum on fc\d bwd_weight, which is not the bwd_weight"):
        read(path)


def test_damaged_pandas_metadata_in_a_table_is_not_read(tmp_path, digits_traces):
    """Found by tests/test_fuzz_readers.py: a byte flipped in the pandas metadata of a Parquet file's footer gave a
    UnicodeDecodeError or a JSONDecodeError (a KeyError or a TypeError when still valid JSON) from
    pyarrow's conversion; the reader knows every column's dtype and does not need it."""
    path = digits_traces["int4"].write(tmp_path / "run")
    for metadata in (b'{"colunms": []}', b"[]", b'{"columns": 3}', b"\xed\xa0\x80"):
        _rewrite(path, "gemms", lambda t, m=metadata: t.replace_schema_metadata({"pandas": m}))
        pd.testing.assert_frame_equal(read(path).gemms, digits_traces["int4"].gemms)


def test_invalid_utf8_in_a_string_column_is_an_unreadable_table(tmp_path, digits_traces):
    """Found by tests/test_fuzz_readers.py: pyarrow reads a string column's bytes unchecked, and its conversion to
    pandas then failed with a bare ArrowException ("Wrapping ... failed")."""
    path = digits_traces["fp32"].write(tmp_path / "run")

    def bad_layer(t):
        names = pa.array([b"\xffc1"] * t.num_rows, pa.binary()).view(pa.string())
        return t.set_column(t.column_names.index("layer"), "layer", names)

    _rewrite(path, "ops", bad_layer)
    with pytest.raises(TraceError, match=rf"^table ops: unreadable Parquet file {re.escape(str(path / 'ops.parquet'))}: "
                                         r".*Invalid UTF8 sequence"):
        read(path)


def test_an_unreadable_table_is_one_line_naming_the_file(tmp_path, digits_traces):
    """A damaged page header: pyarrow's message has two lines, the error has the first (found by
    tests/test_fuzz_readers.py)."""
    import hashlib
    import json

    path = digits_traces["fp32"].write(tmp_path / "run")
    f = path / "gemms.parquet"
    raw = bytearray(f.read_bytes())
    raw[4] ^= 0xFF  # the first page header follows the 4 magic bytes
    f.write_bytes(bytes(raw))
    meta = json.loads((path / "meta.json").read_text())
    meta["tables"]["gemms"]["sha256"] = hashlib.sha256(bytes(raw)).hexdigest()
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(TraceError, match=rf"^table gemms: unreadable Parquet file {re.escape(str(f))}: "
                                         r"Couldn't deserialize thrift: [^\n]*$"):
        read(path)

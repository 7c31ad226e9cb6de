"""Write/read round trip of run directories."""

from __future__ import annotations

import pandas as pd
import pytest

from fourbit.traces.errors import TraceError
from fourbit.traces.io import read


def test_round_trip_of_a_trainer_trace(tmp_path, digits_runs):
    run = digits_runs["int4"]
    path = run.trace.write(tmp_path / "run")
    back = read(path)
    for name in ("gemms", "ops", "metrics"):
        pd.testing.assert_frame_equal(getattr(back, name), getattr(run.trace, name))
    assert back.meta == run.trace.meta
    g = back.gemms
    assert set(g.phase) == {"fwd", "bwd_data", "bwd_weight"}
    assert {"M", "N", "K", "layer", "a_format", "b_format", "acc_format", "out_format"} <= set(g.columns)
    assert len(g) == 3 * 4  # three phases of the four Linear layers


def test_checksum_mismatch_is_refused(tmp_path, digits_runs):
    path = digits_runs["fp32"].trace.write(tmp_path / "run")
    with open(path / "gemms.parquet", "ab") as f:
        f.write(b"junk")
    with pytest.raises(TraceError, match="table gemms: checksum mismatch"):
        read(path)


def test_meta_that_is_not_an_object_is_refused(tmp_path, digits_runs):
    path = digits_runs["fp32"].trace.write(tmp_path / "run")
    (path / "meta.json").write_text("[]")
    with pytest.raises(TraceError, match="expected a JSON object"):
        read(path)


@pytest.mark.parametrize("file", ["/etc/passwd", "../outside.parquet", "sub/gemms.parquet", "..", 7])
def test_a_table_file_outside_the_run_directory_is_refused(tmp_path, digits_runs, file):
    """meta.json names each table's file: only a file name inside the run directory is read."""
    import json

    path = digits_runs["fp32"].trace.write(tmp_path / "run")
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


def test_a_missing_value_in_a_required_integer_column_is_named(tmp_path, digits_runs):
    import pyarrow as pa

    path = digits_runs["fp32"].trace.write(tmp_path / "run")

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
])
def test_meta_fields_of_the_wrong_type_are_named(tmp_path, digits_runs, field, value, message):
    import json

    path = digits_runs["fp32"].trace.write(tmp_path / "run")
    meta = json.loads((path / "meta.json").read_text())
    if field.startswith("tables."):
        meta["tables"][field.split(".")[1]] = value
    else:
        meta[field] = value
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(TraceError, match=message):
        read(path)

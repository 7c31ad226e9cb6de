"""Every way a trace can be malformed is a TraceError naming the table, the column and the row."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fourbit.traces import io, schema
from fourbit.traces.errors import ConfigError, TraceError
from fourbit.traces.io import Trace, read


@pytest.fixture()
def run_dir(tmp_path, digits_traces):
    return digits_traces["int4"].write(tmp_path / "run")


def _rewrite(path, table: str, df: pd.DataFrame | pa.Table) -> None:
    """Replace a table behind the trace's back and fix the checksum (a well-formed file with bad
    content, as another tool might write)."""
    f = path / f"{table}.parquet"
    if isinstance(df, pa.Table):
        pq.write_table(df, f)
    else:
        df.to_parquet(f, index=False)
    meta = json.loads((path / "meta.json").read_text())
    meta["tables"][table]["sha256"] = io._sha256(f)
    meta["tables"][table]["rows"] = len(df) if not isinstance(df, pa.Table) else df.num_rows
    (path / "meta.json").write_text(json.dumps(meta))


def gemms(path) -> pd.DataFrame:
    return pd.read_parquet(path / "gemms.parquet")


@pytest.mark.parametrize("change, message", [
    (lambda g: g.drop(columns=["K"]), r"table gemms: missing column 'K'"),
    (lambda g: g.assign(extra=1), r"table gemms: unexpected column 'extra'"),
    (lambda g: g.assign(M=g.M.astype("float64")), r"table gemms, column 'M': dtype double, expected int64"),
    (lambda g: g.assign(N=np.where(g.index == 3, 0, g.N)), r"table gemms, column 'N', row 3: must be > 0"),
    (lambda g: g.assign(M=np.where(g.index == 2, -4, g.M)), r"table gemms, column 'M', row 2: must be > 0"),
    (lambda g: g.assign(K=np.where(g.index == 7, 0, g.K)), r"table gemms, column 'K', row 7: must be > 0"),
    (lambda g: g.assign(layer_type=np.where(g.index == 1, "rnn", g.layer_type)),
     r"table gemms, column 'layer_type', row 1: unknown value"),
    (lambda g: g.assign(b_flush_frac=np.where(g.index == 6, -0.25, g.b_flush_frac)),
     r"table gemms, column 'b_flush_frac', row 6: must be in \[0, 1\]"),
    (lambda g: g.assign(phase=np.where(g.index == 2, "bwd", g.phase)), r"table gemms, column 'phase', row 2: unknown value"),
    (lambda g: g.assign(a_format=np.where(g.index == 5, "fp5", g.a_format)), r"table gemms, column 'a_format', row 5: unknown format"),
    (lambda g: g.assign(acc_format=np.where(g.index == 1, "fp16/g4/c6", g.acc_format)), r"table gemms, column 'acc_format', row 1: unknown accumulator"),
    (lambda g: g.assign(a_zero_frac=np.where(g.index == 4, 1.5, g.a_zero_frac)), r"table gemms, column 'a_zero_frac', row 4: must be in \[0, 1\]"),
    (lambda g: g.assign(layer=np.where(g.index == 0, None, g.layer)), r"table gemms, column 'layer', row 0: missing value in a required column"),
    (lambda g: g.assign(b_role=np.where(g.index == 2, "bias", g.b_role)), r"table gemms, column 'b_role', row 2: unknown value"),
    (lambda g: g.assign(a_scale_kind=np.where(g.index == 1, "row", g.a_scale_kind)),
     r"table gemms, column 'a_scale_kind', row 1: unknown value"),
    (lambda g: g.assign(b_block_axis=np.where(g.index == 0, "M", None)), r"table gemms, column 'b_block_axis', row 0: unknown value"),
    (lambda g: g.assign(a_bits=np.where(g.index == 3, 0.0, g.a_bits)), r"table gemms, column 'a_bits', row 3: must be > 0"),
])
def test_gemms_failures(run_dir, change, message):
    _rewrite(run_dir, "gemms", change(gemms(run_dir)))
    with pytest.raises(TraceError, match=message):
        read(run_dir)


def test_nan_statistic_is_an_error_but_na_is_not(run_dir):
    g = gemms(run_dir)
    table = pa.Table.from_pandas(g, preserve_index=False)
    col = table.column("b_zero_frac").to_pylist()
    col[6] = None  # not recorded: fine
    table = table.set_column(table.column_names.index("b_zero_frac"), "b_zero_frac", pa.array(col, pa.float64()))
    _rewrite(run_dir, "gemms", table)
    assert read(run_dir).gemms.b_zero_frac.isna().iloc[6]
    col[7] = float("nan")  # NaN: an error
    table = table.set_column(table.column_names.index("b_zero_frac"), "b_zero_frac", pa.array(col, pa.float64()))
    _rewrite(run_dir, "gemms", table)
    with pytest.raises(TraceError, match=r"table gemms, column 'b_zero_frac', row 7: NaN"):
        read(run_dir)


def test_ops_and_metrics_failures(run_dir):
    ops = pd.read_parquet(run_dir / "ops.parquet")
    _rewrite(run_dir, "ops", ops.assign(op=np.where(ops.index == 2, "fft", ops.op)))
    with pytest.raises(TraceError, match=r"table ops, column 'op', row 2: unknown value"):
        read(run_dir)
    _rewrite(run_dir, "ops", ops.assign(elements=np.where(ops.index == 1, -1, ops.elements)))
    with pytest.raises(TraceError, match=r"table ops, column 'elements', row 1: must be >= 0"):
        read(run_dir)
    _rewrite(run_dir, "ops", ops)
    m = pd.read_parquet(run_dir / "metrics.parquet")
    _rewrite(run_dir, "metrics", m.assign(value=np.where(m.index == 0, np.inf, m.value)))
    with pytest.raises(TraceError, match=r"table metrics, column 'value', row 0: must be finite"):
        read(run_dir)


def test_versions(run_dir):
    meta = json.loads((run_dir / "meta.json").read_text())
    meta["schema_version"] = "2.7"  # a newer minor version is read
    (run_dir / "meta.json").write_text(json.dumps(meta))
    assert read(run_dir).meta["schema_version"] == "2.7"
    _rewrite(run_dir, "gemms", gemms(run_dir).assign(a_new_statistic=0.5))  # what 2.7 may add
    assert "a_new_statistic" not in read(run_dir).gemms.columns
    meta = json.loads((run_dir / "meta.json").read_text())
    meta["schema_version"] = "2.0"  # at this reader's own version an unknown column is an error
    (run_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(TraceError, match=r"table gemms: unexpected column 'a_new_statistic'"):
        read(run_dir)
    meta["schema_version"] = "3.0"
    (run_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(TraceError, match=r"schema_version '3.0' has an unknown major version; this fourbit reads 2.x"):
        read(run_dir)


def test_a_version_1_trace_is_read_through_the_one_conversion(run_dir):
    """Version 1 had no operand descriptions: reading fills them with what version 1 meant (a
    weight layer's roles by phase, per-tensor FP32 scales, bits from the formats), says so in the
    metadata, and gives the same table as the version 2 trace apart from the columns version 1
    could not know (which tensor copy)."""
    new = read(run_dir)
    v2_only = [c for c in new.gemms.columns if c.endswith(("_role", "_scale_kind", "_scale_format", "_bits",
                                                             "_block", "_block_axis", "_tensor", "_copy"))]
    _rewrite(run_dir, "gemms", gemms(run_dir).drop(columns=v2_only))
    meta = json.loads((run_dir / "meta.json").read_text())
    meta["schema_version"] = "1.0"
    del meta["formats"]
    (run_dir / "meta.json").write_text(json.dumps(meta))
    old = read(run_dir)
    assert old.meta["upgraded_from"] == "1.0" and old.meta["schema_version"] == schema.SCHEMA_VERSION
    copies = [c for c in v2_only if c.endswith(("_tensor", "_copy"))]
    assert old.gemms[copies].isna().all().all()
    pd.testing.assert_frame_equal(old.gemms.drop(columns=copies), new.gemms.drop(columns=copies))


def test_weight_update_ops_only_on_weight_gradients(run_dir):
    g = gemms(run_dir)
    last = g.index[(g.phase == "bwd_weight")][0]
    _rewrite(run_dir, "gemms", g.assign(out_role=np.where(g.index == last, "gradient", g.out_role)))
    with pytest.raises(TraceError, match=r"sgd_momentum on .* bwd_weight, which is not the bwd_weight of a GEMM "
                                         r"whose second operand is a weight"):
        read(run_dir)


def test_checksum_and_missing_files(run_dir):
    (run_dir / "ops.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(TraceError, match=r"table ops: checksum mismatch"):
        read(run_dir)
    (run_dir / "ops.parquet").unlink()
    with pytest.raises(TraceError, match=r"table ops: file .* is missing"):
        read(run_dir)
    (run_dir / "meta.json").unlink()
    with pytest.raises(TraceError, match=r"no meta.json; not a run directory"):
        read(run_dir)


def test_atomic_write_never_leaves_a_valid_half_trace(tmp_path, digits_traces, monkeypatch):
    trace = digits_traces["fp32"]
    good = trace.write(tmp_path / "run")
    before = read(good).gemms
    calls = {"n": 0}
    real = pd.DataFrame.to_parquet

    def crash_on_second_table(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real(self, *a, **k)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", crash_on_second_table)
    with pytest.raises(ConfigError, match="already holds a run directory; pass --overwrite"):
        trace.write(tmp_path / "run")
    with pytest.raises(OSError, match="disk full"):
        trace.write(tmp_path / "run", overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        calls["n"] = 0
        trace.write(tmp_path / "fresh")
    monkeypatch.undo()
    pd.testing.assert_frame_equal(read(good).gemms, before)  # the old trace is intact
    assert not (tmp_path / "fresh").exists()  # nothing half-written under the target name
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temporary directories left


def test_a_crash_between_the_two_renames_points_at_the_old_trace(tmp_path, digits_traces, monkeypatch):
    from fourbit.traces import files

    trace = digits_traces["fp32"]
    trace.write(tmp_path / "run")
    real = files.os.replace

    def crash_on_second_rename(src, dst):
        if str(dst) == str(tmp_path / "run"):
            raise OSError("power cut")
        return real(src, dst)

    monkeypatch.setattr(files.os, "replace", crash_on_second_rename)
    with pytest.raises(OSError, match="power cut"):
        trace.write(tmp_path / "run", overwrite=True)
    monkeypatch.undo()
    with pytest.raises(TraceError, match=r"interrupted between its two renames: the previous run directory is at "
                                         r".*\.run\.old-.*/previous"):
        read(tmp_path / "run")
    old = next(tmp_path.glob(".run.old-*/previous"))
    pd.testing.assert_frame_equal(read(old).gemms, trace.gemms)  # nothing lost


def test_writer_refuses_nan_and_unknown_columns():
    with pytest.raises(TraceError, match=r"column 'a_zero_frac', row 0: NaN"):
        schema.from_records("gemms", [{"a_zero_frac": float("nan")}])
    with pytest.raises(TraceError, match=r"unknown column 'wat'"):
        schema.from_records("ops", [{"wat": 1}])
    # an integer beyond int64 (was an OverflowError from pandas; found by tests/test_fuzz_readers.py)
    with pytest.raises(TraceError, match=r"^table metrics, column 'step': cannot be int64: Python int too large"):
        schema.from_records("metrics", [{"step": 2**63, "epoch": 1, "split": "train", "metric": "loss", "value": 1.0}])


def test_trace_every_records_statistics_at_every_recorded_step():
    from fourbit.models.trainer import train

    run = train("mlp", "digits", "int4", epochs=1, trace_every=7, progress=False)
    steps = run.trace.steps
    assert steps == [0, 7, 14, 21] and run.trace.meta["steps"] == 22  # 1437 // 64 = 22 steps: 0..21
    g = run.trace.gemms
    assert (g.groupby("step").size() == 12).all()
    hidden = g[(g.layer == "fc2") & (g.phase == "bwd_data")]
    assert hidden.grad_code_03.notna().all() and hidden.grad_scale_log2.notna().all()
    codes = hidden[[f"grad_code_{i:02d}" for i in range(16)]].sum(axis=1)
    assert (codes == 64 * 256).all()  # every gradient element has a code
    skipped = (g.layer == "fc1") & (g.phase == "bwd_data")  # the input layer's data gradient:
    assert g[skipped].acc_overflows.isna().all()  # recorded for the chip, never computed
    assert g[~skipped].acc_overflows.notna().all() and (g.a_zero_frac.between(0, 1)).all()
    assert isinstance(run.trace.step(7), Trace) and len(run.trace.step(7).gemms) == 12


def test_format_definitions_in_meta_are_checked_and_a_refused_trace_registers_nothing(run_dir):
    from fourbit.traces.formats import format_names

    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["formats"]["fp4_r4_e3"]["radix"] == 4  # every format the tables name is defined
    bad = json.loads(json.dumps(meta))
    bad["formats"]["fp16"]["saturates"] = True  # a consistent definition, but not this fourbit's fp16
    (run_dir / "meta.json").write_text(json.dumps(bad))
    with pytest.raises(TraceError, match="format 'fp16': this fourbit's 'fp16' is a different format"):
        read(run_dir)
    bad["formats"]["fp16"]["mantissa_bits"] = 9  # one that contradicts itself
    (run_dir / "meta.json").write_text(json.dumps(bad))
    with pytest.raises(TraceError, match="format 'fp16': .*bits 16 is not 1 \\+ exponent_bits \\+ mantissa_bits"):
        read(run_dir)
    bad = json.loads(json.dumps(meta))
    bad["formats"]["fp16"]["bits"] = "16"
    (run_dir / "meta.json").write_text(json.dumps(bad))
    with pytest.raises(TraceError, match="format 'fp16': .*bits = '16' is not int"):
        read(run_dir)
    # a new format defined by a trace whose table is broken: refused, and not left registered
    new = json.loads(json.dumps(meta))
    new["formats"]["mine_e2m3"] = {**meta["formats"]["fp16"], "name": "mine_e2m3", "bits": 6, "exponent_bits": 2,
                                   "mantissa_bits": 3, "bias": 1, "max_value": 7.5, "min_normal": 1.0,
                                   "numpy_type": "float6_e2m3fn", "has_inf": False, "has_nan": False}
    (run_dir / "meta.json").write_text(json.dumps(new))
    _rewrite(run_dir, "gemms", gemms(run_dir).assign(M=np.where(gemms(run_dir).index == 0, 0, gemms(run_dir).M)))
    with pytest.raises(TraceError, match="column 'M', row 0: must be > 0"):
        read(run_dir)
    assert "mine_e2m3" not in format_names()

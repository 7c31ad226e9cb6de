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

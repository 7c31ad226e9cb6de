"""Workloads: one cache of trained runs for every job, checked when reused, run in parallel."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from fourbit.analysis.ablation import ablation
from fourbit.analysis.executor import Executor
from fourbit.analysis.workloads import Source, materialize, run_all, trained
from fourbit.models.trainer import TrainConfig
from fourbit.traces.errors import ConfigError

ONE = TrainConfig(epochs=1)


def test_a_training_is_cached_once_and_read_back(tmp_path):
    w = trained("mlp", "digits", "int4", ONE, tmp_path)
    assert w.kind == "train" and w.path.startswith(str(tmp_path / "runs" / "int4-s0-"))
    assert not w.done
    seconds = materialize(w)
    assert seconds is not None and seconds > 0 and w.done
    assert materialize(w) is None  # finished: read back, not trained again
    # another seed, another recipe: other entries
    assert trained("mlp", "digits", "int4", ONE.replace(seed=1), tmp_path).path != w.path
    assert trained("mlp", "digits", "fp32", ONE, tmp_path).path != w.path


def test_a_cache_entry_of_another_run_is_refused(tmp_path):
    w = trained("mlp", "digits", "int4", ONE, tmp_path)
    materialize(w)
    meta = json.loads((tmp_path / w.path / "meta.json").read_text())
    assert meta["train_config"] == ONE.model_dump()
    imposter = trained("mlp", "digits", "int4", ONE.replace(lr=0.05), tmp_path)
    (tmp_path / "runs").joinpath(imposter.path.rsplit("/", 1)[1]).symlink_to(w.path)
    with pytest.raises(ConfigError, match=r"holds a run with train_config = .* not .*; use another --out"):
        materialize(imposter)
    with pytest.raises(ConfigError, match="holds a run with train_config"):
        run_all([imposter], Executor(1), progress=False)


def test_job_models_take_lists_and_refuse_repeats(tmp_path):
    from fourbit.analysis.ablation import Ablation
    from fourbit.analysis.compare import Comparison

    src = Source(model="mlp", dataset="digits")
    assert Comparison(source=src, chips=["fourbit", "fp16"]).chips == ("fourbit", "fp16")
    assert Ablation(seeds=[0, 2], variants=[["int4", "int4"]]).variants == (("int4", "int4"),)
    with pytest.raises(ConfigError, match=r"^seeds = \(\) is out of range: allowed a non-empty list of integers$"):
        Ablation(seeds=[])
    with pytest.raises(ConfigError, match=r"^variants: 'int4' is given twice$"):
        Ablation(variants=[("a", "int4"), ("b", "int4")])
    with pytest.raises(ConfigError, match=r"compare: chip 'tpu' has no recipe"):
        Comparison(source=src, chips=["tpu", "fp16"])


def test_a_source_is_a_trace_or_a_training_not_both():
    with pytest.raises(ConfigError, match=r"^source: one source is needed: a trace directory \(--trace\) or a model \(--model\), "
                                          r"not both$"):
        Source(trace="runs/x", model="mlp", dataset="digits")
    with pytest.raises(ConfigError, match=r"^source: one source is needed: a trace directory \(--trace\), or a "
                                          r"model and a data set \(--model with --dataset\)$"):
        Source(model="mlp")
    with pytest.raises(ConfigError, match=r"^source: train applies to a model source \(--model\); the recipes of a "
                                          r"trace directory \(--trace\) are retrained with the trace's own"):
        Source(trace="runs/x", train=ONE)
    assert Source(model="mlp", dataset="digits").train.epochs == 1  # a job's source trains 1 epoch by default


def test_ablation_in_parallel_gives_the_same_tables(tmp_path):
    kw = dict(model="mlp", dataset="digits", variants=(("int4", "int4"), ("fp32", "fp32")), seeds=(0, 1),
              train=ONE, progress=False)
    serial = ablation(out=str(tmp_path / "one"), **kw)
    parallel = ablation(out=str(tmp_path / "two"), workers=2, **kw)
    pd.testing.assert_frame_equal(serial, parallel)
    runs = pd.read_csv(tmp_path / "two" / "ablation_runs.csv")
    assert len(runs) == 4 and runs.train_seconds.notna().all()
    assert len(list((tmp_path / "two" / "runs").iterdir())) == 4


def test_simulate_takes_a_run_directory_and_a_preset_or_toml(tmp_path, digits_traces):
    import fourbit

    path = digits_traces["int4"].write(tmp_path / "run")
    chip = fourbit.load_chip("fourbit")
    (tmp_path / "chip.toml").write_text(chip.to_toml())
    want = fourbit.simulate(digits_traces["int4"], chip).totals()
    for trace, c in ((path, "fourbit"), (str(path), str(tmp_path / "chip.toml")), (path, chip)):
        pd.testing.assert_series_equal(fourbit.simulate(trace, c).totals(), want)


def test_a_trace_whose_source_is_null_is_retrained_as_its_meta_says(tmp_path, digits_traces):
    """``source: null`` in meta.json (a trace that was not imported) was an AttributeError when
    another recipe's workload was asked for (found by tests/test_fuzz_readers.py)."""
    path = digits_traces["int4"].write(tmp_path / "run")
    meta = json.loads((path / "meta.json").read_text())
    meta["source"] = None
    (path / "meta.json").write_text(json.dumps(meta))
    jobs = Source(trace=str(path)).workloads(["int4", "fp32"], tmp_path / "out")
    assert (jobs["int4"].kind, jobs["fp32"].kind) == ("given", "train")
    assert jobs["fp32"].args["model"] == "mlp" and jobs["fp32"].args["config"]["epochs"] == 2

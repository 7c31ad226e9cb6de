"""Sweeps: grid expansion, linked log base, resume after a kill, failures, Dask, bad specs, CLI."""

from __future__ import annotations

import importlib

import pandas as pd
import pytest

from fourbit.analysis.sweep import Axis, SweepSpec, load_spec, parse_grid, sweep
from fourbit.analysis.workloads import Source
from fourbit.models.trainer import TrainConfig
from fourbit.traces.errors import ConfigError
from tests.analysis import import_topology_traces

sweep_mod = importlib.import_module("fourbit.analysis.sweep")

TOPOLOGY = """Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,
conv1, 18, 18, 3, 3, 3, 16, 1,
conv2, 16, 16, 3, 3, 16, 32, 2,
fc, 1, 1, 1, 1, 1568, 10, 1,
"""


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory):
    """A three-layer SCALE-Sim topology imported at batch 8 with the int4 recipe."""
    return str(import_topology_traces(tmp_path_factory.mktemp("topo"), TOPOLOGY, ("int4",))["int4"])


GRID = ("array.rows,array.cols=8,16", "log_path.radix=2,4", "array.dataflow=ws,os")


def _spec(trace, out, grid=GRID, **kw):
    return SweepSpec(source=Source(trace=trace), grid=parse_grid(list(grid)), out=str(out), **kw)


def test_grid_table_columns_and_linked_log_base(small_trace, tmp_path):
    table = sweep(_spec(small_trace, tmp_path / "s"), progress=False)
    assert len(table) == 8 and (table.status == "ok").all()
    assert list(table.columns[:4]) == ["array.rows", "array.cols", "log_path.radix", "array.dataflow"]
    assert table["array.rows"].tolist() == [8, 8, 8, 8, 16, 16, 16, 16]
    assert (table["array.rows"] == table["array.cols"]).all()
    # radix 2 has no odd phase: the recipe follows the datapath's log base, single phase
    r2 = table[table["log_path.radix"] == 2]
    assert set(r2.recipe_name) == {"int4:radix=2,tpr=off"} and not r2.tpr.any() and (r2.radix == 2).all()
    r4 = table[table["log_path.radix"] == 4]
    assert set(r4.recipe_name) == {"int4:radix=4"} and r4.tpr.all()
    # a bigger array is faster; the log base changes energy, not the array's work (TPR's second
    # gradient quantization adds a little vector work)
    t = table.set_index(["array.rows", "log_path.radix", "array.dataflow"])
    assert t.loc[(16, 4, "ws"), "total_cycles"] < t.loc[(8, 4, "ws"), "total_cycles"]
    assert t.loc[(8, 2, "os"), "compute_cycles"] == t.loc[(8, 4, "os"), "compute_cycles"]
    assert t.loc[(8, 2, "os"), "total_cycles"] < t.loc[(8, 4, "os"), "total_cycles"]
    assert t.loc[(8, 2, "ws"), "energy_pj"] != t.loc[(8, 4, "ws"), "energy_pj"]
    saved = pd.read_parquet(tmp_path / "s" / "results.parquet")
    pd.testing.assert_frame_equal(saved, table)
    assert (tmp_path / "s" / "results.csv").is_file()
    # radix 2 and the baseline's fp16 re-imported; radix 4 is the given trace
    assert sorted(d.name.split("-")[0] for d in (tmp_path / "s" / "traces").iterdir()) == ["fp16", "int4"]


def test_every_point_against_the_baseline_chip(small_trace, tmp_path):
    """The FP16 preset on its own array with its own recipe, simulated once on the same workload:
    each point's speed-up is its step time over the baseline's, exactly; no baseline, no ratios."""
    from fourbit.hwsim.engine import simulate
    from fourbit.traces.io import read

    table = sweep(_spec(small_trace, tmp_path / "b", grid=["array.rows,array.cols=8,64"]), progress=False)
    base = pd.read_csv(tmp_path / "b" / "baseline.csv").iloc[0]
    assert (base.chip_name, base.recipe_name, base.array, base.status) == ("fp16", "fp16", "32x32", "ok")
    fp16_trace = next((tmp_path / "b" / "traces").glob("fp16-*"))
    expected = simulate(str(fp16_trace), "fp16").totals()
    assert base.time_s == float(expected["time_s"]) and base.energy_pj == float(expected["energy_pj"])
    assert table.speedup_vs_fp16.tolist() == (base.time_s / table.time_s).tolist()
    assert table.energy_ratio_vs_fp16.tolist() == (table.energy_pj / base.energy_pj).tolist()
    assert table.speedup_vs_fp16.iloc[1] > table.speedup_vs_fp16.iloc[0]  # 64x64 beats 8x8
    bare = sweep(_spec(small_trace, tmp_path / "n", grid=["array.rows=8"], baseline=None), progress=False)
    assert not any(c.startswith(("speedup_vs", "energy_ratio_vs")) for c in bare.columns)
    assert not (tmp_path / "n" / "baseline.csv").exists()
    # a trace that says neither how it was imported nor trained has no fp16 twin: the baseline says so
    foreign = tmp_path / "foreign"
    trace = read(small_trace)
    trace.meta.pop("source")
    trace.write(foreign)
    with pytest.raises(ConfigError, match=r"the baseline chip fp16 runs its own recipe 'fp16': --trace .*foreign: recipe "
                                          r"'fp16' differs .* \(--baseline none: a sweep without one\)$"):
        sweep(_spec(str(foreign), tmp_path / "f", grid=["array.rows=8"]), progress=False)
    assert len(sweep(_spec(str(foreign), tmp_path / "f", grid=["array.rows=8"], baseline=None), progress=False)) == 1
    with pytest.raises(ConfigError, match=r"baseline = 'tpu': allowed a chip preset with its own recipe "
                                          r"\(fourbit, fp16, int8, hfp8\) or none"):
        _spec(small_trace, tmp_path / "x", baseline="tpu")


def test_killed_sweep_resumes_without_repeating_a_point(small_trace, tmp_path, monkeypatch):
    real = sweep_mod.run_point
    calls = []

    def dies_at_the_fourth(*args):
        calls.append(args[0].index)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(sweep_mod, "run_point", dies_at_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        sweep(_spec(small_trace, tmp_path / "k"), progress=False)
    assert len(list((tmp_path / "k" / "points").glob("*[0-9a-f].parquet"))) == 3
    calls.clear()
    monkeypatch.setattr(sweep_mod, "run_point", lambda *a: (calls.append(a[0].index), real(*a))[1])
    table = sweep(_spec(small_trace, tmp_path / "k"), progress=False)
    assert sorted(calls) == [-1, 3, 4, 5, 6, 7]  # only the missing points ran (the baseline, -1, runs last)
    assert len(table) == 8 and table.point_id.is_unique and (table.status == "ok").all()
    whole = sweep(_spec(small_trace, tmp_path / "w"), progress=False)
    pd.testing.assert_frame_equal(table, whole)


def test_a_failing_point_is_recorded_and_retried(small_trace, tmp_path, monkeypatch):
    real = sweep_mod.run_point

    def breaks_os(point, *args):
        if point.values["array.dataflow"] == "os" and point.values["array.rows"] == 16:
            raise RuntimeError("simulated fault")
        return real(point, *args)

    monkeypatch.setattr(sweep_mod, "run_point", breaks_os)
    table = sweep(_spec(small_trace, tmp_path / "f"), progress=False)
    bad = table[table.status == "error"]
    assert len(bad) == 2 and bad.error.str.contains("RuntimeError: simulated fault").all()
    assert bad.total_cycles.isna().all() and (table.status == "ok").sum() == 6
    monkeypatch.setattr(sweep_mod, "run_point", real)
    again = sweep(_spec(small_trace, tmp_path / "f"), progress=False)
    assert (again.status == "ok").all()


def test_cli_names_failed_points_and_exits_nonzero(small_trace, tmp_path, monkeypatch, capsys):
    from fourbit.analysis.cli import main

    real = sweep_mod.run_point

    def breaks_is(point, *args):
        if point.values["array.dataflow"] == "is":
            raise RuntimeError("simulated fault")
        return real(point, *args)

    monkeypatch.setattr(sweep_mod, "run_point", breaks_is)
    argv = ["sweep", "--trace", small_trace, "--grid", "array.dataflow=ws,is", "--out", str(tmp_path / "c"), "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "failed: RuntimeError: simulated fault" in err and "run the same command again" in err
    monkeypatch.setattr(sweep_mod, "run_point", real)
    assert main(argv) == 0


def test_radix_without_odd_phase_runs_single_phase(small_trace, tmp_path):
    table = sweep(_spec(small_trace, tmp_path / "r", grid=["recipe.radix=4,8", "recipe.tpr=on"]), progress=False)
    assert (table.status == "ok").all()
    assert table.set_index("recipe.radix").tpr.to_dict() == {4: True, 8: False}


def test_dask_cluster_gives_the_same_table(small_trace, tmp_path):
    from dask.distributed import LocalCluster

    local = sweep(_spec(small_trace, tmp_path / "local"), progress=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        remote = sweep(_spec(small_trace, tmp_path / "dask", scheduler=cluster.scheduler_address), progress=False)
    pd.testing.assert_frame_equal(local, remote)


@pytest.mark.parametrize("grid, message", [
    (["array.depth=4,8"], r"unknown field array.depth; fields of \[array\]: rows, cols"),
    (["array.rows=0,8"], r"grid point 0 \(array.rows=0\): overrides: array.rows = 0 is out of range: allowed an "
                         r"integer >= 1 and <= 65536$"),
    (["array.dataflow=ws,rs"], "array.dataflow = 'rs' is out of range"),
    (["recipe.radix=3"], r"recipe.radix = 3 is out of range: allowed one of 2, 4, 8, 16"),
    (["recipe.colour=1"], "unknown grid field 'recipe.colour'; recipe parameters: attention_bits, bf16_last, block, bwd_acc, exponent_bits"),
    (["array.rows=8", "array.rows=16"], "grid field 'array.rows' appears on two axes"),
    (["log_path.radix=2", "recipe.radix=16"], "log_path.radix = 2 and recipe.radix = 16 differ"),
    ([], "the grid is empty"),
])
def test_bad_specs_are_rejected_before_any_work(small_trace, tmp_path, grid, message):
    with pytest.raises(ConfigError, match=message):
        sweep(_spec(small_trace, tmp_path / "bad", grid=grid), progress=False)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("text, message", [
    ('[[grid]]\nfields = "array.rows"\nvalues = ["8"]\n',
     r"grid point 0 \(array.rows=8\): overrides: array.rows = '8' has the wrong type: allowed an integer >= 1 and <= 65536$"),
    ('[[grid]]\nfields = "log_path.radix"\nvalues = [4.0]\n',
     r"grid point 0 \(log_path.radix=4.0\): overrides: log_path.radix = 4.0 has the wrong type: allowed one of 2, 4, 8, "
     r"16$"),
    ('[[grid]]\nfields = ["recipe.radix", "recipe.tpr"]\nvalues = [2]\n',
     r"recipe 'int4': recipe.tpr = 2 has the wrong type: allowed true or false$"),
    ('[[grid]]\nfields = "recipe.tpr"\nvalues = ["on"]\n',
     r"recipe 'int4': recipe.tpr = 'on' has the wrong type: allowed true or false"),
    ('workers = "2"\n[[grid]]\nfields = "array.rows"\nvalues = [8]\n',
     r"spec.toml: workers = '2' has the wrong type: allowed an integer >= 1$"),
    ('colour = 1\n[[grid]]\nfields = "array.rows"\nvalues = [8]\n',
     r"spec.toml: unknown field colour; fields of \[the top level\]: source, grid, out, chip"),
    ('[[grid]]\nfields = "array.rows"\nvalues = [8]\nsteps = 3\n',
     r"spec.toml: unknown field grid.0.steps; fields of \[grid.0\]: fields, values$"),
    ('workers = 0\n[[grid]]\nfields = "array.rows"\nvalues = [8]\n',
     r"spec.toml: workers = 0 is out of range: allowed an integer >= 1$"),
    ('[source.train]\nepochs = 1.0\n[[grid]]\nfields = "array.rows"\nvalues = [8]\n',
     r"spec.toml: source.train.epochs = 1.0 has the wrong type: allowed an integer >= 1$"),
    ('[[grid]]\nfields = ["array.macs_per_pe", "units.int4.macs_per_pe", "units.fp4xint4.macs_per_pe"]\n'
     'values = [[8, 4, 4]]\n', r"array.macs_per_pe = 8 has no effect: every unit of this chip sets its own"),
])
def test_a_bad_toml_spec_is_one_line_naming_the_field(small_trace, tmp_path, text, message):
    spec = tmp_path / "spec.toml"
    source = f'[source]\ntrace = "{small_trace}"\n'
    top, _, tables = text.partition("[")  # top-level keys first, then the tables
    spec.write_text(top + source + ("[" + tables if tables else "").replace(source, ""))
    with pytest.raises(ConfigError, match=message) as info:
        sweep(load_spec(spec), progress=False)
    assert "\n" not in str(info.value)


def test_paths_in_a_spec_are_relative_to_the_spec_file(small_trace, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(small_trace, tmp_path / "specs" / "trace")
    spec = tmp_path / "specs" / "s.toml"
    spec.write_text('out = "out"\n[source]\ntrace = "trace"\n[[grid]]\nfields = "array.rows"\nvalues = [8]\n')
    monkeypatch.chdir(tmp_path)  # elsewhere than the spec
    table = sweep(load_spec("specs/s.toml"), progress=False)
    assert (table.status == "ok").all() and (tmp_path / "specs" / "out" / "results.csv").is_file()


def test_overwriting_another_kind_of_job_clears_its_results_and_keeps_caches(small_trace, tmp_path):
    from fourbit.analysis.compare import compare

    out = tmp_path / "s"
    sweep(_spec(small_trace, out, grid=["array.rows=8"]), progress=False)
    with pytest.raises(ConfigError, match=r"holds the results of a job of kind 'sweep', not 'compare'; pass --overwrite"):
        compare(Source(trace=small_trace), out=out, chips=("fourbit", "fp16"), progress=False)
    compare(Source(trace=small_trace), out=out, chips=("fourbit", "fp16"), progress=False, overwrite=True)
    assert not (out / "results.csv").exists() and (out / "compare.csv").is_file()
    assert (out / "points").is_dir()


def test_the_same_sweep_continues_another_is_refused_unless_overwrite(small_trace, tmp_path):
    out = tmp_path / "s"
    first = sweep(_spec(small_trace, out, grid=["array.rows=8,16"]), progress=False)
    pd.testing.assert_frame_equal(sweep(_spec(small_trace, out, grid=["array.rows=8,16"]), progress=False), first)
    with pytest.raises(ConfigError, match=r"holds the results of another sweep \(grid.0.values is \[8, 16\] there, "
                                          r"\[8, 16, 32\] here\); pass --overwrite \(overwrite=True\)"):
        sweep(_spec(small_trace, out, grid=["array.rows=8,16,32"]), progress=False)
    wider = sweep(_spec(small_trace, out, grid=["array.rows=8,16,32"]), progress=False, overwrite=True)
    assert len(wider) == 3 and (wider.status == "ok").all()
    assert len(list((out / "points").glob("*[0-9a-f].parquet"))) == 4  # 8 and 16 (and the baseline) reused
    # the same trace spelled another way is the same sweep; sweep(spec, **fields) takes the fields
    import os

    rel = os.path.relpath(small_trace)
    again = sweep(_spec(rel, tmp_path / "elsewhere"), progress=False, out=str(out), overwrite=False,
                  grid=parse_grid(["array.rows=8,16,32"]))
    pd.testing.assert_frame_equal(again, wider)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_text("x")
    with pytest.raises(ConfigError, match="is not empty and holds no fourbit job"):
        sweep(_spec(small_trace, foreign, grid=["array.rows=8"]), progress=False)


def test_bad_grid_syntax_and_sources(small_trace, tmp_path):
    with pytest.raises(ConfigError, match="expected FIELD"):
        parse_grid(["array.rows"])
    with pytest.raises(ConfigError, match="has no values"):
        parse_grid(["array.rows="])
    with pytest.raises(ConfigError, match="one source is needed"):
        Source()
    with pytest.raises(ConfigError, match="unknown model 'vgg'"):
        sweep(SweepSpec(source=Source(model="vgg", dataset="digits"), grid=(Axis(fields=("array.rows",), values=(8,)),),
                        out=str(tmp_path / "x")), progress=False)
    assert not (tmp_path / "x").exists()


def test_training_sweep_trains_once_per_recipe(tmp_path):
    spec = SweepSpec(source=Source(model="mlp", dataset="digits", train=TrainConfig(epochs=1)),
                     grid=parse_grid(["recipe.radix=2,4", "array.rows,array.cols=8,16"]), out=str(tmp_path / "t"))
    table = sweep(spec, progress=False)
    assert len(table) == 4 and (table.status == "ok").all()
    runs = sorted(d.name.split("-")[0] for d in (tmp_path / "t" / "runs").iterdir())
    assert runs == ["fp16", "int4", "int4"]  # the baseline chip's recipe is trained once too
    assert table.speedup_vs_fp16.notna().all()
    assert table.test_accuracy_pct.between(50, 100).all()
    acc = table.groupby("recipe.radix").test_accuracy_pct.nunique()
    assert (acc == 1).all()  # one training per recipe, shared by its chips
    assert (table[table["recipe.radix"] == 2].tpr == False).all()  # noqa: E712
    # a recipe without FP4 gradients (fp32: no radix) among them: the accuracy figure keeps the radixes
    from fourbit.analysis.plots import sweep_figures

    fp32 = table.iloc[[0]].assign(radix=float("nan"), tpr=None, recipe_name="fp32", point_id="fp32point")
    names = [p.name for p in sweep_figures(pd.concat([table, fp32], ignore_index=True), tmp_path / "f")]
    assert "accuracy_vs_radix.png" in names


def test_toml_spec_and_cli_with_report(small_trace, tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(f'chip = "fourbit"\n[source]\ntrace = "{small_trace}"\n'
                    '[[grid]]\nfields = ["array.rows", "array.cols"]\nvalues = [8, 16]\n'
                    '[[grid]]\nfields = "array.dataflow"\nvalues = ["ws", "is"]\n')
    from tests.analysis.test_cli import fourbit

    out = tmp_path / "cli"
    res = fourbit("sweep", "--spec", str(spec), "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 4 and table["array.dataflow"].tolist() == ["ws", "is", "ws", "is"]
    for fig in ("speedup_energy_vs_array", "energy_breakdown", "utilization_per_layer"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 5000
        assert (out / "figures" / f"{fig}.svg").is_file()
    res = fourbit("report", str(out))
    assert res.returncode == 0, res.stderr
    page = (out / "report.html").read_text()
    assert "Sweep results" in page and "figures/speedup_energy_vs_array.png" in page
    res = fourbit("sweep", "--spec", str(spec), "--grid", "array.dataflow=os", "--out", str(tmp_path / "g"), "--quiet")
    assert res.returncode == 0, res.stderr  # the given axis replaces the spec's array.dataflow axis
    assert pd.read_csv(tmp_path / "g" / "results.csv")["array.dataflow"].tolist() == ["os", "os"]
    res = fourbit("sweep", "--spec", str(spec), "--trace", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "missing" in res.stderr  # a flag given overrides the spec's source
    (tmp_path / "bad.csv").write_bytes(b"\xff\xfe\x00broken")
    (tmp_path / "bad.csv").rename(tmp_path / "results.csv")
    res = fourbit("report", str(tmp_path))
    assert res.returncode == 2 and "not a readable CSV table" in res.stderr
    res = fourbit("sweep", "--trace", small_trace, "--grid", "sram.ifmap_bytes=-1", "--out", str(tmp_path / "b"))
    assert res.returncode == 2 and "sram.ifmap_bytes" in res.stderr and "Traceback" not in res.stderr


def test_compare_iso_array_and_iso_area(small_trace, tmp_path):
    from fourbit.analysis.compare import compare
    from fourbit.hwsim.config import iso_area, load_chip

    table = compare(Source(trace=small_trace), out=tmp_path / "c", iso_area="square", iso_area_shape="int8=20x40",
                    progress=False)
    assert len(table) == 8 and (table.status == "ok").all()
    assert table[(table["mode"] == "iso-area") & (table.chip == "int8")].array.tolist() == ["20x40"]  # as given
    assert table["mode"].tolist() == ["iso-array"] * 4 + ["iso-area"] * 4
    base = table[table.chip == "fp16"]
    assert (base.speedup_vs_fp16 == 1).all() and (base.energy_ratio_vs_fp16 == 1).all()
    four = table[table.chip == "fourbit"].set_index("mode")
    assert four.loc["iso-array", "array"] == "32x32" and four.loc["iso-array", "shapes_tried"] == 1
    # the most square array within the FP16 array's area: 29x30 (PE areas from parts)
    square = iso_area(load_chip("fourbit"), load_chip("fp16")).array
    assert four.loc["iso-area", "array"] == f"{square.rows}x{square.cols}" == "29x30"
    assert four.loc["iso-area", "pe_array_mm2"] <= table[table.chip == "fp16"].pe_array_mm2.iloc[0]
    assert (four.speedup_vs_fp16 > 1).all() and (four.energy_ratio_vs_fp16 < 1).all()
    assert (tmp_path / "c" / "compare.csv").is_file()
    assert (tmp_path / "c" / "figures" / "compare.png").stat().st_size > 10_000  # speed-up and energy per chip
    with pytest.raises(ConfigError, match="name a chip twice"):
        compare(Source(trace=small_trace), chips=("fourbit", "fourbit", "fp16"), out=tmp_path / "d", progress=False)
    with pytest.raises(ConfigError, match=r"iso-area: 30x30 PEs of 'fourbit' exceed the PE-array area of 'fp16' \(881 PEs\)"):
        compare(Source(trace=small_trace), iso_area_shape="fourbit=30x30", out=tmp_path / "e", progress=False)
    with pytest.raises(ConfigError, match=r"iso_area_shape item 'fourbit=29by30' is not CHIP=ROWSxCOLS"):
        compare(Source(trace=small_trace), iso_area_shape="fourbit=29by30", out=tmp_path / "e", progress=False)
    with pytest.raises(ConfigError, match=r"iso_area_shape names 'rapid', which is not among the chips"):
        compare(Source(trace=small_trace), iso_area_shape="rapid=8x8", out=tmp_path / "e", progress=False)
    assert not (tmp_path / "e").exists()


def test_compare_searches_the_iso_area_shapes_of_every_chip(small_trace, tmp_path):
    # every shape within the FP16 array's area (aspect <= 4) runs, for the baseline too; the
    # table keeps each chip's fastest
    from fourbit.analysis.compare import compare
    from fourbit.hwsim.config import iso_area_shapes, load_chip

    table = compare(Source(trace=small_trace), chips=("fourbit", "fp16"), out=tmp_path / "c", progress=False)
    iso = table[table["mode"] == "iso-area"].set_index("chip")
    tried = pd.read_csv(tmp_path / "c" / "results_iso-area.csv")
    for chip in ("fourbit", "fp16"):
        shapes = iso_area_shapes(load_chip(chip), load_chip("fp16"))
        assert iso.loc[chip, "shapes_tried"] == len(shapes) > 1
        ran = tried[tried.chip == chip]
        assert sorted(zip(ran["array.rows"], ran["array.cols"], strict=True)) == sorted(shapes)
        assert iso.loc[chip, "time_per_step_us"] == pytest.approx(ran.time_s.min() * 1e6)
        assert iso.loc[chip, "pe_array_mm2"] <= table[table.chip == "fp16"].pe_array_mm2.iloc[0] * (1 + 1e-12)

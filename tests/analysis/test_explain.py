"""`fourbit explain`: the speed-up and energy waterfalls multiply to the measured ratios, and each
term switches off only its own effect."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from fourbit.analysis.cli import main
from fourbit.analysis.explain import SPEED_TERMS, _without_ops, explain
from fourbit.hwsim.config import load_chip
from fourbit.hwsim.engine import mapped_jobs, simulate
from fourbit.traces.errors import ConfigError
from fourbit.traces.io import read
from tests.analysis import import_topology_traces

TOPOLOGY = """Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,
conv1, 18, 18, 3, 3, 3, 16, 1,
conv2, 16, 16, 3, 3, 16, 32, 2,
conv3, 7, 7, 3, 3, 32, 48, 1,
fc, 1, 1, 1, 1, 1200, 10, 1,
"""


@pytest.fixture(scope="module")
def conv_traces(tmp_path_factory):
    """A four-layer SCALE-Sim topology at batch 8, imported with the int4 and the fp16 recipes."""
    return import_topology_traces(tmp_path_factory.mktemp("topo"), TOPOLOGY, ("int4", "fp16"))


def _workloads(conv_traces, digits_traces):
    return {"conv": (read(conv_traces["int4"]), read(conv_traces["fp16"])),
            "mlp": (digits_traces["int4"], digits_traces["fp32"])}


@pytest.mark.parametrize("workload", ["conv", "mlp"])
def test_the_factors_multiply_to_the_measured_ratios(conv_traces, digits_traces, workload):
    ta, tb = _workloads(conv_traces, digits_traces)[workload]
    e = explain(ta, "fourbit", tb, "fp16")
    a, b = simulate(ta, "fourbit").totals(), simulate(tb, "fp16").totals()
    assert e.measured_speedup == pytest.approx(b["time_s"] / a["time_s"], rel=1e-12)
    assert math.prod(e.speedup.factor) == pytest.approx(b["time_s"] / a["time_s"], rel=1e-12)
    assert e.measured_energy_ratio == pytest.approx(a["energy_pj"] / b["energy_pj"], rel=1e-12)
    assert math.prod(e.energy.factor) == pytest.approx(a["energy_pj"] / b["energy_pj"], rel=1e-12)
    assert list(e.speedup.term) == ["peak compute density", "PE-array area", "work", *SPEED_TERMS]
    # the three peak terms make the ratio of peak throughputs: 4 products per PE against 1, same array
    assert math.prod(e.speedup.factor[:3]) == pytest.approx(4.0, rel=1e-12)
    assert e.speedup.ratio.iloc[-1] == pytest.approx(e.measured_speedup, rel=1e-12)
    frame = e.to_frame()
    assert set(frame.waterfall) == {"speed-up", "energy"} and len(frame) == len(e.speedup) + len(e.energy)


def test_unlimited_memory_makes_the_memory_term_one(conv_traces):
    free = {"dram.bandwidth_bytes_per_s": math.inf, "dram.latency_cycles": 0, "dma.setup_cycles": 0}
    e = explain(conv_traces["int4"], load_chip("fourbit", free), conv_traces["fp16"], load_chip("fp16", free))
    terms = e.speedup.set_index("term").factor
    assert terms["memory"] == 1.0
    assert terms["partial folds and padding"] != 1.0 and terms["vector work"] != 1.0  # the others still act


def test_a_trace_without_ops_has_no_vector_or_update_term(conv_traces):
    bare = [_without_ops(read(conv_traces[r]), lambda ops: pd.Series(False, index=ops.index)) for r in ("int4", "fp16")]
    e = explain(bare[0], "fourbit", bare[1], "fp16")
    terms = e.speedup.set_index("term").factor
    assert terms["weight update"] == terms["vector work"] == 1.0
    assert e.energy.set_index("term").factor["vector work"] == 1.0


def test_with_memory_and_vector_work_off_the_simulation_runs_the_fold_model(conv_traces):
    """Level 3 of the waterfall is a simulation; the docstring says it equals the folds' compute
    cycles (the closed form of `fourbit.hwsim.mapping`)."""
    trace = _without_ops(read(conv_traces["int4"]), lambda ops: pd.Series(False, index=ops.index))
    chip = load_chip("fourbit", {"dram.bandwidth_bytes_per_s": math.inf, "dram.latency_cycles": 0,
                                 "dma.setup_cycles": 0, "scaling.lanes": math.inf})
    df = simulate(trace, chip).to_frame()
    assert (df.total_cycles == df.compute_cycles).all()
    assert df.compute_cycles.sum() == sum(j.plan.compute_cycles for j in mapped_jobs(trace, chip))


def test_the_command_writes_the_table_and_the_figure(conv_traces, tmp_path, capsys):
    out = tmp_path / "ex"
    assert main(["explain", str(conv_traces["int4"]), "--chip", "fourbit", "--baseline", "fp16",
                 "--set", "array.rows=16", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "speed-up of fourbit over fp16" in text and "weight update" in text and "leakage" in text
    table = pd.read_csv(out / "explain.csv")
    assert set(table.waterfall) == {"speed-up", "energy"}
    assert (out / "explain.png").stat().st_size > 10_000 and (out / "explain.svg").is_file()
    toml = tmp_path / "mine.toml"
    toml.write_text('[chip]\nname = "mine"\n\n[units.fp16]\naccumulator = "fp32"\n')
    assert main(["explain", str(conv_traces["int4"]), "--chip", str(toml), "--out", str(tmp_path / "e2")]) == 2
    assert "has no recipe of its own" in capsys.readouterr().err
    assert not (tmp_path / "e2").exists()


def test_a_chip_against_its_own_preset_keeps_both_sides(conv_traces, tmp_path):
    """The same preset on both sides with other overrides: each side keeps its own (a PE array
    of 4x the baseline's area here), not the other's."""
    from fourbit.analysis.explain import explain_job

    e = explain_job(conv_traces["fp16"], "fp16", "fp16", chip_set={"array.rows": 64, "array.cols": 64},
                    out=tmp_path / "same")
    area = e.speedup.set_index("term").factor
    assert area["PE-array area"] == pytest.approx(4.0) and area["peak compute density"] == pytest.approx(1.0)
    assert e.measured_speedup > 1.1  # not the 1.0 of one chip against itself


def test_a_recipe_the_chip_cannot_run_is_refused_before_any_work(conv_traces, tmp_path, capsys):
    toml = tmp_path / "int4only.toml"
    toml.write_text('[chip]\nname = "int4only"\n\n[units.int4]\nmacs_per_pe = 4\naccumulator = "int32"\n')
    out = tmp_path / "n1"
    assert main(["explain", str(conv_traces["int4"]), "--chip", str(toml), "--recipe", "int4", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "recipe 'int4' (first layers, fwd) on chip 'int4only'" in err and "no unit" in err
    assert not out.exists()


def test_two_traces_of_different_workloads_are_refused(conv_traces, digits_traces):
    with pytest.raises(ConfigError, match="not the same workload: GEMM 0"):
        explain(conv_traces["int4"], "fourbit", digits_traces["fp32"], "fp16")

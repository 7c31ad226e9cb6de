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
from fourbit.models.recipes import get_recipe
from fourbit.traces.io import read
from fourbit.traces.scalesim import import_topology

TOPOLOGY = """Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,
conv1, 18, 18, 3, 3, 3, 16, 1,
conv2, 16, 16, 3, 3, 16, 32, 2,
conv3, 7, 7, 3, 3, 32, 48, 1,
fc, 1, 1, 1, 1, 1200, 10, 1,
"""


@pytest.fixture(scope="module")
def conv_traces(tmp_path_factory):
    """A four-layer SCALE-Sim topology at batch 8, imported with the int4 and the fp16 recipes."""
    d = tmp_path_factory.mktemp("topo")
    (d / "small.csv").write_text(TOPOLOGY)
    out = {}
    for recipe in ("int4", "fp16"):
        out[recipe] = d / recipe
        import_topology(d / "small.csv", 8, get_recipe(recipe).describe()).write(out[recipe])
    return out


def _workloads(conv_traces, digits_runs):
    return {"conv": (read(conv_traces["int4"]), read(conv_traces["fp16"])),
            "mlp": (digits_runs["int4"].trace, digits_runs["fp32"].trace)}


@pytest.mark.parametrize("workload", ["conv", "mlp"])
def test_the_factors_multiply_to_the_measured_ratios(conv_traces, digits_runs, workload):
    ta, tb = _workloads(conv_traces, digits_runs)[workload]
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
    toml.write_text('[chip]\nname = "mine"\n')
    assert main(["explain", str(conv_traces["int4"]), "--chip", str(toml), "--out", str(tmp_path / "e2")]) == 2
    assert "has no recipe of its own" in capsys.readouterr().err
    assert not (tmp_path / "e2").exists()

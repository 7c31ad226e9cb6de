"""`fourbit bench`: the records design.md describes, with targets where an issue sets one."""

from __future__ import annotations

import json

import pytest

from fourbit.analysis.bench import format_records, run_benchmarks
from fourbit.traces.errors import ConfigError
from tests.analysis.test_cli import fourbit


def test_bench_sim_and_trace_json_records():
    res = fourbit("bench", "sim", "trace", "--quick", "--json")
    assert res.returncode == 0, res.stderr
    records = json.loads(res.stdout)
    assert all(set(r) == {"benchmark", "metric", "value", "unit", "target"} for r in records)
    by_metric = {r["metric"]: r for r in records}
    step = by_metric["resnet18 batch 32 training step on fourbit 32x32 ws"]
    assert step["unit"] == "s" and step["target"] == 1.5 and step["value"] > 0
    fit = by_metric["linearity of wall time in tiles walked one by one (R^2 of the fit)"]
    assert 0.0 <= fit["value"] <= 1.0
    tiles = [r["value"] for r in records if r["metric"].endswith("tile by tile: tiles")]
    assert tiles == sorted(tiles) and tiles[0] > 0  # batch 4, then 8: more tiles
    read = by_metric["read a 100,000-row trace (validated)"]
    assert read["target"] == 2.0 and read["value"] > 0


def test_format_and_unknown_benchmark():
    text = format_records([{"benchmark": "b", "metric": "m", "value": 1.5, "unit": "ratio", "target": 2.0},
                           {"benchmark": "b", "metric": "n", "value": 3.0, "unit": "ratio", "target": 2.0}],
                          as_json=False)
    assert "target <= 2: met" in text.splitlines()[0] and "NOT met" in text.splitlines()[1]
    with pytest.raises(ConfigError, match="unknown benchmark 'gpu'; benchmarks: numerics, sim, train, trace"):
        run_benchmarks(["gpu"])


def test_bench_numerics_json_records():
    """The kernels' ratios come out for both shapes, with the issue's targets attached (the
    values are measurements, reported, never asserted)."""
    res = fourbit("bench", "numerics", "--quick", "--json")
    assert res.returncode == 0, res.stderr
    by_metric = {r["metric"]: r for r in json.loads(res.stdout)}
    for shape in ("512x512x512", "3136x64x576"):
        fp4 = by_metric[f"fp4xint4_fp16_g4_c64_shift_add {shape} / float32 matmul"]
        int4 = by_metric[f"int4xint4_int32_exact {shape} / float32 matmul"]
        assert (fp4["target"], int4["target"]) == (8.0, 2.0) and fp4["value"] > 0 and int4["value"] > 0
        assert by_metric[f"float32 matmul {shape}"]["unit"] == "ms"
    assert by_metric["quantize_fp4 1M elements"]["unit"] == "Melements/s"

"""The ``fourbit`` command line, end to end on real data (scikit-learn digits)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]


def fourbit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "analysis.cli", *args], capture_output=True,
                          text=True, cwd=cwd or ROOT, env=env, timeout=900)


def test_run_main_job_end_to_end(tmp_path):
    out = tmp_path / "out"
    res = fourbit("run", "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    table = pd.read_csv(out / "main_job.csv")
    assert list(table.columns) == [
        "recipe", "chip", "test_accuracy_pct", "cycles_per_step", "time_per_step_us",
        "speedup_vs_fp16", "energy_per_step_uj", "energy_ratio_vs_fp16",
        "datapath_energy_per_step_uj", "dram_bytes_per_step", "utilization",
    ]
    fp32 = table[table.recipe == "fp32"].iloc[0]
    int4 = table[table.recipe == "int4"].iloc[0]
    assert (fp32.chip, int4.chip) == ("fp16", "fourbit")
    assert fp32.test_accuracy_pct >= 95.0
    assert int4.test_accuracy_pct >= fp32.test_accuracy_pct - 2.0
    # the 4-bit chip is faster and cheaper per step, and moves fewer bytes
    assert int4.cycles_per_step < fp32.cycles_per_step
    assert int4.energy_per_step_uj < fp32.energy_per_step_uj
    assert int4.dram_bytes_per_step < fp32.dram_bytes_per_step
    assert int4.speedup_vs_fp16 > 1 and int4.energy_ratio_vs_fp16 < 1
    assert (out / "main_job.png").stat().st_size > 10_000
    assert (out / "runs" / "int4" / "meta.json").is_file()
    assert "fourbit" in res.stdout and "int4" in res.stdout


@pytest.mark.parametrize("args, message", [
    (["run", "--dataset", "cifar100"], "unknown dataset 'cifar100'"),
    (["run", "--recipe", "int3"], "unknown recipe 'int3'"),
    (["run", "--epochs", "0"], "expected an integer >= 1, got 0"),
    (["run", "--chip", "tpu9"], "unknown chip preset 'tpu9'"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, args, message):
    res = fourbit(*args, "--out", str(tmp_path / "o"))
    assert res.returncode == 2
    assert message in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("target", ["/proc/fourbit-out", "FILE/sub"])
def test_unwritable_out_exits_2(tmp_path, target):
    """Unwritable even for root: a directory under /proc, or a path below a regular file."""
    blocker = tmp_path / "FILE"
    blocker.write_text("x")
    res = fourbit("run", "--out", target.replace("FILE", str(blocker)), "--epochs", "1")
    assert res.returncode == 2
    assert "--out" in res.stderr and "not a writable directory" in res.stderr
    assert "Traceback" not in res.stderr

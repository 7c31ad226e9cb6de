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


def test_same_recipe_on_two_chips_trains_once_and_keeps_both_rows(tmp_path):
    from analysis.run import main_job

    table = main_job(recipe="int4", baseline="int4", epochs=1, out=str(tmp_path / "o"), progress=False)
    assert list(table.chip) == ["fp16", "fourbit"]
    assert table.cycles_per_step[1] < table.cycles_per_step[0]  # fourbit is the faster chip
    assert table.test_accuracy_pct[0] == table.test_accuracy_pct[1]


def test_ratio_columns_name_the_baseline_chip(tmp_path):
    from analysis.run import main_job

    table = main_job(recipe="fp32", baseline="int4", chip="fp16", baseline_chip="fourbit", epochs=1,
                     out=str(tmp_path / "o"), progress=False)
    assert "speedup_vs_fourbit" in table.columns and "energy_ratio_vs_fourbit" in table.columns


def test_bad_recipe_fails_before_any_training(tmp_path):
    res = fourbit("run", "--recipe", "nope", "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "unknown recipe 'nope'" in res.stderr
    assert not (tmp_path / "o" / "runs").exists()


def test_train_refuses_to_overwrite_and_honours_lr_zero_check(tmp_path):
    out = tmp_path / "r"
    assert fourbit("train", "--model", "mlp", "--dataset", "digits", "--recipe", "fp32", "--epochs", "1",
                   "--out", str(out), "--quiet").returncode == 0
    res = fourbit("train", "--model", "mlp", "--dataset", "digits", "--recipe", "fp32", "--epochs", "1",
                  "--out", str(out), "--quiet")
    assert res.returncode == 2 and "--overwrite" in res.stderr
    res = fourbit("train", "--model", "mlp", "--dataset", "digits", "--recipe", "fp32", "--lr", "0",
                  "--out", str(tmp_path / "z"), "--quiet")
    assert res.returncode == 2 and "lr must be a finite number > 0, got 0.0" in res.stderr


def test_divergence_is_one_clear_line(tmp_path):
    res = fourbit("train", "--model", "mlp", "--dataset", "digits", "--recipe", "int4", "--lr", "1e10",
                  "--epochs", "1", "--out", str(tmp_path / "d"), "--quiet")
    assert res.returncode == 2 and "training diverged" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_simulate_cli_and_broken_pipe(tmp_path, digits_runs):
    path = digits_runs["int4"].trace.write(tmp_path / "run")
    res = fourbit("simulate", str(path), "--chip", "fourbit", "--set", "energy.overrides.mac.int4=0.02",
                  "--set", "sram.ifmap_bytes=1e6", "--out", str(tmp_path / "s"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "s" / "simulation.csv").is_file()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    piped = subprocess.run(f"{sys.executable} -m analysis.cli simulate {path} --chip fourbit | head -1",
                           shell=True, capture_output=True, text=True, env=env, cwd=ROOT)
    assert "Traceback" not in piped.stderr
    assert piped.stdout.strip().startswith("layer")


def test_import_scalesim_cli(tmp_path):
    res = fourbit("import-scalesim", "resnet18", "--batch", "32", "--recipe", "int4", "--out", str(tmp_path / "r18"))
    assert res.returncode == 0, res.stderr
    assert "forward 1.8141 GMAC per sample" in res.stdout
    from traces import read

    assert len(read(tmp_path / "r18").gemms) == 63
    bad = tmp_path / "bad.csv"
    bad.write_text("Layer, M, N, K\nfc, 10, 0, 5\n")
    res = fourbit("import-scalesim", str(bad), "--batch", "1", "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and "line 2: N = 0 must be >= 1" in res.stderr

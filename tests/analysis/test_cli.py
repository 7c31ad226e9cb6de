"""The ``fourbit`` command line, end to end on real data (scikit-learn digits)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]


def fourbit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The installed ``fourbit`` command (as ``python -m``, the same entry point)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-m", "fourbit.analysis.cli", *args], capture_output=True,
                          text=True, cwd=cwd or ROOT, env=env, timeout=900)


def check_main_job(out: Path, stdout: str) -> None:
    """What the main job (``fourbit run``, default arguments) must produce in ``out``; called by
    the README test, which runs the README's command as written in a fresh environment."""
    table = pd.read_csv(out / "main_job.csv")
    assert list(table.columns) == [
        "recipe", "chip", "test_accuracy_pct", "accuracy_delta_vs_fp32_pts", "cycles_per_step", "time_per_step_us",
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
    assert len(list((out / "runs").glob("int4-s0-*/meta.json"))) == 1
    assert "fourbit" in stdout and "int4" in stdout and "speed-up vs fp16" in stdout


@pytest.mark.parametrize("args, message", [
    (["run", "--dataset", "cifar100"], "argument --dataset: invalid choice: 'cifar100' (choose from 'digits', "),
    (["run", "--recipe", "int3"], "argument --recipe: invalid choice: 'int3' (choose from 'fp32', 'fp16'"),
    (["run", "--recipe", "int4:radix=3"], "recipe.radix = 3 is out of range: allowed one of 2, 4, 8, 16"),
    (["run", "--epochs", "0"], "epochs = 0 is out of range: allowed an integer >= 1"),
    (["run", "--epochs", "two"], "argument --epochs: epochs = 'two': expected an integer"),
    (["run", "--chip", "tpu9"], "argument --chip: invalid choice: 'tpu9' (choose from 'fourbit'"),
    (["train", "--model", "mlp", "--dataset", "digits", "--recipe", "int4", "--lr", "0"],
     "lr = 0.0 is out of range: allowed a finite number > 0"),
    (["sweep", "--model", "mlp", "--dataset", "digits", "--grid", "array.rows=eight"],
     "array.rows = 'eight': expected an integer"),
    (["sweep", "--model", "mlp", "--dataset", "digits", "--grid", "array.macs_per_pe=8",
      "--grid", "units.int4.macs_per_pe,units.fp4xint4.macs_per_pe=4"],
     "array.macs_per_pe = 8 has no effect: every unit of this chip sets its own"),
    (["compare", "--trace", "nowhere"], "nowhere: does not exist"),
    (["simulate", "nowhere", "--chip", "fourbit"], "nowhere: does not exist"),
    (["simulate", "nowhere", "--chip", "fourbit", "--set", "array.rows=0"], "array.rows = 0 is out of range"),
    # a wrong type is worded like a value out of range, with what is allowed
    (["simulate", "nowhere", "--chip", "fourbit", "--set", "sram.ifmap_bytes=abc"],
     "overrides: sram.ifmap_bytes = 'abc': expected an integer; allowed an integer >= 1 and <= 1099511627776"),
    (["simulate", "nowhere", "--chip", "fourbit", "--set", "dram.bandwidth_bytes_per_s=1e400"],
     "dram.bandwidth_bytes_per_s = '1e400' overflows a number; write inf for an infinite value"),
    (["simulate", "nowhere", "--chip", "fourbit", "--set", "chip.name="],
     "chip.name = '' is out of range: allowed a non-empty string"),
    (["simulate", "nowhere", "--chip", "fourbit", "--set", "=3"], "--set takes FIELD=VALUE with a field name, got '=3'"),
    (["simulate", "nowhere", "--chip", "fourbit", "--set", "array.rows=8", "--set", "array.rows=16"],
     "--set array.rows is given twice"),
    (["import-scalesim", "nope", "--batch", "1"], "topology 'nope' is neither a file nor a shipped topology"),
    (["import-scalesim", "resnet18", "--batch", str(2**62), "--recipe", "int4"],
     "resnet18 layer 'conv1' at batch 4611686018427387904: a GEMM of M=57848989415153153867776, N=64, K=147"),
    (["import-scalesim", "resnet18", "--batch", str(10**30), "--recipe", "int4"], "MACs, beyond the 4.61e+18 (2^62)"),
    (["import-scalesim", "gpt2_small", "--batch", str(2**62), "--recipe", "int4"], "beyond the 4.61e+18 (2^62)"),
    (["sweep", "--model", "mlp", "--dataset", "digits", "--grid", "array.rows=8", "--scheduler", "nonsense"],
     "--scheduler 'nonsense': no dask.distributed scheduler reached"),
    (["compare", "--trace", "nowhere", "--baseline", "fp32"], "argument --baseline: invalid choice: 'fp32'"),
    (["compare", "--trace", "nowhere", "--chips", "fourbit,"], "chips = 'fourbit,': an empty name between commas"),
    (["compare", "--trace", "nowhere", "--epochs", "3"], "train applies to a model source (--model)"),
    (["ablation", "--model", "mlp", "--dataset", "digits", "--seeds", "0", "0"], "seeds: 0 is given twice"),
    (["ablation", "--variants", "nvfp4", "--recipe", "bf16"], "--variants nvfp4 and --recipe exclude each other"),
    (["train", "--model", "mlp", "--dataset", "digits", "--recipe", "nvfp4:bf16_last=4", "--out", "nowhere"],
     "the recipe keeps the last 4 GEMM layers apart (last_layers, e.g. nvfp4's bf16_last), but mlp has 3 after"),
    (["train", "--model", "mlp", "--dataset", "digits", "--recipe", "nvfp4:rht=1_6", "--out", "nowhere"],
     "recipe.rht = '1_6': expected an integer (digits only)"),
    (["sweep", "--model", "mlp", "--dataset", "digits", "--grid", "array.dataflow=ws,WS"],
     "axis array.dataflow: the value 'ws' is given twice"),
    (["sweep", "--model", "mlp", "--dataset", "digits", "--grid", "array.rows=8", "--baseline", "tpu"],
     "argument --baseline: invalid choice: 'tpu' (choose from 'fourbit', 'fp16', 'int8', 'hfp8', 'none')"),
    (["train", "--model", "mlp", "--dataset", "digits", "--recipe", "int4:radix=2,,tpr=off"],
     "an empty parameter between separators"),
    (["ablation", "--model", "mlp", "--dataset", "digits", "--seeds", "-1"], "seeds.0 = -1 is out of range"),
])
def test_bad_arguments_exit_2_with_one_line_and_leave_no_directory(tmp_path, capsys, args, message):
    """In this process (`main` is what the ``fourbit`` script calls; the subprocess tests below
    cover the script itself): status 2, one line, no traceback, no directory left behind."""
    status, _, err = in_process(capsys, *args, "--out", str(tmp_path / "o" / "deeper"))
    assert status == 2
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


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
    from fourbit.analysis.run import main_job

    table = main_job(recipe="int4", baseline="int4", epochs=1, out=str(tmp_path / "o"), progress=False)
    assert list(table.chip) == ["fp16", "fourbit"]
    assert table.cycles_per_step[1] < table.cycles_per_step[0]  # fourbit is the faster chip
    assert table.test_accuracy_pct[0] == table.test_accuracy_pct[1]


def test_ratio_columns_name_the_baseline_chip(tmp_path):
    from fourbit.analysis.run import main_job

    table = main_job(recipe="fp32", baseline="int4", chip="fp16", baseline_chip="fourbit", epochs=1,
                     out=str(tmp_path / "o"), progress=False)
    assert "speedup_vs_fourbit" in table.columns and "energy_ratio_vs_fourbit" in table.columns


def test_bad_recipe_fails_before_any_training(tmp_path):
    res = fourbit("run", "--recipe", "nope", "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "invalid choice: 'nope'" in res.stderr
    assert not (tmp_path / "o" / "runs").exists()


def in_process(capsys, *args: str) -> tuple[int, str, str]:
    """``fourbit ARGS`` through `main` in this process: (status, stdout, stderr)."""
    from fourbit.analysis.cli import main

    try:
        status = main(list(args))
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def test_train_refuses_to_overwrite_unless_told(tmp_path, capsys):
    args = ("train", "--model", "mlp", "--dataset", "digits", "--recipe", "fp32", "--epochs", "1",
            "--out", str(tmp_path / "r"), "--quiet")
    assert in_process(capsys, *args)[0] == 0
    status, _, err = in_process(capsys, *args)
    assert status == 2 and "already holds a run directory; pass --overwrite" in err
    assert in_process(capsys, *args, "--overwrite")[0] == 0


@pytest.mark.parametrize("model, dataset, message", [
    ("lstm", "digits", "lstm models character sequences (data set shakespeare); data set 'digits' holds feature"),
    ("mlp", "shakespeare", "mlp classifies feature tensors; data set 'shakespeare' holds character sequences (models: lstm, gpt)"),
])
def test_a_model_on_the_wrong_kind_of_data_is_refused_and_leaves_nothing(tmp_path, data_dir, model, dataset,
                                                                        message):
    res = fourbit("train", "--model", model, "--dataset", dataset, "--data-dir", str(data_dir), "--recipe",
                  "int4", "--out", str(tmp_path / "w"), "--quiet")
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "w").exists()
    res = fourbit("sweep", "--model", model, "--dataset", dataset, "--data-dir", str(data_dir), "--grid",
                  "array.rows=16", "--out", str(tmp_path / "s"), "--quiet")
    assert res.returncode == 2 and message in res.stderr and not (tmp_path / "s").exists()


def test_divergence_is_one_clear_line(tmp_path):
    res = fourbit("train", "--model", "mlp", "--dataset", "digits", "--recipe", "int4", "--lr", "1e10",
                  "--epochs", "1", "--out", str(tmp_path / "d"), "--quiet")
    assert res.returncode == 2 and "training diverged" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()  # nothing was written: no directory left behind


VERBS = ("run", "train", "simulate", "import-scalesim", "chip", "ablation", "sweep", "compare", "explain", "report",
         "bench")


@pytest.mark.parametrize("verb", VERBS)
def test_help_of_every_command_shows_defaults_and_choices(verb):
    text = " ".join(_subparser(verb).format_help().split())
    if verb in ("run", "ablation", "sweep", "compare"):  # jobs: options derived from their models
        assert "(default: " in text and "--overwrite" in text
        assert "one of mlp, lenet5, resnet, speech, lstm" in text
        assert "one of digits, mnist, cifar10, fsdd, shakespeare" in text
    if verb in ("run", "train", "ablation", "sweep", "compare"):
        assert "--epochs EPOCHS passes over the training set; an integer >= 1 (default: " in text
        assert "--lr LR peak learning rate of the cosine schedule; a finite number > 0 (default: 0.1)" in text
    if verb in ("run", "train", "sweep", "import-scalesim"):
        assert "fp32, fp16, hfp8, int8, int4-fwd, int4, int4-dw8" in text
    if verb in ("run", "sweep", "simulate", "explain"):
        assert "fourbit, fourbit_iso_area, fp16, hfp8, int8, rapid" in text
    defaults = {"run": "(default: 20)", "train": "(default: 20)", "sweep": "(default: 1)", "compare": "(default: 1)",
                "ablation": "(default: 1)"}
    if verb in defaults:  # each job's own default number of epochs, shown
        assert re.search(r"--epochs EPOCHS passes over the training set; an integer >= 1 " + re.escape(defaults[verb]),
                         text)


def _subparser(verb: str):
    from fourbit.analysis.cli import _parser

    parser = _parser([verb])
    action = next(a for a in parser._actions if a.dest == "verb")
    return action.choices[verb]


def test_train_never_writes_into_a_directory_it_does_not_own(tmp_path, capsys):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("x")
    for extra in ((), ("--overwrite",)):
        status, _, err = in_process(capsys, "train", "--model", "mlp", "--dataset", "digits", "--recipe", "int4",
                                    "--epochs", "1", "--out", str(foreign), "--quiet", *extra)
        assert status == 2 and "is not empty and holds no fourbit run" in err
        assert [p.name for p in foreign.iterdir()] == ["todo.txt"]  # refused before training: nothing written
    status, _, err = in_process(capsys, "train", "--model", "mlp", "--dataset", "digits", "--recipe", "int4",
                                "--out", "", "--quiet")
    assert status == 2 and "--out '' names no directory" in err


def test_chip_files_that_are_not_text_and_chip_flags_without_a_chip(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe[array]\nrows = 3\n")
    res = fourbit("chip", str(bad))
    assert res.returncode == 2 and "bad.toml: unreadable" in res.stderr and "Traceback" not in res.stderr
    res = fourbit("chip", "--set", "array.rows=0")
    assert res.returncode == 2 and "--set and --peak need a chip" in res.stderr


def test_the_main_job_continues_refuses_another_and_overwrites(tmp_path, capsys):
    out = tmp_path / "o"
    args = ("run", "--epochs", "1", "--out", str(out), "--quiet")
    status, first, err = in_process(capsys, *args)
    assert status == 0, err
    status, again, _ = in_process(capsys, *args)  # the same job: the runs are reused, the table is the same
    assert status == 0 and again == first
    status, _, err = in_process(capsys, "run", "--epochs", "1", "--seed", "1", "--out", str(out), "--quiet")
    assert status == 2
    assert "holds the results of another main_job (train.seed is 0 there, 1 here); pass --overwrite" in err
    status, _, err = in_process(capsys, "run", "--epochs", "1", "--seed", "1", "--out", str(out), "--quiet",
                                "--overwrite")
    assert status == 0, err
    assert len(list((out / "runs").iterdir())) == 4  # seed 0's runs stay cached


def test_simulate_cli_and_broken_pipe(tmp_path, digits_traces):
    path = digits_traces["int4"].write(tmp_path / "run")
    res = fourbit("simulate", str(path), "--chip", "fourbit", "--set", "energy.overrides.mac.int4=0.02",
                  "--set", "sram.ifmap_bytes=1e6", "--out", str(tmp_path / "s"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "s" / "simulation.csv").is_file()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    piped = subprocess.run(f"{sys.executable} -m fourbit.analysis.cli simulate {path} --chip fourbit | head -1",
                           shell=True, capture_output=True, text=True, env=env, cwd=ROOT)
    assert "Traceback" not in piped.stderr
    assert piped.stdout.strip().startswith("layer")


def test_import_scalesim_cli(tmp_path):
    res = fourbit("import-scalesim", "resnet18", "--batch", "32", "--recipe", "int4", "--out", str(tmp_path / "r18"))
    assert res.returncode == 0, res.stderr
    assert "forward 1.8141 GMAC per sample" in res.stdout
    from fourbit.traces.io import read

    assert len(read(tmp_path / "r18").gemms) == 63
    bad = tmp_path / "bad.csv"
    bad.write_text("Layer, M, N, K\nfc, 10, 0, 5\n")
    res = fourbit("import-scalesim", str(bad), "--batch", "1", "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and "line 2: N = 0 must be >= 1" in res.stderr


def test_train_resume_continues_a_killed_run(tmp_path, monkeypatch, capsys):
    import importlib

    from fourbit.analysis.cli import main
    from fourbit.traces.io import read

    train_mod = importlib.import_module("fourbit.models.trainer")
    args = ["train", "--model", "mlp", "--dataset", "digits", "--recipe", "int4", "--epochs", "3", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    real_save, saves = train_mod._save_checkpoint, []

    def dies_after_epoch_2(*a, **k):
        real_save(*a, **k)
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "_save_checkpoint", dies_after_epoch_2)
    assert main([*args, "--out", str(tmp_path / "cut")]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "cut"), "--resume", "--overwrite"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "cut")]) == 2  # the checkpoint is not thrown away
    assert "checkpoint of an unfinished run; pass --resume" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    assert len(saves) == 3
    whole, cut = read(tmp_path / "whole"), read(tmp_path / "cut")
    pd.testing.assert_frame_equal(whole.metrics, cut.metrics, check_exact=True)
    pd.testing.assert_frame_equal(whole.gemms, cut.gemms, check_exact=True)
    assert main([*args, "--epochs", "4", "--out", str(tmp_path / "cut"), "--resume"]) == 2
    assert "is of another run: train_config" in capsys.readouterr().err


def test_recipe_specs_on_the_command_line(tmp_path):
    res = fourbit("train", "--model", "mlp", "--dataset", "digits", "--recipe", "int4:radix=16,grad_scaling=global",
                  "--epochs", "1", "--out", str(tmp_path / "r16"), "--quiet")
    assert res.returncode == 0, res.stderr
    from fourbit.traces.io import read

    meta = read(tmp_path / "r16").meta
    assert meta["recipe"]["name"] == "int4:radix=16,grad_scaling=global"
    assert meta["recipe"]["hidden"]["grad_weight"] == "fp4_r16_e3_odd"
    res = fourbit("train", "--model", "mlp", "--dataset", "digits", "--recipe", "int4:radix=3",
                  "--out", str(tmp_path / "bad"), "--quiet")
    assert res.returncode == 2 and "radix" in res.stderr and not (tmp_path / "bad" / "meta.json").exists()


def test_ablation_table_and_resume(tmp_path):
    args = ["ablation", "--model", "mlp", "--dataset", "digits", "--recipe", "int4", "--recipe",
            "int4:radix=2,tpr=off", "--seeds", "0", "1", "--epochs", "1", "--out", str(tmp_path / "abl"), "--quiet"]
    res = fourbit(*args)
    assert res.returncode == 0, res.stderr
    table = pd.read_csv(tmp_path / "abl" / "ablation.csv")
    assert table.recipe.tolist() == ["int4", "int4:radix=2,tpr=off"]
    assert table.seeds.tolist() == [2, 2] and table.radix.tolist() == [4, 2]
    assert table.tpr.tolist() == [True, False]
    runs = pd.read_csv(tmp_path / "abl" / "ablation_runs.csv")
    assert len(runs) == 4 and runs.train_seconds.notna().all()
    means = runs.groupby("recipe", sort=False).test_accuracy_pct.mean()
    assert means.tolist() == pytest.approx(table.test_accuracy_pct.tolist())
    again = fourbit(*args)  # every run is finished: read back, not trained again
    assert again.returncode == 0, again.stderr
    assert pd.read_csv(tmp_path / "abl" / "ablation_runs.csv").train_seconds.isna().all()
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "abl" / "ablation.csv"), table)


@pytest.mark.slow
def test_train_lenet5_on_mnist_end_to_end(tmp_path, data_dir):
    """The issue's MNIST row, one epoch: INT4 LeNet-5 on the real 60k/10k split."""
    res = fourbit("train", "--model", "lenet5", "--dataset", "mnist", "--data-dir", str(data_dir / "mnist"),
                  "--recipe", "int4", "--epochs", "1", "--out", str(tmp_path / "m"), "--quiet")
    assert res.returncode == 0, res.stderr
    from fourbit.traces.io import read

    trace = read(tmp_path / "m")
    assert trace.meta["final"]["test_accuracy"] > 0.97
    assert trace.meta["steps"] == 937 and set(trace.gemms.phase) == {"fwd", "bwd_data", "bwd_weight"}


def test_ctrl_c_in_a_two_worker_sweep_is_one_line(tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) while two workers
    train: the workers are stopped, the command says so on one line and exits with 130, without
    worker tracebacks or resource warnings."""
    import signal
    import time

    out = tmp_path / "s"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen([sys.executable, "-m", "fourbit.analysis.cli", "sweep", "--model", "mlp", "--dataset",
                             "digits", "--epochs", "200", "--grid", "recipe=int4,fp32", "--workers", "2",
                             "--out", str(out), "--quiet"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list((out / "runs").glob("*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
    time.sleep(2)  # the workers are training
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.strip() == "fourbit: interrupted", err

"""The main job: train at 4 bits and at FP32, simulate one training step of each on the 4-bit
chip and on the FP16 baseline chip, compare.

``fourbit run`` and `main_job` do the same thing: train ``model`` on ``dataset`` twice with the
same seed (the ``baseline`` recipe and the 4-bit ``recipe``), write both run directories,
simulate the 4-bit trace on ``chip`` and the baseline trace on ``baseline_chip`` (the paper's
comparison, Sun et al. 2020, section 6 / Fig. 6(c)), and write one table (CSV) and one figure
(PNG) into ``out``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fourbit.analysis.plots import main_job_figure
from fourbit.analysis.tables import comparison_row, comparison_table
from fourbit.hwsim.config import load_chip
from fourbit.hwsim.engine import simulate
from fourbit.models.data import load_dataset
from fourbit.models.recipes import get_recipe
from fourbit.models.trainer import TrainConfig, train
from fourbit.models.zoo import build_model
from fourbit.traces.errors import ConfigError

__all__ = ["MainJob", "check_writable", "main_job", "write_csv"]


@dataclass(frozen=True)
class MainJob:
    """Parameters of the main job (the built-in default: digits, MLP, int4 vs fp32, fourbit chip
    vs fp16 chip)."""

    model: str = "mlp"
    dataset: str = "digits"
    data_dir: str | None = None
    recipe: str = "int4"
    baseline: str = "fp32"
    chip: str = "fourbit"
    baseline_chip: str = "fp16"
    epochs: int = 20
    batch_size: int = 64
    seed: int = 0
    out: str = "fourbit-out"


def check_writable(out: str | Path) -> Path:
    """Create ``out`` if needed and check a file can be written there.

    Raises ConfigError naming the directory when it cannot be written.
    """
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".probe-")
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise ConfigError(f"--out {str(out)!r} is not a writable directory: {exc.strerror or exc}") from exc
    return path


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """Write ``df`` to ``path`` atomically (a temporary file renamed into place)."""
    tmp = path.with_name(path.name + ".tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def main_job(job: MainJob | None = None, *, progress: bool = True, **params) -> pd.DataFrame:
    """Run the main job; returns the comparison table (also written to ``out``).

    Columns: recipe, chip, test_accuracy_pct, cycles_per_step, time_per_step_us,
    speedup_vs_fp16, energy_per_step_uj, energy_ratio_vs_fp16, datapath_energy_per_step_uj,
    dram_bytes_per_step, utilization (the ratios are against the baseline row; their names
    carry the baseline chip's name, ``fp16`` by default). Files in ``out``: ``main_job.csv``, ``main_job.png``,
    ``sim_<recipe>_<chip>.csv`` (per layer and phase) and the run directories ``runs/<recipe>``.

    Raises
    ------
    ConfigError
        Unknown model, data set, recipe or chip; bad hyper-parameters; ``out`` not writable.
    """
    job = job or MainJob(**params)
    # everything that can be wrong with the arguments fails here, before any training
    out = check_writable(job.out)
    pairs = [(job.baseline, job.baseline_chip), (job.recipe, job.chip)]
    chips = {name: load_chip(name) for _, name in pairs}
    recipes = {name: get_recipe(name) for name, _ in pairs}
    dataset = load_dataset(job.dataset, job.data_dir)
    build_model(job.model, dataset.input_shape, dataset.n_classes, job.seed)
    cfg = TrainConfig(epochs=job.epochs, batch_size=job.batch_size, seed=job.seed)
    runs, rows, reports = {}, [], []
    for recipe, chip_name in pairs:
        if recipe not in runs:  # the same recipe on two chips trains once
            runs[recipe] = train(job.model, dataset, recipes[recipe], config=cfg,
                                 out=out / "runs" / recipe, progress=progress)
        report = simulate(runs[recipe].trace, chips[chip_name])
        write_csv(report.to_frame(), out / f"sim_{recipe}_{chip_name}.csv")
        rows.append(comparison_row(recipe, chip_name, runs[recipe].final["test_accuracy"], report))
        reports.append(report)
    table = comparison_table(rows, baseline=0, baseline_name=job.baseline_chip)
    write_csv(table, out / "main_job.csv")
    main_job_figure(table, reports, out / "main_job.png")
    return table

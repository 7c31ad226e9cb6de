"""The main job: train at 4 bits and at FP32, simulate one training step of each on the 4-bit
chip and on the FP16 baseline chip, compare.

``fourbit run`` and `main_job` do the same thing: train ``model`` on ``dataset`` twice with the
same seed (the ``baseline`` recipe and the 4-bit ``recipe``), write both run directories,
simulate the 4-bit trace on ``chip`` and the baseline trace on ``baseline_chip`` (the paper's
comparison, Sun et al. 2020, section 6 / Fig. 6(c)), and write one table (CSV) and one figure
(PNG) into ``out``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from pydantic import Field

from fourbit.analysis.executor import Executor
from fourbit.analysis.jobdir import job_dir
from fourbit.analysis.plots import main_job_figure
from fourbit.analysis.tables import comparison_row, comparison_table
from fourbit.analysis.workloads import check_trainings, nest_train, run_all, trained
from fourbit.hwsim.config import load_chip
from fourbit.hwsim.engine import simulate
from fourbit.models.recipes import get_recipe
from fourbit.models.trainer import TrainConfig
from fourbit.traces.config import PathText, StrictModel
from fourbit.traces.errors import TrainingError
from fourbit.traces.files import atomic_write
from fourbit.traces.io import read

__all__ = ["MainJob", "main_job"]


class MainJob(StrictModel):
    """Parameters of the main job (the built-in default: digits, MLP, int4 vs fp32, fourbit chip
    vs fp16 chip, 20 epochs)."""

    model: str = Field("mlp", description="the model to train")
    dataset: str = Field("digits", description="the data set to train it on")
    data_dir: PathText | None = Field(None, description="where the data set's files are (none: $FOURBIT_DATA_DIR)")
    recipe: str = Field("int4", description="the 4-bit recipe")
    baseline: str = Field("fp32", description="the baseline recipe")
    chip: PathText = Field("fourbit", description="the chip of the 4-bit recipe")
    baseline_chip: PathText = Field("fp16", description="the chip of the baseline recipe")
    train: TrainConfig = Field(default_factory=TrainConfig, description="training hyper-parameters of both recipes")
    out: PathText = Field("fourbit-out", description="output directory")
    workers: int = Field(1, ge=1, description="local worker processes (2: both recipes train at once)")


def main_job(job: MainJob | None = None, *, progress: bool = True, overwrite: bool = False,
             **params) -> pd.DataFrame:
    """Run the main job; returns the comparison table (also written to ``out``).

    ``job`` or its fields as keywords (``main_job(epochs=...)`` is ``train=TrainConfig(epochs=...)``).
    Columns: recipe, chip, test_accuracy_pct, accuracy_delta_vs_fp32_pts (named after the baseline recipe),
    cycles_per_step, time_per_step_us,
    speedup_vs_fp16, energy_per_step_uj, energy_ratio_vs_fp16, datapath_energy_per_step_uj,
    dram_bytes_per_step, utilization (the ratios are against the baseline row; their names
    carry the baseline chip's name, ``fp16`` by default). Files in ``out``: ``main_job.csv``,
    ``main_job.png``, ``sim_<recipe>_<chip>.csv`` (per layer and phase) and the run directories
    in ``runs/`` (`fourbit.analysis.workloads`: the same job again reuses them).

    Raises
    ------
    ConfigError
        Unknown model, data set, recipe or chip; bad hyper-parameters; ``out`` holding another
        job (without ``overwrite``) or not writable. All before any training.
    TrainingError
        A training diverged.
    """
    params = nest_train(job or MainJob(), params)
    job = job.replace(**params) if job is not None and params else job or MainJob(**params)
    pairs = [(job.baseline, job.baseline_chip), (job.recipe, job.chip)]
    chips = {name: load_chip(name) for _, name in pairs}
    for name, _ in pairs:
        get_recipe(name)
    workloads = {r: trained(job.model, job.dataset, r, job.train, Path(job.out), data_dir=job.data_dir)
                 for r, _ in pairs}
    check_trainings(list(workloads.values()))
    identity = job.model_dump(mode="json", exclude={"out", "workers", "data_dir"})
    with job_dir(job.out, "main_job", identity, overwrite=overwrite) as out:
        with Executor(job.workers) as ex:
            _, errors = run_all(list(workloads.values()), ex, progress=progress, desc="training")
        if errors:
            raise TrainingError("; ".join(f"{w.recipe}: {errors[w.path]}" for w in workloads.values()
                                          if w.path in errors))
        rows, reports = [], []
        for recipe, chip_name in pairs:
            trace = read(workloads[recipe].path)
            report = simulate(trace, chips[chip_name])
            with atomic_write(out / f"sim_{recipe}_{chips[chip_name].chip.name}.csv") as tmp:
                report.to_frame().to_csv(tmp, index=False)
            rows.append(comparison_row(recipe, chip_name, trace.meta["final"]["test_accuracy"], report))
            reports.append(report)
        table = comparison_table(rows, baseline=0, baseline_name=job.baseline_chip)
        with atomic_write(out / "main_job.csv") as tmp:
            table.to_csv(tmp, index=False)
        main_job_figure(table, reports, out / "main_job.png")
    return table

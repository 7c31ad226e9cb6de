"""The ablation the paper's argument rests on ([P] sections 3-4, Table 4 and Fig. 4): the FP4
gradient format's log base, single-phase rounding vs Two-Phase Rounding (TPR), and per-layer
GradScale vs one global loss scale, each trained with several seeds.

``fourbit ablation`` and `ablation` train every (variant, seed) pair as a workload of
`fourbit.analysis.workloads` (cached in ``out/runs``: a finished run is read back, not trained
again, so a killed ablation resumes; ``workers`` > 1 trains runs in parallel), then write
``out/ablation.csv`` (one row per variant: mean and spread of the test accuracy over the seeds)
and ``out/ablation_runs.csv`` (one row per run), and the figure ``out/figures/ablation.png``
(and ``.svg``: each variant's accuracy per seed and over the seeds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from fourbit.analysis.executor import Executor
from fourbit.analysis.jobdir import job_dir
from fourbit.analysis.plots import ablation_figure
from fourbit.analysis.workloads import check_trainings, nest_train, run_all, trained
from fourbit.models.recipes import get_recipe
from fourbit.models.trainer import TrainConfig
from fourbit.traces.config import Listed, PathText, StrictModel
from fourbit.traces.errors import TrainingError
from fourbit.traces.files import atomic_write
from fourbit.traces.io import read

__all__ = ["DEFAULT_VARIANTS", "NVFP4_PARTS", "VARIANT_SETS", "Ablation", "ablation"]

DEFAULT_VARIANTS: tuple[tuple[str, str], ...] = (
    ("fp32 (reference)", "fp32"),
    ("radix-2 FP4, single phase", "int4:radix=2,tpr=off"),
    ("radix-4 FP4, single phase", "int4:radix=4,tpr=off"),
    ("radix-4 FP4, TPR (the paper)", "int4"),
    ("radix-4 FP4, TPR, one global loss scale", "int4:grad_scaling=global"),
    ("radix-8 FP4, single phase (no odd phase)", "int4:radix=8,tpr=off"),
    ("radix-16 FP4, TPR", "int4:radix=16"),
)
"""(label, recipe spec): the issue's variants. TPR exists where the radix has an odd phase
(sqrt(radix) a power of two: 4 and 16); radix 2 and 8 are single phase."""

NVFP4_PARTS: tuple[tuple[str, str], ...] = (
    ("bf16 (reference)", "bf16"),
    ("nvfp4 (NVIDIA's recipe)", "nvfp4"),
    ("no Hadamard transform", "nvfp4:rht=0"),
    ("no stochastic rounding", "nvfp4:stochastic=off"),
    ("1-D weight blocks", "nvfp4:weights_2d=off"),
    ("blocks of 32", "nvfp4:block=32"),
    ("E8M0 block scales", "nvfp4:scale=e8m0"),
    ("last layer in NVFP4 too", "nvfp4:bf16_last=0"),
)
"""(label, recipe spec): the NVFP4 recipe (arXiv 2509.25149) with one part changed at a time."""

VARIANT_SETS = {"fp4": DEFAULT_VARIANTS, "nvfp4": NVFP4_PARTS}
"""The named variant sets of ``fourbit ablation --variants``."""


class Ablation(StrictModel):
    """What to train: ``variants`` (label, recipe spec) x ``seeds`` on ``model``/``dataset`` with
    ``train`` (its seed replaced by each of ``seeds``)."""

    model: str = Field("lenet5", description="the model to train")
    dataset: str = Field("mnist", description="the data set to train it on")
    data_dir: PathText | None = Field(None, description="where the data set's files are (none: $FOURBIT_DATA_DIR)")
    variants: Listed(tuple[str, str]) = Field(DEFAULT_VARIANTS, min_length=1,
                                              description="(label, recipe spec) pairs")
    seeds: Listed(Annotated[int, Field(ge=0)]) = Field((0, 1), min_length=1,
                                                      description="training seeds of every variant")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=1),
                               description="training hyper-parameters (the seed is each of seeds)")
    model_params: dict[str, Any] = Field(default_factory=dict, description="parameters of the model builder")
    out: PathText = Field("ablation-out", description="output directory")
    workers: int = Field(1, ge=1, description="local worker processes (runs train in parallel)")
    scheduler: str | None = Field(None, description="a dask.distributed scheduler address, tcp://HOST:PORT")

    @model_validator(mode="after")
    def _no_repeats(self) -> Ablation:
        specs = [spec for _, spec in self.variants]
        for name, values in (("seeds", self.seeds), ("variants", specs)):
            twice = next((v for v in values if values.count(v) > 1), None)
            if twice is not None:  # a repeated run would count twice in the mean and the spread
                raise ValueError(f"{name}: {twice!r} is given twice")
        return self


def _run_row(label: str, spec: str, seed: int, final: dict, wall: float | None) -> dict:
    recipe = get_recipe(spec)
    return {"variant": label, "recipe": spec, "radix": recipe.radix, "tpr": recipe.tpr,
            "grad_scaling": recipe.grad_scaling, "seed": seed,
            "test_accuracy_pct": 100 * final["test_accuracy"], "test_loss": final["test_loss"],
            "skipped_steps": final.get("skipped_steps", 0), "train_seconds": wall}


def ablation(job: Ablation | None = None, *, progress: bool = True, overwrite: bool = False,
             **params) -> pd.DataFrame:
    """Run (or resume) the ablation; returns the per-variant table (also in ``out/ablation.csv``).

    ``job`` or its fields as keywords; training hyper-parameters may be given flat
    (``ablation(epochs=1)`` is ``train=TrainConfig(epochs=1)``).

    Columns: variant, recipe, radix, tpr, grad_scaling, seeds, test_accuracy_pct (mean over the
    seeds), test_accuracy_std (sample standard deviation), min/max accuracy, test_loss (mean),
    skipped_steps (total). ``ablation_runs.csv`` has one row per run, with the wall time of its
    training in this invocation (empty for a run read back; a run resumed from its checkpoint
    counts only the resumed part).

    Raises
    ------
    ConfigError
        Unknown model, data set or recipe, bad parameters, no seeds, ``out`` holding another job
        (without ``overwrite``) or not writable; all checked before any training.
    TrainingError
        A run diverged (the others are finished first and stay cached).
    """
    params = nest_train(job or Ablation(), params)
    job = job.replace(**params) if job is not None and params else job or Ablation(**params)
    for _, spec in job.variants:
        get_recipe(spec)
    pairs = [(label, spec, seed) for label, spec in job.variants for seed in job.seeds]
    workloads = [trained(job.model, job.dataset, spec, job.train.replace(seed=seed), Path(job.out),
                         data_dir=job.data_dir, model_params=job.model_params) for _, spec, seed in pairs]
    check_trainings(workloads)
    identity = job.model_dump(mode="json", exclude={"out", "workers", "scheduler", "data_dir"})
    with job_dir(job.out, "ablation", identity, overwrite=overwrite) as out:
        with Executor(job.workers, job.scheduler) as ex:
            seconds, errors = run_all(workloads, ex, progress=progress, desc="ablation")
        if errors:
            raise TrainingError("; ".join(f"{w.recipe} (seed {w.args['config']['seed']}): {errors[w.path]}"
                                          for w in workloads if w.path in errors))
        runs = pd.DataFrame([_run_row(label, spec, seed, read(w.path).meta["final"], seconds[w.path])
                             for (label, spec, seed), w in zip(pairs, workloads, strict=True)])
        table = _summary(runs)
        for name, df in (("ablation_runs.csv", runs), ("ablation.csv", table)):
            with atomic_write(out / name) as tmp:
                df.to_csv(tmp, index=False)
        ablation_figure(runs, out / "figures")
    return table


def _summary(runs: pd.DataFrame) -> pd.DataFrame:
    keys = ["variant", "recipe", "radix", "tpr", "grad_scaling"]
    g = runs.groupby(keys, sort=False, dropna=False)
    table = g.agg(seeds=("seed", "size"), test_accuracy_pct=("test_accuracy_pct", "mean"),
                  test_accuracy_std=("test_accuracy_pct", lambda s: float(np.std(s, ddof=1)) if len(s) > 1 else np.nan),
                  test_accuracy_min=("test_accuracy_pct", "min"), test_accuracy_max=("test_accuracy_pct", "max"),
                  test_loss=("test_loss", "mean"), skipped_steps=("skipped_steps", "sum")).reset_index()
    table["radix"] = table["radix"].astype("Int64")  # none for recipes without FP4 gradients
    return table

"""The ablation the paper's argument rests on ([P] sections 3-4, Table 4 and Fig. 4): the FP4
gradient format's log base, single-phase rounding vs Two-Phase Rounding (TPR), and per-layer
GradScale vs one global loss scale, each trained with several seeds.

``fourbit ablation`` and `ablation` train every (variant, seed) pair into ``out/runs/<slug>-s<seed>``
(a finished run is read back, not trained again: a killed ablation resumes), then write
``out/ablation.csv`` (one row per variant: mean and spread of the test accuracy over the seeds)
and ``out/ablation_runs.csv`` (one row per run).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fourbit.analysis.run import check_writable, write_csv
from fourbit.models.data import load_dataset
from fourbit.models.recipes import get_recipe
from fourbit.models.trainer import TrainConfig, train
from fourbit.models.zoo import build_model
from fourbit.traces.errors import ConfigError
from fourbit.traces.io import read

__all__ = ["DEFAULT_VARIANTS", "Ablation", "ablation"]

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


@dataclass(frozen=True)
class Ablation:
    """What to train: ``variants`` (label, recipe spec) x ``seeds`` on ``model``/``dataset``."""

    model: str = "lenet5"
    dataset: str = "mnist"
    data_dir: str | None = None
    variants: tuple[tuple[str, str], ...] = DEFAULT_VARIANTS
    seeds: tuple[int, ...] = (0, 1)
    epochs: int = 1
    batch_size: int = 64
    lr: float = 0.1
    out: str = "ablation-out"
    model_params: dict = field(default_factory=dict)


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", spec).strip("-")


def _run_row(label: str, spec: str, seed: int, final: dict, wall: float | None) -> dict:
    recipe = get_recipe(spec)
    return {"variant": label, "recipe": spec, "radix": recipe.radix, "tpr": recipe.tpr,
            "grad_scaling": recipe.grad_scaling, "seed": seed,
            "test_accuracy_pct": 100 * final["test_accuracy"], "test_loss": final["test_loss"],
            "skipped_steps": final.get("skipped_steps", 0), "train_seconds": wall}


def ablation(job: Ablation | None = None, *, progress: bool = True, **params) -> pd.DataFrame:
    """Run (or resume) the ablation; returns the per-variant table (also in ``out/ablation.csv``).

    Columns: variant, recipe, radix, tpr, grad_scaling, seeds, test_accuracy_pct (mean over the
    seeds), test_accuracy_std (sample standard deviation), min/max accuracy, test_loss (mean),
    skipped_steps (total).

    Raises
    ------
    ConfigError
        Unknown model, data set or recipe, bad parameters, no seeds, ``out`` not writable; all
        checked before any training.
    """
    import time

    job = job or Ablation(**params)
    if not job.seeds or not job.variants:
        raise ConfigError("the ablation needs at least one seed and one variant")
    out = check_writable(job.out)
    for _, spec in job.variants:
        get_recipe(spec)
    ds = load_dataset(job.dataset, job.data_dir)
    build_model(job.model, ds.input_shape, ds.n_classes, 0, **job.model_params)
    cfg = TrainConfig(epochs=job.epochs, batch_size=job.batch_size, lr=job.lr)
    rows = []
    pairs = [(label, spec, seed) for label, spec in job.variants for seed in job.seeds]
    finished = {}
    for _, spec, seed in pairs:  # runs already in out must be of this ablation: checked up front
        path = out / "runs" / f"{_slug(spec)}-s{seed}"
        if (path / "meta.json").is_file():
            finished[path] = _check_finished(path, job, ds.name, spec, seed)
    for label, spec, seed in tqdm(pairs, desc="ablation", unit="run", disable=not progress):
        path = out / "runs" / f"{_slug(spec)}-s{seed}"
        wall = None
        if path in finished:
            final = finished[path]
        else:  # a run killed mid-way continues from its last epoch checkpoint
            t0 = time.perf_counter()
            run = train(job.model, ds, spec, config=cfg, seed=seed, out=path, progress=False,
                        model_params=job.model_params, resume=(path / "checkpoint" / "state.json").is_file())
            final, wall = run.final, time.perf_counter() - t0
        rows.append(_run_row(label, spec, seed, final, wall))
    runs = pd.DataFrame(rows)
    write_csv(runs, out / "ablation_runs.csv")
    table = _summary(runs)
    write_csv(table, out / "ablation.csv")
    return table


def _check_finished(path, job: Ablation, dataset: str, spec: str, seed: int) -> dict:
    """The final metrics of a finished run in ``path``; ConfigError if it is another run's."""
    meta = read(path).meta
    want = {"model": job.model, "dataset": dataset, "recipe": get_recipe(spec).name, "epochs": job.epochs,
            "batch_size": job.batch_size, "lr": job.lr, "seed": seed}
    have = {"model": meta["model"], "dataset": meta["dataset"], "recipe": meta["recipe"]["name"],
            **{k: meta["train_config"][k] for k in ("epochs", "batch_size", "lr", "seed")}}
    if have != want:
        diff = next(k for k in want if have[k] != want[k])
        raise ConfigError(f"{path} holds a run with {diff} = {have[diff]!r}, not {want[diff]!r}; use another --out")
    return meta["final"]


def _summary(runs: pd.DataFrame) -> pd.DataFrame:
    keys = ["variant", "recipe", "radix", "tpr", "grad_scaling"]
    g = runs.groupby(keys, sort=False, dropna=False)
    table = g.agg(seeds=("seed", "size"), test_accuracy_pct=("test_accuracy_pct", "mean"),
                  test_accuracy_std=("test_accuracy_pct", lambda s: float(np.std(s, ddof=1)) if len(s) > 1 else np.nan),
                  test_accuracy_min=("test_accuracy_pct", "min"), test_accuracy_max=("test_accuracy_pct", "max"),
                  test_loss=("test_loss", "mean"), skipped_steps=("skipped_steps", "sum")).reset_index()
    table["radix"] = table["radix"].astype("Int64")  # none for recipes without FP4 gradients
    return table

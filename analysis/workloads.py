"""Workloads: where each recipe's trace comes from, for the main job, sweeps, comparisons and the
ablation alike.

A `Source` names the workload of a job: an existing trace directory (a training run or a
SCALE-Sim import), or a model to train on a data set. For each recipe a job needs, the source
gives one `Workload`, of one of three kinds:

``given``   the trace directory itself, when the recipe computes what the trace was made with;
``import``  the trace's SCALE-Sim topology imported again with the recipe's formats (shapes
            only), cached in ``out/traces/<recipe>-<hash>``;
``train``   the model trained with the recipe, once, cached in ``out/runs/<recipe>-s<seed>-<hash>``
            (the hash covers model, data set, hyper-parameters, model parameters and recipe).

`materialize` makes a workload's trace and is idempotent: a finished cache entry is read back
(after checking it is this workload's), a killed training continues from its epoch checkpoint.
`run_all` materializes many through an `fourbit.analysis.executor.Executor` (in parallel with
``workers`` > 1).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from tqdm.auto import tqdm

from fourbit.models.recipes import get_recipe
from fourbit.models.trainer import TrainConfig
from fourbit.traces.config import PathText, StrictModel
from fourbit.traces.errors import ConfigError
from fourbit.traces.io import read

__all__ = ["Source", "Workload", "check_trainings", "digest", "materialize", "nest_train", "run_all", "trained"]


def digest(obj: Any) -> str:
    """A short stable hash of a JSON-able object (16 hex digits of its sha256)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def slug(text: str) -> str:
    """``int4:radix=2,tpr=off`` -> ``int4-radix-2-tpr-off`` (a file name)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")


@dataclass(frozen=True)
class Workload:
    """How to get the trace of one recipe: ``kind`` given | import | train, the directory the
    trace is (or will be) in, and the arguments of the import or the training (JSON-able)."""

    kind: Literal["given", "import", "train"]
    recipe: str
    path: str
    args: dict = field(default_factory=dict)

    @property
    def done(self) -> bool:
        """Whether the trace exists (a given trace, or a finished cache entry)."""
        return self.kind == "given" or (Path(self.path) / "meta.json").is_file()


def trained(model: str, dataset: str, recipe: str, config: TrainConfig, out: Path, *,
            data_dir: str | None = None, model_params: dict | None = None) -> Workload:
    """The workload of ``model`` trained on ``dataset`` with ``recipe`` and ``config``, cached
    in ``out/runs`` (the data directory is where the files are, not what they are: not hashed)."""
    args = {"model": model, "dataset": dataset, "config": config.model_dump(), "model_params": model_params or {}}
    name = f"{slug(recipe)}-s{config.seed}-{digest({**args, 'recipe': recipe})[:10]}"
    return Workload("train", recipe, str(Path(out) / "runs" / name), {**args, "data_dir": data_dir})


def _imported(topology: str, batch: int, batchnorm: bool, recipe: str, out: Path) -> Workload:
    args = {"topology": topology, "batch": batch, "batchnorm": batchnorm}
    name = f"{slug(recipe)}-{digest({**args, 'recipe': recipe})[:10]}"
    return Workload("import", recipe, str(Path(out) / "traces" / name), args)


def _numerics(recipe: str) -> dict:
    """What a recipe computes, without its name (``int4`` and ``int4:radix=4`` are the same)."""
    d = get_recipe(recipe).describe()
    d.pop("name")
    return d


class Source(StrictModel):
    """Where a job's traces come from: an existing ``trace`` directory (a run or an import), or a
    ``model`` trained on ``dataset`` with ``train`` for every distinct recipe (exactly one of the
    two). ``data_dir`` is where the data set's files are (default ``$FOURBIT_DATA_DIR``)."""

    PATH = "source"
    trace: PathText | None = Field(None, description="a run or imported trace directory")
    model: str | None = Field(None, description="the model to train for every distinct recipe")
    dataset: str | None = Field(None, description="the data set to train it on")
    data_dir: PathText | None = Field(None, description="where the data set's files are (none: $FOURBIT_DATA_DIR)")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=1),
                               description="training hyper-parameters of every recipe")
    model_params: dict[str, Any] = Field(default_factory=dict, description="parameters of the model builder")

    @model_validator(mode="after")
    def _one_source(self) -> Source:
        if self.trace is not None and self.model is not None:
            raise ValueError("one source is needed: a trace directory (--trace) or a model (--model), not both")
        if self.trace is None and (self.model is None or self.dataset is None):
            raise ValueError("one source is needed: a trace directory (--trace), or a model and a data set "
                             "(--model with --dataset)")
        if self.trace is not None and self.dataset is not None:
            raise ValueError("--dataset goes with --model; a trace directory (--trace) names its own data set")
        given = sorted({"train", "model_params"} & self.model_fields_set)
        if self.trace is not None and given:  # a trace's recipes are retrained as the trace was trained
            raise ValueError(f"{given[0]} applies to a model source (--model); the recipes of a trace directory "
                             "(--trace) are retrained with the trace's own hyper-parameters")
        return self

    def identity(self) -> dict:
        """What defines the source's results, for a job's manifest: the trace directory (as an
        absolute path) or the training; not where the data files are."""
        if self.trace is not None:
            return {"trace": str(Path(self.trace).resolve())}
        return self.model_dump(mode="json", exclude={"data_dir", "trace"})

    def key(self) -> str:
        """What identifies the workload (a point of another trace or training is another point)."""
        if self.trace is not None:
            return digest({k: v for k, v in read(self.trace).meta.items() if k != "package_version"})
        return digest({"model": self.model, "dataset": self.dataset, "train": self.train.model_dump(),
                       "model_params": self.model_params})

    def base_recipe(self) -> str | None:
        """The recipe the given trace was made with (None: a training source, or not recorded)."""
        if self.trace is None:
            return None
        recipe = read(self.trace).meta.get("recipe")
        return recipe.get("name") if isinstance(recipe, dict) else None

    def workloads(self, recipes: list[str], out: str | Path) -> dict[str, Workload]:
        """One workload per recipe; caches under ``out``.

        Raises ConfigError when a recipe differs from a given trace's and the trace says neither
        how it was imported nor how it was trained."""
        out = Path(out)
        if self.trace is None:
            return {r: trained(self.model, self.dataset, r, self.train, out, data_dir=self.data_dir,
                               model_params=self.model_params) for r in recipes}
        meta = read(self.trace).meta
        own = self.base_recipe()
        jobs = {}
        for r in recipes:
            if own is not None and _numerics(r) == _numerics(own):
                jobs[r] = Workload("given", r, str(Path(self.trace).resolve()))
            elif (meta.get("source") or {}).get("kind") == "scalesim":  # null: not imported
                s = meta["source"]
                jobs[r] = _imported(s["topology"], meta["batch_size"], s.get("batchnorm", True), r, out)
            elif meta.get("model") and meta.get("dataset"):
                config = TrainConfig.parse(meta.get("train_config", {}), f"{self.trace}: meta.json train_config")
                jobs[r] = trained(meta["model"], meta["dataset"], r, config, out, data_dir=self.data_dir,
                                  model_params=meta.get("model_params") or {})
            else:
                raise ConfigError(f"--trace {self.trace}: recipe {r!r} differs from the trace's and the trace "
                                  "says neither how it was imported nor how it was trained")
        return jobs


def nest_train(job: StrictModel, params: dict) -> dict:
    """Keyword fields of a job with a ``train`` field (`TrainConfig`), with training
    hyper-parameters given flat (``epochs=3``) moved into ``train``, starting from ``job``'s own
    (a job's default trains for its own number of epochs). ``params`` is not changed."""
    params = dict(params)
    hyper = {k: params.pop(k) for k in list(params) if k in TrainConfig.model_fields}
    if hyper:
        params["train"] = params.get("train", job.train).replace(**hyper)
    return params


def check_trainings(workloads: list[Workload]) -> None:
    """Fail before any work when a training is wrong: an unknown model or data set, a model that
    cannot take the data, bad model parameters, a batch larger than the training set."""
    from fourbit.models.data import load_dataset
    from fourbit.models.trainer import check_model_data
    from fourbit.models.zoo import build_model

    seen = set()
    for w in workloads:
        if w.kind != "train":
            continue
        a = w.args
        key = digest([a["model"], a["dataset"], a["data_dir"], a["model_params"], a["config"]["batch_size"]])
        if key in seen:
            continue
        seen.add(key)
        ds = load_dataset(a["dataset"], a["data_dir"])
        check_model_data(a["model"], ds)
        build_model(a["model"], ds.input_shape, ds.n_classes, 0, **a["model_params"])
        if len(ds.x_train) < a["config"]["batch_size"]:
            raise ConfigError(f"batch_size {a['config']['batch_size']} is larger than the training set "
                              f"({len(ds.x_train)})")


def _check_finished(w: Workload) -> None:
    """ConfigError when the finished run at ``w.path`` is not ``w``'s (another model, data set,
    recipe, hyper-parameters or model parameters)."""
    meta = read(w.path).meta
    a = w.args
    want = {"model": a["model"], "dataset": a["dataset"], "recipe": get_recipe(w.recipe).name,
            "train_config": a["config"], "model_params": a["model_params"]}
    have = {"model": meta.get("model"), "dataset": meta.get("dataset"),
            "recipe": (meta.get("recipe") or {}).get("name"), "train_config": meta.get("train_config"),
            "model_params": meta.get("model_params") or {}}
    for k in want:
        if have[k] != want[k]:
            raise ConfigError(f"{w.path} holds a run with {k} = {have[k]!r}, not {want[k]!r}; use another --out")


def materialize(w: Workload) -> float | None:
    """Make ``w``'s trace (in a worker; idempotent). Returns the training's wall time in seconds,
    None when nothing was trained (a given trace, an import, a finished run read back)."""
    path = Path(w.path)
    if w.kind == "given":
        return None
    if w.done:
        if w.kind == "train":
            _check_finished(w)
        return None
    recipe = get_recipe(w.recipe)
    a = w.args
    if w.kind == "import":
        from fourbit.traces.scalesim import import_topology

        import_topology(a["topology"], a["batch"], recipe.describe(), batchnorm=a["batchnorm"]).write(path)
        return None
    from fourbit.models.trainer import train

    t0 = time.perf_counter()
    train(a["model"], a["dataset"], recipe, config=TrainConfig.parse(a["config"]), data_dir=a["data_dir"],
          out=path, progress=False, model_params=a["model_params"],
          resume=(path / "checkpoint" / "state.json").is_file())
    return time.perf_counter() - t0


def run_all(workloads: list[Workload], executor, *, progress: bool = True,
            desc: str = "traces") -> tuple[dict[str, float | None], dict[str, str]]:
    """Materialize the workloads that are not done, through ``executor``.

    Returns ({path: training seconds or None}, {path: error}) over all ``workloads``: a failed
    workload's error is its message (the others still run)."""
    seconds: dict[str, float | None] = {w.path: None for w in workloads}
    errors: dict[str, str] = {}
    todo = list({w.path: w for w in workloads if not w.done}.values())
    for w in workloads:  # a finished run of another workload is refused before anything runs
        if w.done and w.kind == "train":
            _check_finished(w)

    def done(path, result, error):
        if error is None:
            seconds[path] = result
        else:
            errors[path] = error

    if todo:
        with tqdm(total=len(todo), desc=desc, unit="run", disable=not progress) as bar:
            executor.map(materialize, [(w.path, (w,)) for w in todo], done, bar)
    return seconds, errors

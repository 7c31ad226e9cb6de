"""Design-space sweeps: a grid over chip fields and recipe parameters, resumable, local or on Dask.

``sweep(spec) -> DataFrame`` and ``fourbit sweep`` expand the grid (the product of its axes; one
axis may set several fields together), check every point before any work starts, then

1. get one trace per distinct recipe: the given trace; a SCALE-Sim import re-imported with the
   point's recipe (shapes only, no accuracy); or a training run, trained once per distinct
   (model, dataset, recipe, seed, hyper-parameters) and cached in ``out/runs/<hash>`` (a killed
   training resumes from its epoch checkpoint);
2. simulate every point on its chip, writing each finished point atomically to
   ``out/points/<id>.parquet`` (its parameters, status and report totals) with its per-layer
   table next to it; a rerun skips finished points and retries failed ones;
3. write ``out/results.parquet`` and ``out/results.csv``: one row per point in grid order, one
   column per swept field (named as given), then the resolved recipe (name, radix, TPR,
   gradient scaling), the chip's name, status and error, test accuracy where a recipe was
   trained, and the per-step totals of `fourbit.hwsim.report.SimReport.totals`.

Field names: a `fourbit.hwsim.ChipConfig` dotted field (``array.rows``, ``array.dataflow``,
``log_path.radix``, ``sram.ifmap_bytes`` ...); ``chip`` (a preset name or TOML path, the base
the other chip fields modify); ``recipe`` (a recipe spec, e.g. ``int8``); ``recipe.<param>``
(``radix``, ``exponent_bits``, ``tpr``, ``grad_scaling``, ``tie``, ``bwd_acc``, e.g.
``fp16/g4/c32`` for the accumulator chunk). The log base is one thing in hardware and numerics:
``log_path.radix`` and ``recipe.radix`` (likewise ``exponent_bits``) follow each other when only
one is swept, and a radix without an odd phase (2, 8) runs single phase even where ``recipe.tpr``
is on (the ``tpr`` column says which ran). A ``recipe`` value with several parameters separates
them with ``+`` (``int4:radix=16+grad_scaling=global``), since commas separate grid values.

Execution: ``workers=1`` runs the points in this process; ``workers > 1`` starts a
`dask.distributed.LocalCluster` of that many single-threaded worker processes; ``scheduler``
connects to a running cluster (the output directory must then be on a filesystem the workers
share). Each task is the same function in every case.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import tomllib
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fourbit.analysis.run import check_writable
from fourbit.hwsim.config import load_chip
from fourbit.models.recipes import Recipe, get_recipe, parse_recipe
from fourbit.traces.errors import ConfigError, FourbitError
from fourbit.traces.io import Trace, read

__all__ = ["Axis", "Source", "SweepSpec", "load_spec", "parse_grid", "sweep"]

RECIPE_PARAMS = ("radix", "exponent_bits", "tpr", "grad_scaling", "tie", "bwd_acc")
LINKED = ("radix", "exponent_bits")  # log_path.<x> <-> recipe.<x>
TOTALS = ["total_cycles", "compute_cycles", "stall_cycles", "memory_stall_cycles", "scaling_stall_cycles",
          "time_s", "samples_per_s", "macs", "utilization", "energy_pj", "datapath_energy_pj", "tops_per_w",
          "dram_read_bytes", "dram_write_bytes", "sram_read_bytes", "sram_write_bytes"]


# ---------------------------------------------------------------------------------------------
# the spec
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Axis:
    """One grid axis: every value sets all ``fields`` (a tuple value sets them one each)."""

    fields: tuple[str, ...]
    values: tuple

    @property
    def name(self) -> str:
        return ",".join(self.fields)


@dataclass(frozen=True)
class Source:
    """Where the traces come from: an existing ``trace`` directory (a run or an import), or a
    ``model`` trained on ``dataset`` (with these hyper-parameters) for every distinct recipe."""

    trace: str | None = None
    model: str | None = None
    dataset: str | None = None
    data_dir: str | None = None
    epochs: int = 1
    batch_size: int = 64
    lr: float = 0.1
    seed: int = 0
    model_params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SweepSpec:
    """A sweep: ``source``, the base ``chip`` and ``recipe`` (None: the trace's own), the ``grid``
    axes, the output directory and where to run (``workers`` processes or a ``scheduler``)."""

    source: Source
    grid: tuple[Axis, ...]
    out: str = "sweep-out"
    chip: str = "fourbit"
    recipe: str | None = None
    workers: int = 1
    scheduler: str | None = None
    input_grad: bool = False
    extrapolate: bool = True  # steady-state extrapolation of long GEMMs (`fourbit.hwsim.simulate`)
    table_name: str = "results"  # out/<table_name>.parquet and .csv


def _typed(text: str):
    """A grid value from the command line or TOML: bool, int, float or string."""
    if not isinstance(text, str):
        return text
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(low)
        except ValueError:
            pass
    return text.strip()


def parse_grid(items: list[str]) -> tuple[Axis, ...]:
    """``["array.rows,array.cols=8,16,32", "log_path.radix=2,4"]`` -> axes.

    Raises ConfigError for an item without ``=``, an empty field name or an empty value list."""
    axes = []
    for item in items:
        names, eq, values = item.partition("=")
        fields = tuple(f.strip() for f in names.split(","))
        if not eq or not all(fields):
            raise ConfigError(f"--grid {item!r}: expected FIELD[,FIELD...]=V1,V2,...")
        parts = [v.strip() for v in values.split(",")]
        if not any(parts):
            raise ConfigError(f"--grid {item!r}: the axis {','.join(fields)} has no values")
        if not all(parts):
            raise ConfigError(f"--grid {item!r}: an empty value between commas")
        vals = tuple(_typed(v) for v in parts)
        axes.append(Axis(fields, vals))
    return tuple(axes)


def load_spec(path: str | Path, **overrides) -> SweepSpec:
    """A sweep spec from TOML: ``[source]`` (trace, or model/dataset/data_dir/epochs/batch_size/
    lr/seed), optional ``chip``/``recipe``/``out``/``workers``/``scheduler`` at the top level,
    and ``[[grid]]`` tables with ``fields`` (a list or one name) and ``values``.

    Raises ConfigError naming the key for unknown keys or bad types."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"sweep spec {path}: {exc}") from exc
    known = {"source", "grid", "chip", "recipe", "out", "workers", "scheduler", "input_grad", "extrapolate"}
    for key in data:
        if key not in known:
            raise ConfigError(f"sweep spec {path}: unknown key {key!r}; known keys: {', '.join(sorted(known))}")
    types = {"chip": str, "recipe": str, "out": str, "workers": int, "scheduler": str, "input_grad": bool,
             "extrapolate": bool}
    for key, typ in types.items():
        if key in data and (not isinstance(data[key], typ) or (typ is int and isinstance(data[key], bool))):
            raise ConfigError(f"sweep spec {path}: {key} must be a {typ.__name__}, got {data[key]!r}")
    src = data.get("source", {})
    if not isinstance(src, dict):
        raise ConfigError(f"sweep spec {path}: [source] must be a table")
    src_types = {"trace": str, "model": str, "dataset": str, "data_dir": str, "epochs": int, "batch_size": int,
                 "lr": (int, float), "seed": int, "model_params": dict}
    for key, value in src.items():
        if key not in src_types:
            raise ConfigError(f"sweep spec {path}: unknown key source.{key}; known: {', '.join(src_types)}")
        if not isinstance(value, src_types[key]) or isinstance(value, bool):
            raise ConfigError(f"sweep spec {path}: source.{key} has the wrong type ({value!r})")
    source = Source(**src)
    grid = data.get("grid", [])
    if not isinstance(grid, list):
        raise ConfigError(f"sweep spec {path}: grid must be an array of tables ([[grid]])")
    axes = []
    for i, ax in enumerate(grid):
        if not isinstance(ax, dict) or set(ax) != {"fields", "values"}:
            raise ConfigError(f"sweep spec {path}: grid[{i}] needs exactly the keys fields and values")
        fields = (ax["fields"],) if isinstance(ax["fields"], str) else ax["fields"]
        if not isinstance(fields, list | tuple) or not fields or not all(isinstance(f, str) and f for f in fields):
            raise ConfigError(f"sweep spec {path}: grid[{i}].fields must be a field name or a non-empty list of them")
        if not isinstance(ax["values"], list) or not ax["values"]:
            raise ConfigError(f"sweep spec {path}: grid[{i}].values must be a non-empty list")
        axes.append(Axis(tuple(fields), tuple(tuple(v) if isinstance(v, list) else v for v in ax["values"])))
    top = {k: data[k] for k in types if k in data}
    return SweepSpec(source=source, grid=tuple(axes), **{**top, **overrides})


# ---------------------------------------------------------------------------------------------
# points
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Point:
    """One grid point: the swept values, and what they resolve to."""

    index: int
    values: dict  # swept field -> value, as given
    chip_name: str
    chip_overrides: dict
    recipe: str  # the resolved recipe spec
    point_id: str
    group: str = ""  # points with the same timing-relevant chip fields (run on one worker)


def _points(spec: SweepSpec, base_recipe: str, source_key: str = "") -> list[Point]:
    """Expand and resolve the grid; every error names the field. ``source_key`` identifies the
    workload (a point of another trace or training is another point)."""
    if not spec.grid:
        raise ConfigError("the grid is empty: give at least one --grid FIELD=V1,V2,...")
    for ax in spec.grid:
        if not ax.values:
            raise ConfigError(f"grid axis {ax.name}: no values")
        for v in ax.values:
            if isinstance(v, tuple) and len(v) != len(ax.fields):
                raise ConfigError(f"grid axis {ax.name}: value {v!r} has {len(v)} parts for {len(ax.fields)} fields")
    names = [f for ax in spec.grid for f in ax.fields]
    dup = next((f for f in names if names.count(f) > 1), None)
    if dup:
        raise ConfigError(f"grid field {dup!r} appears on two axes")
    points = []
    for index, combo in enumerate(itertools.product(*(ax.values for ax in spec.grid))):
        values = {}
        for ax, v in zip(spec.grid, combo, strict=True):
            parts = v if isinstance(v, tuple) else (v,) * len(ax.fields)
            values.update(zip(ax.fields, parts, strict=True))
        points.append(_resolve(spec, base_recipe, index, values, source_key))
    return points


def _resolve(spec: SweepSpec, base_recipe: str, index: int, values: dict, source_key: str = "") -> Point:
    chip_name = str(values.get("chip", spec.chip))
    recipe_name, params = parse_recipe(str(values.get("recipe", base_recipe)))
    chip_over = {}
    for f, v in values.items():
        if f in ("chip", "recipe"):
            continue
        if f.startswith("recipe."):
            key = f[7:]
            if key not in RECIPE_PARAMS:
                raise ConfigError(f"unknown grid field {f!r}; recipe parameters: {', '.join(RECIPE_PARAMS)}")
            params[key] = v
        else:
            chip_over[f] = v
    for key in LINKED:  # one log base for the datapath and the numerics
        chip_f = f"log_path.{key}"
        if isinstance(params.get(key), str) and params[key].strip().isdigit():
            params[key] = int(params[key])  # as on the command line (a TOML string "8")
        if chip_f in chip_over and key in params and str(chip_over[chip_f]) != str(params[key]):
            raise ConfigError(f"grid point {index}: {chip_f} = {chip_over[chip_f]} and recipe.{key} = {params[key]} "
                              "differ; they are one setting (sweep either)")
        if chip_f in chip_over and key not in params and _has_param(recipe_name, key):
            params[key] = chip_over[chip_f]
        elif key in params and chip_f not in chip_over:
            chip_over[chip_f] = params[key]
    radix = params.get("radix")
    if radix in (2, 8) and _has_param(recipe_name, "tpr"):
        params["tpr"] = False  # no odd phase: single-phase rounding (the tpr column says so)
    spec_text = recipe_name + (":" + ",".join(f"{k}={_text(v)}" for k, v in params.items()) if params else "")
    where = f"grid point {index} ({', '.join(f'{k}={v}' for k, v in values.items())})"
    try:
        get_recipe(spec_text)  # checks the recipe parameters
        chip = load_chip(chip_name, chip_over)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    timing = chip.to_dict()
    for section in ("log_path", "energy"):  # energy and numerics only: the same GEMM timings
        timing.pop(section, None)
    timing["chip"] = {"cores": chip.chip.cores}
    pid = _digest({"values": values, "chip": chip_name, "over": chip_over, "recipe": spec_text,
                   "source": source_key, "input_grad": spec.input_grad,
                   "extrapolate": spec.extrapolate})
    return Point(index, values, chip_name, chip_over, spec_text, pid, _digest(timing))


def _has_param(recipe_name: str, key: str) -> bool:
    import inspect

    from fourbit.models.recipes import RECIPES

    return recipe_name in RECIPES and key in inspect.signature(RECIPES[recipe_name]).parameters


def _text(v) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    return str(v)


# ---------------------------------------------------------------------------------------------
# traces: given, re-imported, or trained once per distinct recipe
# ---------------------------------------------------------------------------------------------
def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class _TraceJob:
    """How to get the trace of one recipe: ``kind`` given | import | train."""

    kind: str
    recipe: str
    path: str  # where the trace is (given) or will be written
    args: dict


def _trace_jobs(spec: SweepSpec, recipes: list[str], out: Path) -> tuple[dict[str, _TraceJob], str]:
    """One job per distinct recipe, and the base recipe; checks the source."""
    src = spec.source
    if src.trace is not None:
        meta = read(src.trace).meta
        own = meta.get("recipe", {}).get("name") if isinstance(meta.get("recipe"), dict) else None
        base = spec.recipe or own or "int4"
        jobs = {}
        for r in recipes:
            if own is not None and _numerics(r) == _numerics(own):
                jobs[r] = _TraceJob("given", r, str(Path(src.trace).resolve()), {})
            elif meta.get("source", {}).get("kind") == "scalesim":
                s = meta["source"]
                args = {"topology": s["topology"], "batch": meta["batch_size"], "batchnorm": s.get("batchnorm", True)}
                jobs[r] = _TraceJob("import", r, str(out / "traces" / _digest({**args, "recipe": r})), args)
            elif meta.get("model") and meta.get("dataset"):
                tc = meta.get("train_config", {})
                args = {"model": meta["model"], "dataset": meta["dataset"], "data_dir": src.data_dir,
                        "config": {k: tc[k] for k in ("epochs", "batch_size", "lr", "seed") if k in tc},
                        "model_params": meta.get("model_params") or {}}
                jobs[r] = _train_job(r, args, out)
            else:
                raise ConfigError(f"--trace {src.trace}: recipe {r!r} differs from the trace's and the trace "
                                  "says neither how it was imported nor how it was trained")
        return jobs, base
    base = spec.recipe or "int4"
    args = {"model": src.model, "dataset": src.dataset, "data_dir": src.data_dir,
            "config": {"epochs": src.epochs, "batch_size": src.batch_size, "lr": src.lr, "seed": src.seed},
            "model_params": dict(src.model_params)}
    return {r: _train_job(r, args, out) for r in recipes}, base


def _numerics(recipe: str) -> dict:
    """What a recipe computes, without its name (``int4`` and ``int4:radix=4`` are the same)."""
    d = get_recipe(recipe).describe()
    d.pop("name")
    return d


def _train_job(recipe: str, args: dict, out: Path) -> _TraceJob:
    key = {k: v for k, v in args.items() if k != "data_dir"}
    return _TraceJob("train", recipe, str(out / "runs" / _digest({**key, "recipe": recipe})), args)


def make_trace(job: _TraceJob) -> str:
    """Run one trace job (in a worker); returns the trace directory. Idempotent."""
    path = Path(job.path)
    if job.kind == "given" or (path / "meta.json").is_file():
        return job.path
    recipe = get_recipe(job.recipe)
    if job.kind == "import":
        from fourbit.traces.scalesim import import_topology

        a = job.args
        import_topology(a["topology"], a["batch"], recipe.describe(), batchnorm=a["batchnorm"]).write(path)
        return job.path
    from fourbit.models.trainer import TrainConfig, train

    a = job.args
    train(a["model"], a["dataset"], recipe, config=TrainConfig(**a["config"]), data_dir=a["data_dir"],
          out=path, progress=False, model_params=a["model_params"], resume=(path / "checkpoint").is_dir())
    return job.path


@lru_cache(maxsize=8)
def _load(path: str) -> Trace:
    return read(path)


# ---------------------------------------------------------------------------------------------
# running points
# ---------------------------------------------------------------------------------------------
def run_point(point: Point, trace_path: str, input_grad: bool = False,
              extrapolate: bool = True) -> tuple[dict, pd.DataFrame]:
    """Simulate one point (in a worker): (its row, its per-layer table); ``extrapolate`` as in
    `fourbit.hwsim.simulate`."""
    from fourbit.hwsim.engine import simulate

    trace = _load(trace_path)
    chip = load_chip(point.chip_name, point.chip_overrides)
    report = simulate(trace, chip, input_grad=input_grad, extrapolate=extrapolate)
    totals = report.totals()
    row = {k: float(totals[k]) for k in TOTALS}
    for k in totals.index:
        if k.startswith("energy_") and k.endswith("_pj") and k not in row:
            row[k] = float(totals[k])
    row["chip_name"] = chip.chip.name
    row["array"] = f"{chip.array.rows}x{chip.array.cols}"
    row["dataflow"] = chip.array.dataflow
    final = trace.meta.get("final") or {}
    row["test_accuracy_pct"] = 100 * final["test_accuracy"] if "test_accuracy" in final else np.nan
    return row, report.to_frame()


def _recipe_columns(r: Recipe) -> dict:
    return {"recipe_name": r.name, "radix": r.radix, "tpr": r.tpr, "grad_scaling": r.grad_scaling}


def _write_point(points_dir: Path, point: Point, row: dict | None, layers: pd.DataFrame | None,
                 error: str | None) -> None:
    """Atomically write one point's file (its layers first: the point file marks completion)."""
    record = {"point_index": point.index, "point_id": point.point_id,
              **{f"param:{k}": _text(v) for k, v in point.values.items()},
              **_recipe_columns(get_recipe(point.recipe)),
              "status": "ok" if error is None else "error", "error": error or ""}
    record.update(row or {})
    if layers is not None:
        _atomic_parquet(layers, points_dir / f"{point.point_id}.layers.parquet")
    _atomic_parquet(pd.DataFrame([record]), points_dir / f"{point.point_id}.parquet")


def _atomic_parquet(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _done(points_dir: Path, point: Point) -> bool:
    path = points_dir / f"{point.point_id}.parquet"
    if not path.is_file():
        return False
    try:
        return pd.read_parquet(path, columns=["status"]).status.iloc[0] == "ok"
    except (OSError, ValueError, KeyError):  # a damaged file: run the point again
        return False


class _Executor:
    """Runs tasks here (one worker) or on Dask (a LocalCluster or a scheduler's cluster); calls
    ``done(key, result, error)`` as each finishes. Exceptions of a task are its error; a
    KeyboardInterrupt stops everything."""

    def __init__(self, workers: int, scheduler: str | None) -> None:
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        self.workers, self.scheduler = workers, scheduler
        self.client = None

    def __enter__(self) -> _Executor:
        if self.scheduler or self.workers > 1:
            from dask.distributed import Client, LocalCluster

            if self.scheduler:
                self.client = Client(self.scheduler, timeout="20s")
            else:
                cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None, host="127.0.0.1")
                self.client = Client(cluster)
        return self

    def __exit__(self, *exc) -> None:
        if self.client is not None:
            cluster = self.client.cluster
            self.client.close()
            if cluster is not None and not self.scheduler:
                cluster.close()

    def map(self, fn: Callable, tasks: list[tuple], done: Callable, bar: tqdm,
            groups: list[str] | None = None) -> None:
        """Run ``fn(*args)`` for each (key, args) of ``tasks``. On Dask, tasks of one group go to
        the same worker (its GEMM timing cache then serves the whole group)."""
        if self.client is None:
            for key, args in tasks:
                try:
                    result, error = fn(*args), None
                except FourbitError as exc:
                    result, error = None, f"{type(exc).__name__}: {exc}"
                except Exception as exc:  # noqa: BLE001 (one point's bug must not stop the sweep)
                    result, error = None, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"
                done(key, result, error)
                bar.update(1)
            return
        from dask.distributed import as_completed

        workers = sorted(self.client.scheduler_info()["workers"])
        home: dict[str, str] = {}
        futures = {}
        for i, (key, args) in enumerate(tasks):
            group = groups[i] if groups else key
            where = home.setdefault(group, workers[len(home) % len(workers)])
            fut = self.client.submit(fn, *args, pure=False, key=f"fourbit-{key}-{os.urandom(4).hex()}",
                                     workers=[where], allow_other_workers=True)
            futures[fut] = key
        for fut in as_completed(futures):
            key = futures[fut]
            try:
                result, error = fut.result(), None
            except Exception as exc:  # noqa: BLE001
                result, error = None, f"{type(exc).__name__}: {exc}"
            done(key, result, error)
            bar.update(1)


def sweep(spec: SweepSpec | None = None, *, progress: bool = True, **params) -> pd.DataFrame:
    """Run (or resume) a sweep; returns the results table (also ``out/results.parquet|csv``).

    Raises
    ------
    ConfigError
        Before any work: an empty grid, an unknown field, a value out of range (named with the
        grid point), a bad source, ``out`` not writable, workers < 1.
    """
    spec = spec or SweepSpec(**params)
    if spec.workers < 1:
        raise ConfigError(f"workers must be >= 1, got {spec.workers}")
    src = spec.source
    if (src.trace is None) == (src.model is None) or (src.model is None) != (src.dataset is None):
        raise ConfigError("one source is needed: --trace RUN_DIR, or --model M with --dataset D (not both)")
    base, given = spec.recipe, None
    if src.trace is not None:
        given = read(src.trace)
        if base is None and isinstance(given.meta.get("recipe"), dict):
            base = given.meta["recipe"].get("name")
        source_key = _digest({k: v for k, v in given.meta.items() if k != "package_version"})
    else:
        source_key = _digest({"model": src.model, "dataset": src.dataset, "epochs": src.epochs,
                              "batch_size": src.batch_size, "lr": src.lr, "seed": src.seed,
                              "model_params": src.model_params})
    base = base or "int4"
    get_recipe(base)  # the base chip and recipe themselves, before any grid point
    load_chip(spec.chip)
    points = _points(spec, base, source_key)
    recipes = list(dict.fromkeys(p.recipe for p in points))
    jobs, _ = _trace_jobs(spec, recipes, Path(spec.out))
    if any(j.kind == "train" for j in jobs.values()):
        _check_training(spec, jobs)
    if given is not None:
        _check_mapping(given, points, spec.input_grad)
    out = check_writable(spec.out)  # everything checked: the first write
    points_dir = out / "points"
    points_dir.mkdir(exist_ok=True)
    todo = [p for p in points if not _done(points_dir, p)]
    needed = {p.recipe for p in todo}
    trace_tasks = [(r, (jobs[r],)) for r in recipes if r in needed and jobs[r].kind != "given"
                   and not (Path(jobs[r].path) / "meta.json").is_file()]
    failed_recipes: dict[str, str] = {}

    def trace_done(recipe, result, error):
        if error is not None:
            failed_recipes[recipe] = error

    def point_done(pid, result, error):
        point = by_id[pid]
        if error is None:
            _write_point(points_dir, point, result[0], result[1], None)
        else:
            _write_point(points_dir, point, None, None, error)

    by_id = {p.point_id: p for p in todo}
    with _Executor(spec.workers, spec.scheduler) as ex:
        if trace_tasks:
            with tqdm(total=len(trace_tasks), desc="traces", unit="recipe", disable=not progress) as bar:
                ex.map(make_trace, trace_tasks, trace_done, bar)
        for p in todo:
            if p.recipe in failed_recipes:
                _write_point(points_dir, p, None, None, f"trace for {p.recipe}: {failed_recipes[p.recipe]}")
        runnable = [p for p in todo if p.recipe not in failed_recipes]
        with tqdm(total=len(points), initial=len(points) - len(todo), desc="sweep", unit="point",
                  disable=not progress) as bar:
            bar.update(len(todo) - len(runnable))
            ex.map(run_point, [(p.point_id, (p, jobs[p.recipe].path, spec.input_grad, spec.extrapolate)) for p in runnable],
                   point_done, bar, groups=[p.group for p in runnable])
    return _collect(spec, points, points_dir, out)


def _check_mapping(trace: Trace, points: list[Point], input_grad: bool) -> None:
    """Map every GEMM of ``trace`` on each distinct chip of the grid (buffers too small for a
    tile, formats no unit computes): a ConfigError naming the point, before any simulation."""
    from fourbit.hwsim.energy import energy_table
    from fourbit.hwsim.engine import _jobs

    seen = set()
    step = trace.step(None)
    for p in points:
        if p.group in seen:
            continue
        seen.add(p.group)
        chip = load_chip(p.chip_name, p.chip_overrides)
        try:
            _jobs(step, chip, energy_table(chip.energy.table, chip.energy.overrides), input_grad, True)
        except ConfigError as exc:
            where = ", ".join(f"{k}={v}" for k, v in p.values.items())
            raise ConfigError(f"grid point {p.index} ({where}): {exc}") from None


def _check_training(spec: SweepSpec, jobs: dict) -> None:
    """Fail before any work when a training source is wrong (model, data set, hyper-parameters)."""
    from fourbit.models.data import load_dataset
    from fourbit.models.trainer import TrainConfig, check_model_data
    from fourbit.models.zoo import build_model

    job = next(j for j in jobs.values() if j.kind == "train")
    a = job.args
    TrainConfig(**a["config"])
    ds = load_dataset(a["dataset"], a["data_dir"])
    check_model_data(a["model"], ds)
    build_model(a["model"], ds.input_shape, ds.n_classes, 0, **a["model_params"])
    if len(ds.x_train) < a["config"]["batch_size"]:
        raise ConfigError(f"batch_size {a['config']['batch_size']} is larger than the training set ({len(ds.x_train)})")


def _collect(spec: SweepSpec, points: list[Point], points_dir: Path, out: Path) -> pd.DataFrame:
    """The results table: the swept fields (named and typed as given), then each point's file."""
    from fourbit.analysis.run import write_csv

    fields = [f for ax in spec.grid for f in ax.fields]
    swept = pd.DataFrame([{f: p.values[f] for f in fields} for p in points])
    rows = pd.DataFrame([pd.read_parquet(points_dir / f"{p.point_id}.parquet").iloc[0].to_dict() for p in points])
    rows = rows.drop(columns=[c for c in rows.columns if c.startswith("param:")] + ["point_index"])
    df = pd.concat([swept, rows], axis=1)
    tmp = out / f".{spec.table_name}.parquet.tmp"
    df.to_parquet(tmp, index=False)
    os.replace(tmp, out / f"{spec.table_name}.parquet")
    write_csv(df, out / f"{spec.table_name}.csv")
    return df

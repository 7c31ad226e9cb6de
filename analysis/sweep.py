"""Design-space sweeps: a grid over chip fields and recipe parameters, resumable, local or on Dask.

``sweep(spec) -> DataFrame`` and ``fourbit sweep`` expand the grid (the product of its axes; one
axis may set several fields together), check every point before any work starts, then

1. get one trace per distinct recipe from the spec's `fourbit.analysis.workloads.Source`: the
   given trace; a SCALE-Sim import re-imported with the point's recipe (shapes only, no
   accuracy); or a training run, trained once per distinct recipe and cached in ``out/runs``
   (a killed training resumes from its epoch checkpoint);
2. simulate every point on its chip, writing each finished point atomically to
   ``out/points/<id>.parquet`` (its parameters, status and report totals) with its per-layer
   table next to it; a rerun skips finished points and retries failed ones;
3. write ``out/results.parquet`` and ``out/results.csv``: one row per point in grid order, one
   column per swept field (named as given), then the resolved recipe (name, radix, TPR,
   gradient scaling), the chip's name, status and error, test accuracy where a recipe was
   trained, the per-step totals of `fourbit.hwsim.report.SimReport.totals`, and the speed-up and
   energy ratio against the ``baseline`` chip (``speedup_vs_fp16``, ``energy_ratio_vs_fp16``:
   the preset on its own array with its own recipe of `CHIP_RECIPES`, simulated once on the same
   workload like any point; its row in ``out/baseline.csv``). A baseline recipe the source does
   not have is imported or trained like a point's (a model source trains it once more).

Field names: a `fourbit.hwsim.ChipConfig` dotted field (``array.rows``, ``array.dataflow``,
``log_path.radix``, ``sram.ifmap_bytes`` ...); ``chip`` (a preset name or TOML path, the base
the other chip fields modify); ``recipe`` (a recipe spec, e.g. ``int8``); ``recipe.<param>``
(``radix``, ``exponent_bits``, ``tpr``, ``grad_scaling``, ``tie``, ``bwd_acc``, e.g.
``fp16/g4/c32`` for the accumulator chunk). The log base is one thing in hardware and numerics:
``log_path.radix`` and ``recipe.radix`` (likewise ``exponent_bits``) follow each other when only
one is swept, and a radix without an odd phase (2, 8) runs single phase even where ``recipe.tpr``
is on (the ``tpr`` column says which ran). A ``recipe`` value with several parameters separates
them with ``+`` (``int4:radix=16+grad_scaling=global``), since commas separate grid values.

Values from a TOML spec must have their field's type (``values = [8, 16]``, not ``["8"]``);
values typed on the command line (``--grid array.rows=8,16``) are parsed by the field's type.
Paths in a spec file (``source.trace``, ``source.data_dir``, ``out``, a chip TOML) are relative to
the spec file.

Execution (`fourbit.analysis.executor.Executor`): ``workers=1`` runs the points in this process;
``workers > 1`` starts a `dask.distributed.LocalCluster` of that many single-threaded worker
processes; ``scheduler`` connects to a running cluster (the output directory must then be on a
filesystem the workers share). Each task is the same function in every case. The output
directory follows `fourbit.analysis.jobdir`: the same sweep again continues (finished points are
reused), another sweep's directory is refused without ``overwrite``.
"""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pydantic import BeforeValidator, Field, field_validator, model_validator
from tqdm.auto import tqdm

from fourbit.analysis.executor import Executor
from fourbit.analysis.jobdir import job_dir
from fourbit.analysis.workloads import Source, Workload, check_trainings, digest, run_all
from fourbit.hwsim.config import ChipConfig, load_chip
from fourbit.hwsim.timing_cache import chip_timing_view
from fourbit.models.recipes import RECIPES, Recipe, get_recipe, param_text, parse_recipe
from fourbit.traces.config import Listed, PathText, StrictModel, field_info, parse_text
from fourbit.traces.errors import ConfigError
from fourbit.traces.files import atomic_write
from fourbit.traces.io import Trace, read

__all__ = ["CHIP_RECIPES", "Axis", "SweepSpec", "load_spec", "parse_grid", "sweep"]

CHIP_RECIPES = {"fourbit": "int4", "fp16": "fp16", "int8": "int8", "hfp8": "hfp8"}
"""Each chip preset and the recipe whose numerics it implements (a baseline chip runs its own)."""

LINKED = ("radix", "exponent_bits")  # log_path.<x> <-> recipe.<x>
TOTALS = ["total_cycles", "compute_cycles", "stall_cycles", "memory_stall_cycles", "scaling_stall_cycles",
          "time_s", "samples_per_s", "macs", "utilization", "energy_pj", "datapath_energy_pj", "tops_per_w",
          "dram_read_bytes", "dram_write_bytes", "sram_read_bytes", "sram_write_bytes"]


def _recipe_param_type(key: str) -> Any:
    """The type of the recipe parameter ``key`` (the recipes that have it agree on it).

    Raises ConfigError naming the parameters there are."""
    for model, _ in RECIPES.values():
        if key in model.model_fields:
            return model.model_fields[key].annotation
    known = sorted({k for model, _ in RECIPES.values() for k in model.model_fields})
    raise ConfigError(f"unknown grid field 'recipe.{key}'; recipe parameters: {', '.join(known)}")


# ---------------------------------------------------------------------------------------------
# the spec
# ---------------------------------------------------------------------------------------------
def _names(value):
    return (value,) if isinstance(value, str) else value


class Axis(StrictModel):
    """One grid axis: every value sets all ``fields`` (a tuple value sets them one each)."""

    PATH = "grid"
    fields: Annotated[Listed(str), BeforeValidator(_names)] = Field(
        min_length=1, description="the field (or fields) the axis sets")
    values: Listed(Any) = Field(min_length=1, description="the values, in order")

    @model_validator(mode="after")
    def _distinct(self) -> Axis:
        twice = next((v for i, v in enumerate(self.values) if v in self.values[:i]), None)
        if twice is not None:
            raise ValueError(f"axis {self.name}: the value {twice!r} is given twice")
        return self

    @property
    def name(self) -> str:
        return ",".join(self.fields)


class SweepSpec(StrictModel):
    """A sweep: ``source``, the base ``chip`` and ``recipe`` (None: the trace's own), the ``grid``
    axes, the output directory and where to run (``workers`` processes or a ``scheduler``)."""

    source: Source = Field(description="where the traces come from")
    grid: Listed(Axis) = Field(description="the axes; the grid is their product")
    out: PathText = Field("sweep-out", description="output directory")
    chip: PathText = Field("fourbit", description="the base chip")
    recipe: str | None = Field(None, description="the base recipe (none: the trace's own, or int4)")
    workers: int = Field(1, ge=1, description="local worker processes")
    scheduler: str | None = Field(None, description="a dask.distributed scheduler address, tcp://HOST:PORT")
    input_grad: bool = Field(False, description="also simulate bwd_data of the input layer")
    extrapolate: bool = Field(False, description="extrapolate long GEMMs from short probes, an approximation "
                                                 "(fourbit.simulate; the default is exact)")
    baseline: str | None = Field("fp16", description="the chip preset every point's speed-up and energy ratio are "
                                                     "against, run with its own recipe on its own array (none: no "
                                                     "ratios)")

    @field_validator("baseline", mode="before")
    @classmethod
    def _none_text(cls, value):
        return None if value == "none" else value  # the command line's and a TOML spec's way to say none

    @model_validator(mode="after")
    def _known_baseline(self) -> SweepSpec:
        if self.baseline is not None and self.baseline not in CHIP_RECIPES:
            raise ValueError(f"baseline = {self.baseline!r}: allowed a chip preset with its own recipe "
                             f"({', '.join(CHIP_RECIPES)}) or none")
        return self


def parse_grid(items: list[str]) -> tuple[Axis, ...]:
    """``["array.rows,array.cols=8,16,32", "log_path.radix=2,4"]`` -> axes, each value parsed by
    its field's type (a chip field of `fourbit.hwsim.config.ChipConfig`, ``recipe.<param>``, or
    ``chip`` and ``recipe``, which are text).

    Raises ConfigError for an item without ``=``, an empty field name or value, an unknown field
    or a value that is not of the field's type."""
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
        types = [_field_type(f) for f in fields]
        axes.append(Axis(fields=fields, values=tuple(_typed_value(fields, types, v) for v in parts)))
    return tuple(axes)


def _field_type(name: str) -> Any:
    if name in ("chip", "recipe"):
        return str
    if name.startswith("recipe."):
        return _recipe_param_type(name[7:])
    return field_info(ChipConfig, name)[1]


def _typed_value(fields: tuple[str, ...], types: list, text: str):
    """One command-line value of an axis: every field of the axis takes it, so it must parse
    for each (``array.rows,array.cols=8`` sets both to 8)."""
    values = {parse_text(t, text, f) for f, t in zip(fields, types, strict=True)}
    if len(values) > 1:
        raise ConfigError(f"--grid value {text!r} means different things for {', '.join(fields)}")
    return values.pop()


def load_spec(path: str | Path, **overrides) -> SweepSpec:
    """A sweep spec from TOML (the fields of `SweepSpec`: ``[source]`` with its ``[source.train]``,
    ``[[grid]]`` tables of ``fields`` and ``values``, and ``chip``, ``recipe``, ``out``,
    ``workers``, ``scheduler``, ``input_grad``, ``extrapolate`` at the top level), then
    ``overrides`` (given on the command line). Paths in the file are relative to the file.

    Raises ConfigError naming the file and the dotted field for unknown keys, wrong types and
    values out of range."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"sweep spec {path}: {exc}") from exc
    base = path.resolve().parent
    src = data.get("source")
    if isinstance(src, dict):
        data["source"] = {**src, **{k: _relative(src[k], base) for k in ("trace", "data_dir") if isinstance(src.get(k), str)}}
    if isinstance(data.get("out"), str):
        data["out"] = _relative(data["out"], base)
    if isinstance(data.get("chip"), str) and not _is_preset(data["chip"]):
        data["chip"] = _relative(data["chip"], base)
    for ax in data.get("grid", []) if isinstance(data.get("grid"), list) else []:
        if isinstance(ax, dict) and ax.get("fields") in ("chip", ["chip"]) and isinstance(ax.get("values"), list):
            ax["values"] = [_relative(v, base) if isinstance(v, str) and not _is_preset(v) else v for v in ax["values"]]
    spec = SweepSpec.parse(data, f"sweep spec {path}")
    return spec.replace(**overrides) if overrides else spec


def _relative(value: str, base: Path) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)


def _is_preset(name: str) -> bool:
    """A chip named without a path (not a TOML file name): a preset, resolved as it is."""
    return not (name.endswith(".toml") or "/" in name or "\\" in name)


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


def _points(spec: SweepSpec, base_recipe: str, source_key: str) -> list[Point]:
    """Expand and resolve the grid; every error names the field. ``source_key`` identifies the
    workload (a point of another trace or training is another point)."""
    if not spec.grid:
        raise ConfigError("the grid is empty: give at least one axis (--grid FIELD=V1,V2,...)")
    for ax in spec.grid:
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


def _resolve(spec: SweepSpec, base_recipe: str, index: int, values: dict, source_key: str) -> Point:
    where = f"grid point {index} ({', '.join(f'{k}={v}' for k, v in values.items())})"
    try:
        chip_name, chip_over, recipe_spec = _split(spec, base_recipe, values)
        get_recipe(recipe_spec)  # checks the recipe parameters
        chip = load_chip(chip_name, chip_over)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    timing = chip_timing_view(chip)  # points that differ in energy or numerics only share GEMM timings
    pid = digest({"values": values, "chip": chip_name, "over": chip_over, "recipe": recipe_spec,
                  "source": source_key, "input_grad": spec.input_grad, "extrapolate": spec.extrapolate})
    return Point(index, values, chip_name, chip_over, recipe_spec, pid, digest(timing))


def _split(spec: SweepSpec, base_recipe: str, values: dict) -> tuple[str, dict, str]:
    """A point's (chip name, chip overrides, recipe spec); one log base for datapath and numerics."""
    chip_name = values.get("chip", spec.chip)
    recipe_name, params = parse_recipe(values.get("recipe", base_recipe))
    chip_over = {}
    for f, v in values.items():
        if f.startswith("recipe."):
            _recipe_param_type(f[7:])
            params[f[7:]] = v
        elif f not in ("chip", "recipe"):
            chip_over[f] = v
    model = RECIPES[recipe_name][0]
    for key in params:
        if key not in model.model_fields:
            raise ConfigError(f"recipe {recipe_name!r} has no parameter {key!r}; its parameters: "
                              f"{', '.join(model.model_fields) or 'none'}")
    model.parse(params, f"recipe {recipe_name!r}")  # strict types (values of a TOML spec), before the rules
    for key in LINKED:
        chip_f = f"log_path.{key}"
        if chip_f in chip_over and key in params and chip_over[chip_f] != params[key]:
            raise ConfigError(f"{chip_f} = {chip_over[chip_f]} and recipe.{key} = {params[key]} differ; they are "
                              "one setting (sweep either)")
        if chip_f in chip_over and key not in params and key in model.model_fields:
            params[key] = chip_over[chip_f]
        elif key in params and chip_f not in chip_over:
            chip_over[chip_f] = params[key]
    if params.get("radix") in (2, 8) and "tpr" in model.model_fields:
        params["tpr"] = False  # no odd phase: single-phase rounding (the tpr column says so)
    text = ",".join(f"{k}={param_text(v)}" for k, v in params.items())
    return chip_name, chip_over, recipe_name + (":" + text if text else "")


# ---------------------------------------------------------------------------------------------
# running points
# ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=8)
def _load(path: str) -> Trace:
    return read(path)


def run_point(point: Point, trace_path: str, input_grad: bool = False,
              extrapolate: bool = False) -> tuple[dict, pd.DataFrame]:
    """Simulate one point (in a worker): (its row, its per-layer table); ``extrapolate`` as in
    `fourbit.hwsim.engine.simulate`."""
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
              **{f"param:{k}": param_text(v) for k, v in point.values.items()},
              **_recipe_columns(get_recipe(point.recipe)),
              "status": "ok" if error is None else "error", "error": error or ""}
    record.update(row or {})
    if layers is not None:
        with atomic_write(points_dir / f"{point.point_id}.layers.parquet") as tmp:
            layers.to_parquet(tmp, index=False)
    with atomic_write(points_dir / f"{point.point_id}.parquet") as tmp:
        pd.DataFrame([record]).to_parquet(tmp, index=False)


def _done(points_dir: Path, point: Point) -> bool:
    path = points_dir / f"{point.point_id}.parquet"
    if not path.is_file():
        return False
    try:
        return pd.read_parquet(path, columns=["status"]).status.iloc[0] == "ok"
    except (OSError, ValueError, KeyError):  # a damaged file: run the point again
        return False


def _identity(spec: SweepSpec) -> dict:
    """What defines a sweep's results: the spec without where it runs and writes."""
    return {**spec.model_dump(mode="json", exclude={"out", "workers", "scheduler", "source"}),
            "source": spec.source.identity()}


def sweep(spec: SweepSpec | None = None, *, progress: bool = True, overwrite: bool = False,
          **params) -> pd.DataFrame:
    """Run (or continue) a sweep; returns the results table (also ``out/results.parquet|csv``).

    ``spec`` or its fields as keywords (``sweep(source=..., grid=...)``). The same sweep on the
    same ``out`` continues where it stopped and retries failed points; a directory holding another
    job is refused unless ``overwrite`` (`fourbit.analysis.jobdir`).

    Raises
    ------
    ConfigError
        Before any work: an empty grid, an unknown field, a value out of range (named with the
        grid point), a bad source, ``out`` refused or not writable.
    """
    spec = spec.replace(**params) if spec is not None and params else spec or SweepSpec(**params)
    plan = _plan(spec)
    with job_dir(spec.out, "sweep", _identity(spec), overwrite=overwrite) as out:
        return _execute(spec, plan, out, "results", progress)


@dataclass(frozen=True)
class _Plan:
    """A checked sweep: its points and the workload of each recipe."""

    points: list[Point]
    workloads: dict[str, Workload]
    baseline: Point | None = None  # the baseline chip with its own recipe (SweepSpec.baseline)


def _plan(spec: SweepSpec) -> _Plan:
    """Everything checked before any work: the base chip and recipe, every grid point, the
    trainings, and every GEMM of a given trace on every distinct chip."""
    given = read(spec.source.trace) if spec.source.trace is not None else None
    base = spec.recipe or spec.source.base_recipe() or "int4"
    get_recipe(base)
    load_chip(spec.chip)
    points = _points(spec, base, spec.source.key())
    baseline = None
    if spec.baseline is not None:
        baseline = _resolve(spec, base, -1, {"chip": spec.baseline, "recipe": CHIP_RECIPES[spec.baseline]},
                            spec.source.key())
    workloads = spec.source.workloads(list(dict.fromkeys(p.recipe for p in points)), spec.out)
    if baseline is not None and baseline.recipe not in workloads:
        try:
            workloads.update(spec.source.workloads([baseline.recipe], spec.out))
        except ConfigError as exc:
            raise ConfigError(f"the baseline chip {spec.baseline} runs its own recipe {baseline.recipe!r}: {exc} "
                              "(--baseline none: a sweep without one)") from None
    check_trainings(list(workloads.values()))
    if given is not None:
        _check_mapping(given, points, spec.input_grad)
    return _Plan(points, workloads, baseline)


def _execute(spec: SweepSpec, plan: _Plan, out: Path, table_name: str, progress: bool) -> pd.DataFrame:
    """Make the traces, simulate the points not done yet, collect the table ``out/<table_name>``."""
    points, workloads = plan.points + ([plan.baseline] if plan.baseline else []), plan.workloads
    points_dir = out / "points"
    points_dir.mkdir(exist_ok=True)
    todo = [p for p in points if not _done(points_dir, p)]
    needed = [workloads[r] for r in dict.fromkeys(p.recipe for p in todo)]
    by_id = {p.point_id: p for p in todo}

    def point_done(pid, result, error):
        point = by_id[pid]
        if error is None:
            _write_point(points_dir, point, result[0], result[1], None)
        else:
            _write_point(points_dir, point, None, None, error)

    with Executor(spec.workers, spec.scheduler) as ex:
        _, errors = run_all(needed, ex, progress=progress)
        failed = {w.recipe: errors[w.path] for w in needed if w.path in errors}
        for p in todo:
            if p.recipe in failed:
                _write_point(points_dir, p, None, None, f"trace for {p.recipe}: {failed[p.recipe]}")
        runnable = [p for p in todo if p.recipe not in failed]
        with tqdm(total=len(points), initial=len(points) - len(todo), desc="sweep", unit="point",
                  disable=not progress) as bar:
            bar.update(len(todo) - len(runnable))
            ex.map(run_point, [(p.point_id, (p, workloads[p.recipe].path, spec.input_grad, spec.extrapolate))
                               for p in runnable], point_done, bar, groups=[p.group for p in runnable])
    return _collect(spec, plan, points_dir, out, table_name)


def _check_mapping(trace: Trace, points: list[Point], input_grad: bool) -> None:
    """Map every GEMM of ``trace`` on each distinct chip of the grid (buffers too small for a
    tile, formats no unit computes): a ConfigError naming the point, before any simulation."""
    from fourbit.hwsim.energy import energy_table
    from fourbit.hwsim.jobs import plan_jobs

    seen = set()
    step = trace.step(None)
    for p in points:
        if p.group in seen:
            continue
        seen.add(p.group)
        chip = load_chip(p.chip_name, p.chip_overrides)
        try:
            plan_jobs(step, chip, energy_table(chip.energy.table, chip.energy.overrides), input_grad)
        except ConfigError as exc:
            where = ", ".join(f"{k}={v}" for k, v in p.values.items())
            raise ConfigError(f"grid point {p.index} ({where}): {exc}") from None


def _cell(value):
    """A swept value as a table cell: numbers, flags and text as they are, objects (an
    accumulator) by their text."""
    return value if isinstance(value, bool | int | float | str) else param_text(value)


def _collect(spec: SweepSpec, plan: _Plan, points_dir: Path, out: Path, table_name: str) -> pd.DataFrame:
    """The results table: the swept fields (named and typed as given), then each point's file,
    then each point's speed-up and energy ratio against the baseline (NaN where either did not
    run); the baseline's own row goes to ``out/baseline.csv``."""
    fields = [f for ax in spec.grid for f in ax.fields]
    swept = pd.DataFrame([{f: _cell(p.values[f]) for f in fields} for p in plan.points])
    rows = _point_rows(points_dir, plan.points)
    df = pd.concat([swept, rows], axis=1)
    if plan.baseline is not None:
        base = _point_rows(points_dir, [plan.baseline]).iloc[0]
        ran = base.status == "ok"
        base_time, base_energy = (base["time_s"], base["energy_pj"]) if ran else (np.nan, np.nan)
        ok = df.status == "ok"
        df[f"speedup_vs_{spec.baseline}"] = np.where(ok, base_time / df.get("time_s", np.nan), np.nan)
        df[f"energy_ratio_vs_{spec.baseline}"] = np.where(ok, df.get("energy_pj", np.nan) / base_energy, np.nan)
        with atomic_write(out / "baseline.csv") as tmp:
            pd.DataFrame([base]).to_csv(tmp, index=False)
    with atomic_write(out / f"{table_name}.parquet") as tmp:
        df.to_parquet(tmp, index=False)
    with atomic_write(out / f"{table_name}.csv") as tmp:
        df.to_csv(tmp, index=False)
    return df


def _point_rows(points_dir: Path, points: list[Point]) -> pd.DataFrame:
    """The points' files as one table, in the order given (without the swept parameters' text)."""
    rows = pd.DataFrame([pd.read_parquet(points_dir / f"{p.point_id}.parquet").iloc[0].to_dict() for p in points])
    return rows.drop(columns=[c for c in rows.columns if c.startswith("param:")] + ["point_index"])

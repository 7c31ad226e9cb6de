"""``fourbit report DIR``: the results of a main job, sweep, compare, ablation or explain
directory as one static HTML page, ``DIR/report.html``, rendered from a Jinja2 template
(``templates/report.html.j2``, every value escaped).

On top a summary: the workload, chips and recipes (from the directory's ``fourbit-job.json``
and the tables) and the headline figures read from the result files, not recomputed: the 4-bit
chip's speed-up, energy ratio and accuracy difference against the baseline (main job, compare,
explain), the fastest and the least-energy point (sweep), the best and worst variant
(ablation). Then each table with readable headers and scaled units (`fourbit.analysis.display`),
sortable by a click on a header (a short script in the page; nothing is fetched from the
network), and the figures with captions saying what they show.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from fourbit.analysis.display import column, format_value, show
from fourbit.traces.errors import ConfigError
from fourbit.traces.files import atomic_write

__all__ = ["write_report"]


@dataclass(frozen=True)
class _TableKind:
    file: str
    title: str
    what: str
    needs: tuple[str, ...] = ()  # the columns the summary reads


_TABLES = (
    _TableKind("main_job.csv", "Main job", "The 4-bit recipe on the 4-bit chip against the baseline recipe on the "
               "baseline chip, one training step of each", needs=("recipe", "chip")),
    _TableKind("compare.csv", "Chips compared", "Each chip with its own recipe, at the same array size "
               "(iso-array) and at the same PE-array area (iso-area), against the baseline chip",
               needs=("mode", "chip", "recipe")),
    _TableKind("results.csv", "Sweep results", "One row per grid point: the swept fields, the recipe, the "
               "simulated totals of one training step and the test accuracy of trained recipes"),
    _TableKind("ablation.csv", "Ablation", "Test accuracy per variant: mean, spread and extremes over the seeds",
               needs=("variant", "recipe")),
    _TableKind("ablation_runs.csv", "Ablation runs", "One row per (variant, seed): its test accuracy and loss, "
               "skipped steps and training time"),
    _TableKind("explain.csv", "Explanation", "The measured speed-up and energy ratio taken apart, one effect at a "
               "time: each term's factor and the ratio after it", needs=("waterfall", "ratio")),
)
_SWEEP_SHOWN = ("array.rows", "array.cols", "array.dataflow", "log_path.radix", "recipe_name", "tpr", "status",
                "total_cycles", "time_s", "energy_pj", "utilization", "dram_read_bytes", "test_accuracy_pct",
                "error")
"""The columns of a sweep's results shown (after its own swept fields); the CSV has all."""
ROW_LIMIT = 500
"""Rows of a table shown on the page (all are in its CSV)."""

_CAPTIONS = {
    "main_job": "Test accuracy, time per training step and energy per step of the 4-bit recipe on the 4-bit chip "
                "and of the baseline recipe on the baseline chip.",
    "speedup_energy_vs_array": "Speed-up and energy per training step of each configuration against array "
                               "size, relative to the baseline chip named on the axes (or, in a sweep without "
                               "one, to one reference point).",
    "energy_breakdown": "Energy of one training step split into its components (MAC, accumulate, registers, "
                        "SRAM, DRAM, scaling unit, leakage), per sweep point.",
    "utilization_per_layer": "PE utilization of each GEMM (layer and phase) of one configuration, per array "
                             "shape and dataflow.",
    "compare": "Speed-up and energy per training step of each chip (with its own recipe) against the baseline "
               "chip, at the same array size (iso-array) and at the same PE-array area (iso-area); the array "
               "shape over each bar.",
    "ablation": "Test accuracy (test loss for a model without one) of each variant: every seed as a dot, the "
                "spread of the seeds as a line, the mean as a diamond; the dashed line is the first variant's mean.",
    "explain": "The speed-up and the energy ratio as waterfalls: each bar one effect, from the ratio before it to the "
               "ratio after it, on a log axis.",
}
"""What each figure the commands write shows (by file stem); a figure not named here is
captioned by its file name."""

_KINDS = {"main_job": "main job (fourbit run)", "sweep": "sweep (fourbit sweep)", "compare": "chip comparison "
          "(fourbit compare)", "ablation": "ablation (fourbit ablation)", "explain": "explanation (fourbit explain)"}


def _job(d: Path) -> dict:
    """The directory's job description (``fourbit-job.json``, JSON only), or {}."""
    path = d / "fourbit-job.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable job description ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("job", {}), dict) or data.get("kind", "") not in (
            "", *_KINDS):
        raise ConfigError(f"{path}: not a job description (a JSON object with a 'job' mapping and a 'kind' of "
                          f"{', '.join(_KINDS)})")
    return data


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable CSV table ({exc})") from exc


def _checked(path: Path, df: pd.DataFrame, needs: tuple[str, ...]) -> pd.DataFrame:
    """``df`` when it has the columns the summary reads and a number in every filled cell of a
    column whose name says it holds one (a count, time, energy, bytes, ratio, ...); else a
    ConfigError naming the file, column and row."""
    missing = [c for c in needs if c not in df.columns]
    if missing:
        raise ConfigError(f"{path}: no column {missing[0]!r} (a {path.name} of fourbit has {', '.join(needs)})")
    for c in df.columns:
        if column(c).kind == "plain" or pd.api.types.is_numeric_dtype(df[c]):
            continue
        bad = df[c].notna() & pd.to_numeric(df[c], errors="coerce").isna()
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise ConfigError(f"{path}: column {c!r}, row {row}: {df[c].iloc[row]!r} is not a number")
        df[c] = pd.to_numeric(df[c])
    return df


def _results(d: Path) -> pd.DataFrame:
    """A sweep's table: ``results.csv``, checked against ``results.parquet`` (the sweep writes
    both; a truncated CSV would summarise fewer points)."""
    df = _read_csv(d / "results.csv")
    parquet = d / "results.parquet"
    if parquet.is_file():
        try:
            rows = pq.read_metadata(parquet).num_rows
        except (pa.ArrowException, OSError) as exc:
            raise ConfigError(f"{parquet}: not a readable Parquet file ({str(exc).splitlines()[0]})") from exc
        if rows != len(df):
            raise ConfigError(f"{d / 'results.csv'}: {len(df)} rows, {parquet.name} has {rows}: one of them is damaged "
                              "(the sweep writes both; run it again to rewrite them)")
    return df


def _workload(job: dict) -> str | None:
    src = job.get("source") or job.get("workload") or job  # a job's source, explain's workload
    src = src if isinstance(src, dict) else {}
    if src.get("trace"):
        return f"trace {src['trace']}{_trace_model(Path(str(src['trace'])))}"
    if src.get("model") and src.get("dataset"):
        train = job.get("train") or src.get("train") or {}
        epochs = train.get("epochs")
        extra = f", {epochs} epoch{'s' if epochs != 1 else ''} at batch {train['batch_size']}" if epochs else ""
        return f"{src['model']} trained on {src['dataset']}{extra}"
    return None


def _trace_model(trace: Path) -> str:
    """' (resnet18 at batch 32)' from a trace directory's meta.json, or '' when it cannot say
    (moved, unreadable or without those fields: the page still names the directory)."""
    try:
        meta = json.loads((trace / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    model, batch = (meta.get("model"), meta.get("batch_size")) if isinstance(meta, dict) else (None, None)
    if not isinstance(model, str):
        return ""
    return f" ({model}{f' at batch {batch}' if isinstance(batch, int) else ''})"


def _explained(side) -> str | None:
    """'fourbit (int4)' from one side of an explain job's description: its chip configuration
    and recipe."""
    if not isinstance(side, dict):
        return None
    chip = side.get("chip")
    name = chip.get("chip", {}).get("name") if isinstance(chip, dict) and isinstance(chip.get("chip"), dict) else None
    return f"{name} ({side['recipe']})" if isinstance(name, str) and isinstance(side.get("recipe"), str) else None


def _list(values) -> str:
    """Distinct names, in order, separated by semicolons (recipe specs hold commas)."""
    return "; ".join(dict.fromkeys(str(v) for v in values if isinstance(v, str) and v))


def _baseline(df: pd.DataFrame, prefix: str) -> str | None:
    """The baseline's name in a ``<prefix>_vs_<name>`` column of ``df``, or None."""
    names = [c[len(prefix) + 4:] for c in df.columns if c.startswith(f"{prefix}_vs_")]
    return names[0] if names else None


def _versus(row: pd.Series, base: str) -> str:
    """'speed-up 2.32x, energy 0.41x, test accuracy -0.30 pts' from a row's ratio columns."""
    parts = [f"speed-up {show('ratio', row[f'speedup_vs_{base}'])}",
             f"energy {show('ratio', row[f'energy_ratio_vs_{base}'])}"]
    for col in (c for c in row.index if c.startswith("accuracy_delta_vs_") and c.endswith("_pts")):
        if not pd.isna(row[col]):  # named after the baseline's recipe (main job) or chip (compare)
            parts.append(f"test accuracy {show('points', row[col])} vs {col[18:-4]}")
    return ", ".join(parts)


def _summary(kind: str, job: dict, tables: dict[str, pd.DataFrame]) -> list[dict]:
    """(label, value, headline) items of the summary, read from the job and the tables."""
    items: list[dict] = []

    def add(label: str, value: str | None, headline: bool = False) -> None:
        if value:
            items.append({"label": label, "value": value, "headline": headline})

    inner = job.get("job", {})
    add("workload", _workload(inner))
    if "main_job.csv" in tables:
        t = tables["main_job.csv"]
        add("chips", _list(t.chip))
        add("recipes", _list(t.recipe))
        base = _baseline(t, "speedup")
        if base and len(t) > 1:
            row = t.iloc[-1]
            add(f"{row.recipe} on {row.chip} vs {t.iloc[0].recipe} on {base}", _versus(row, base), True)
    if "compare.csv" in tables:
        t = tables["compare.csv"]
        add("chips", _list(t.chip))
        add("recipes", _list(t.recipe))
        base = _baseline(t, "speedup")
        first = (inner.get("chips") or [t.chip.iloc[0]])[0]
        for mode, g in t[t.chip == first].groupby("mode", sort=False) if base else ():
            row = g.iloc[0]
            add(f"{first} ({row.get('array', '')}) vs {base}, {mode}", _versus(row, base), True)
    if "results.csv" in tables:
        t = tables["results.csv"]
        ok = t[t.status == "ok"] if "status" in t else t
        keys = list(t.columns[: list(t.columns).index("point_id")]) if "point_id" in t else []
        add("chip", inner.get("chip"))
        add("recipes", _list(t.get("recipe_name", [])))
        add("points", f"{len(t)} ({len(t) - len(ok)} failed)")
        base = _baseline(t, "speedup")
        for col, word in (("time_s", "fastest point"), ("energy_pj", "least energy per step")):
            if col in ok and len(ok):
                row = ok.loc[ok[col].idxmin()]
                where = ", ".join(f"{column(k).label} {format_value(k, row[k])}" for k in keys)
                vs = f"; {_versus(row, base)} vs the {base} chip" if base and not pd.isna(row[f"speedup_vs_{base}"]) \
                    else ""
                add(word, f"{format_value(col, row[col])} ({where}){vs}", True)
    if "ablation.csv" in tables:
        t = tables["ablation.csv"]
        add("recipes", _list(t.recipe))
        add("seeds", _list(str(s) for s in t.seeds.unique()) if "seeds" in t else None)
        if "test_accuracy_pct" in t and t.test_accuracy_pct.notna().any():
            best, worst = t.loc[t.test_accuracy_pct.idxmax()], t.loc[t.test_accuracy_pct.idxmin()]
            add("best variant", f"{best.variant}: {format_value('test_accuracy_pct', best.test_accuracy_pct)}", True)
            add("worst variant", f"{worst.variant}: {format_value('test_accuracy_pct', worst.test_accuracy_pct)}", True)
    if "explain.csv" in tables:
        t = tables["explain.csv"]
        sides = [_explained(inner.get(side)) for side in ("chip", "baseline")]
        add("chips", "; ".join(filter(None, sides)))
        versus = f" ({sides[0]} over {sides[1]})" if all(sides) else ""
        for name in ("speed-up", "energy"):
            rows = t[t.waterfall == name]
            if len(rows):
                add(f"measured {name}{versus}", show("ratio", rows.ratio.iloc[-1]), True)
    return items


def _cells(df: pd.DataFrame) -> tuple[list[dict], list[list[dict]]]:
    cols = []
    for c in df.columns:
        numeric = pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
        cols.append({"name": c, "label": column(c).label, "align": "num" if numeric else "text"})
    body = []
    for values in df.itertuples(index=False, name=None):
        row = []
        for col, v in zip(cols, values, strict=True):
            missing = v is None or (isinstance(v, float) and math.isnan(v))
            row.append({"text": format_value(col["name"], v), "align": col["align"],
                        "sort": "" if missing else repr(float(v)) if col["align"] == "num" else str(v)})
        body.append(row)
    return cols, body


def _table(kind: _TableKind, df: pd.DataFrame) -> dict:
    if kind.file == "results.csv":
        own = [c for c in df.columns[: list(df.columns).index("point_id")] if c not in _SWEEP_SHOWN] \
            if "point_id" in df.columns else []
        ratios = [c for c in df.columns if c.startswith(("speedup_vs_", "energy_ratio_vs_"))]
        df = df[[c for c in (*own, *_SWEEP_SHOWN, *ratios) if c in df.columns]]
    df = df.dropna(axis=1, how="all")  # a column no row filled (accuracy of an imported trace) says nothing
    cols, body = _cells(df.head(ROW_LIMIT))
    return {"title": kind.title, "what": kind.what, "file": kind.file, "anchor": kind.file.removesuffix(".csv"),
            "rows": len(df), "shown": min(len(df), ROW_LIMIT), "columns": cols, "body": body}


def _figures(d: Path) -> list[dict]:
    """The figures: captioned by what they show, or as a file fourbit did not write; paths
    relative to the page and URL-quoted (a name may hold '%', '#' or spaces)."""
    out = []
    for fig in sorted((d / "figures").glob("*.png")) + sorted(d.glob("*.png")):
        svg = fig.with_suffix(".svg")
        caption = _CAPTIONS.get(fig.stem, f"{fig.name} (a file in the directory, not one fourbit writes)")
        out.append({"src": quote(os.path.relpath(fig, d)), "alt": caption, "caption": caption,
                    "svg": quote(os.path.relpath(svg, d)) if svg.is_file() else None})
    return out


def _render(**context) -> str:
    env = Environment(loader=PackageLoader("fourbit.analysis", "templates"), autoescape=select_autoescape(["j2"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2").render(**context)


def write_report(directory: str | Path) -> Path:
    """Write ``directory/report.html`` from the result tables (CSV), ``figures/*.png`` (and PNGs
    beside the tables) and ``fourbit-job.json`` found there; returns its path.

    Raises ConfigError when the directory is missing or holds no table or figure, or a table is
    not readable CSV."""
    d = Path(directory)
    if not d.is_dir():
        raise ConfigError(f"{directory}: not a directory")
    job = _job(d)
    frames = {k.file: _checked(d / k.file, _results(d) if k.file == "results.csv" else _read_csv(d / k.file), k.needs)
              for k in _TABLES if (d / k.file).is_file()}
    figures = _figures(d)
    if not frames and not figures:
        raise ConfigError(f"{directory}: no {', '.join(k.file for k in _TABLES)} or figures to report")
    kind = job.get("kind", "")
    page = _render(title=d.resolve().name, kind_text=_KINDS.get(kind, "results"),
                   summary=_summary(kind, job, frames), figures=figures,
                   tables=[_table(k, frames[k.file]) for k in _TABLES if k.file in frames])
    out = d / "report.html"
    with atomic_write(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out

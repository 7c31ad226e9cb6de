"""``fourbit report DIR``: the tables and figures of a sweep (or compare, ablation, main job)
directory as one static HTML page, ``DIR/report.html`` (figures linked by relative path, tables
inline; no JavaScript, no network)."""

from __future__ import annotations

import html
import os
from pathlib import Path

import pandas as pd

from fourbit.traces.errors import ConfigError
from fourbit.traces.files import atomic_write

__all__ = ["write_report"]

_TABLES = (
    ("results.csv", "Sweep results", "one row per grid point: the swept fields, the resolved recipe, "
                                      "the simulated totals per training step, the test accuracy of trained recipes"),
    ("compare.csv", "4-bit chip vs other chips", "iso-array and iso-area, against the baseline chip"),
    ("ablation.csv", "FP4 ablation", "test accuracy per variant over the seeds"),
    ("main_job.csv", "Main job", "int4 on the 4-bit chip vs fp32 on the FP16 chip"),
)
_SHOWN = ("array.rows", "array.cols", "array.dataflow", "log_path.radix", "recipe_name", "tpr", "status",
          "total_cycles", "time_s", "energy_pj", "utilization", "dram_read_bytes", "test_accuracy_pct", "error")


def _table_html(df: pd.DataFrame, limit: int = 200) -> str:
    note = f"<p>first {limit} of {len(df)} rows (all in the CSV)</p>" if len(df) > limit else ""
    return note + df.head(limit).to_html(index=False, border=0, classes="t", float_format=lambda v: f"{v:,.4g}",
                                         na_rep="")


def write_report(directory: str | Path) -> Path:
    """Write ``directory/report.html`` from the CSV tables and ``figures/*.png`` found there.

    Raises ConfigError when the directory holds none of them or a table is not readable CSV."""
    d = Path(directory)
    if not d.is_dir():
        raise ConfigError(f"{directory}: not a directory")
    parts = [f"<h1>fourbit report: {html.escape(str(d.resolve().name))}</h1>"]
    found = 0
    for name, title, what in _TABLES:
        path = d / name
        if not path.is_file():
            continue
        try:
            df = pd.read_csv(path)
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not a readable CSV table ({exc})") from exc
        if name == "results.csv":
            extra = [c for c in df.columns[: list(df.columns).index("point_id")] if c not in _SHOWN] \
                if "point_id" in df.columns else []
            df = df[[c for c in (*extra, *_SHOWN) if c in df.columns]]
        parts += [f"<h2>{html.escape(title)}</h2>", f"<p>{html.escape(what)}; <a href='{name}'>{name}</a></p>",
                  _table_html(df)]
        found += 1
    figures = sorted((d / "figures").glob("*.png")) + sorted(d.glob("*.png"))
    if figures:
        parts.append("<h2>Figures</h2>")
        for fig in figures:
            rel = os.path.relpath(fig, d)
            svg = fig.with_suffix(".svg")
            link = f" (<a href='{os.path.relpath(svg, d)}'>SVG</a>)" if svg.is_file() else ""
            parts.append(f"<figure><img src='{html.escape(rel)}' alt='{html.escape(fig.stem)}'>"
                         f"<figcaption>{html.escape(fig.stem.replace('_', ' '))}{link}</figcaption></figure>")
            found += 1
    if not found:
        raise ConfigError(f"{directory}: no results.csv, compare.csv, ablation.csv, main_job.csv or figures to report")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px} table.t{border-collapse:collapse;font-size:12px}"
             " table.t td,table.t th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}"
             " img{max-width:100%} figure{margin:1em 0}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>fourbit report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    out = d / "report.html"
    with atomic_write(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out

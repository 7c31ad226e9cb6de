"""Matplotlib figures of fourbit's results (PNG; the Agg backend, no screen needed)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from fourbit.analysis.display import unit_for  # noqa: E402
from fourbit.hwsim.report import SimReport  # noqa: E402
from fourbit.traces.files import atomic_write  # noqa: E402

__all__ = ["ablation_figure", "compare_figure", "main_job_figure", "save_figure", "sweep_figures", "waterfall_figure"]

_COMPONENTS = {
    "energy_mac_pj": "MAC", "energy_acc_pj": "accumulate", "energy_reg_pj": "registers",
    "energy_sram_pj": "SRAM", "energy_dram_pj": "DRAM", "energy_scaling_pj": "scaling unit",
    "energy_leakage_pj": "leakage",
}


def main_job_figure(table: pd.DataFrame, reports: list[SimReport], path: str | Path) -> Path:
    """Test accuracy, cycles per step (compute, memory stall, scaling-unit stall) and energy per
    step by component, one bar per (recipe, chip) row of ``table``; written to ``path`` (PNG)."""
    labels = [f"{r.recipe}\non {r.chip}" for r in table.itertuples()]
    fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(13, 5.2), gridspec_kw={"width_ratios": [0.7, 1, 1]})
    acc = table["test_accuracy_pct"].astype(float)
    ax0.plot(labels, acc, "o", color="#0072b2", markersize=9)  # dots: the axis need not start at 0
    for x, v in enumerate(acc):
        ax0.annotate(f"{v:.2f} %", (x, v), textcoords="offset points", xytext=(0, 9), ha="center", fontsize=8)
    ax0.set_xlim(-0.6, len(labels) - 0.4)
    ax0.set_ylim(max(0.0, float(acc.min()) - 5), 100.5)
    ax0.grid(axis="y", alpha=0.3)
    ax0.set_ylabel("test accuracy (%)")
    ax0.set_title("Accuracy")
    bottom = [0.0] * len(reports)
    for key, name in (("compute_cycles", "compute"), ("memory_stall_cycles", "memory stall"),
                      ("scaling_stall_cycles", "output-path stall (scaling unit, write-back, weight update)")):
        vals = [float(rep.totals()[key]) / 1e3 for rep in reports]
        ax1.bar(labels, vals, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax1.set_ylabel("kcycles per training step")
    ax1.set_title("Time")
    ax1.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=1, frameon=False)
    bottom = [0.0] * len(reports)
    for key, name in _COMPONENTS.items():
        vals = [float(rep.totals()[key]) * 1e-6 for rep in reports]
        ax2.bar(labels, vals, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    for x, rep in enumerate(reports):  # the datapath's share, a sliver beside DRAM, in numbers
        t = rep.totals()
        ax2.annotate(f"datapath {t['datapath_energy_pj'] * 1e-6:.3g} uJ", (x, bottom[x]), textcoords="offset points",
                     xytext=(0, 4), ha="center", fontsize=8)
    ax2.set_ylabel("uJ per training step")
    ax2.set_title("Energy")
    if not acc.notna().all():  # a workload without accuracy (an imported trace)
        ax0.set_visible(False)
    ax2.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=4, frameon=False)
    fig.tight_layout()
    path = Path(path)
    _write(fig, path)
    plt.close(fig)
    return path


def _write(fig, path: Path) -> None:
    """Write ``fig`` to ``path`` atomically, in the format its suffix names."""
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=120, format=path.suffix[1:])


def save_figure(fig, out: Path, stem: str) -> list[Path]:
    """Write ``fig`` as PNG and SVG."""
    paths = [out / f"{stem}.{ext}" for ext in ("png", "svg")]
    for path in paths:
        _write(fig, path)
    plt.close(fig)
    return paths


def _pes(table: pd.DataFrame) -> pd.Series:
    return table["array"].str.split("x").map(lambda rc: int(rc[0]) * int(rc[1]))


def _label(row, keys) -> str:
    return ", ".join(f"{k}={row[k]}" for k in keys)


_FLOW_STYLE = {"ws": ("-", "o"), "os": ("--", "s"), "is": (":", "^")}
"""Line style and marker of each dataflow in the sweep figures (colour is the radix)."""
_RADIX_COLOURS = {0: "#7f7f7f", 2: "#0072b2", 4: "#d55e00", 8: "#009e73", 16: "#cc79a7"}
"""Colour of each log base (0: no FP4), Wong's colour-blind-safe palette (Nature Methods 8, 441, 2011)."""


def _radix_colour(radix: float) -> str:
    return _RADIX_COLOURS.get(int(radix), "#000000")


def _short_name(key: str) -> str:
    """A grid field as an axis label names it (``array.dataflow`` -> ``dataflow``)."""
    return key.rsplit(".", 1)[-1].replace("_", " ")


def _short(key: str, value) -> str:
    """One point's value of a grid field on an axis: ``r4`` for a radix, the value otherwise."""
    if key.endswith("radix") and not pd.isna(value):
        return f"r{int(value)}"
    return str(value)


def sweep_figures(table: pd.DataFrame, out: str | Path) -> list[Path]:
    """The figures of a sweep (`fourbit.analysis.sweep`), PNG and SVG in ``out/figures``; those the
    table has the axes for:

    - ``speedup_energy_vs_array``: speed-up and energy ratio against the sweep's baseline chip
      (FP16 by default; without one: speed-up over the fastest smallest array and energy per
      step) against the array shape, a line per configuration (radix as colour, dataflow as
      line style and marker);
    - ``accuracy_vs_radix``: test accuracy of the trained recipes against the log base;
    - ``energy_breakdown``: energy per step by component (stacked bars), one bar per point;
    - ``utilization_per_layer``: MAC utilization per GEMM (layer and phase) of the first point,
      one line per array size among the points that differ from it only in the array.

    Figures of an earlier table in ``out/figures`` are removed first.
    """
    out = Path(out) / "figures"
    out.mkdir(parents=True, exist_ok=True)
    for stale in (*out.glob("*.png"), *out.glob("*.svg")):  # figures of an earlier table
        stale.unlink()
    ok = table[table.status == "ok"].copy()
    if ok.empty:
        return []
    ok["pes"] = _pes(ok)
    paths: list[Path] = []
    keys = [c for c in table.columns[: list(table.columns).index("point_id")]]
    if ok["pes"].nunique() > 1:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.8))
        e_unit, e_factor = unit_for(float(ok.energy_pj.max()), "energy_pj")
        ok["radix_key"] = ok["radix"].fillna(0)  # no FP4 first, then radixes in numeric order
        # one series per configuration apart from the array shape (nothing averaged together)
        series = ["radix_key", "chip_name", "recipe_name", "dataflow",
                  *[k for k in keys if k not in ("array.rows", "array.cols", "array", "array.dataflow",
                                                "log_path.radix", "recipe", "chip")]]
        speed, energy, speed_label, energy_label = _against(ok, Path(out).parent, e_factor, e_unit)
        for values, g in ok.groupby(series, sort=True, dropna=False):
            radix, chip, recipe, flow = values[:4]
            g = g.sort_values("pes")
            label = ", ".join([*([chip] if ok.chip_name.nunique() > 1 else []), str(recipe), flow.upper(),
                               *(f"{_short_name(k)} {v}" for k, v in zip(series[4:], values[4:], strict=True))])
            style = {"color": _radix_colour(radix), "linestyle": _FLOW_STYLE.get(flow, ("-", "o"))[0],
                     "marker": _FLOW_STYLE.get(flow, ("-", "o"))[1], "label": label}
            ax1.plot(g.pes, speed[g.index], **style)
            ax2.plot(g.pes, energy[g.index], **style)
        shapes = ok.drop_duplicates("pes").sort_values("pes")
        for ax, title, ylabel in ((ax1, "Speed-up per training step (higher is better)", speed_label),
                                  (ax2, "Energy per training step (lower is better)", energy_label)):
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(shapes.pes), list(shapes.array))
            ax.minorticks_off()
            ax.set_xlabel("array (rows x cols)")
            ax.set_ylabel(ylabel)
            ax.set_title(title)
            ax.grid(alpha=0.3)
        ax2.set_ylim(0, None)
        if "chip" in energy_label:  # both relative to the baseline chip: mark where it stands
            for ax in (ax1, ax2):
                ax.axhline(1.0, color="black", linewidth=0.8)
        ax1.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        paths += save_figure(fig, out, "speedup_energy_vs_array")
    acc = ok.dropna(subset=["test_accuracy_pct", "radix"])  # the recipes with FP4 gradients have a radix
    if not acc.empty and acc["radix"].nunique() > 1:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        per = acc.groupby(["radix", "tpr"], dropna=False, as_index=False).test_accuracy_pct.first()
        for tpr, g in per.groupby("tpr", dropna=False):
            ax.plot(g.radix, g.test_accuracy_pct, marker="o", linestyle="none" if len(g) == 1 else "-",
                    label="TPR" if tpr is True else "single phase")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(per.radix.unique()), [str(int(r)) for r in sorted(per.radix.unique())])
        ax.set_xlabel("FP4 log base (radix)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("Accuracy vs log base")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        paths += save_figure(fig, out, "accuracy_vs_radix")
    fig, ax = plt.subplots(figsize=(min(max(6.0, 0.32 * len(ok) + 2), 24), 5.5))
    varying = [k for k in keys if ok[k].nunique() > 1] or keys
    shape = "array.rows" in varying and "array.cols" in varying  # shown as one RxC value
    if shape:
        varying = ["array"] + [k for k in varying if k not in ("array.rows", "array.cols")]
    labels = [" ".join(_short(k, r[k]) for k in varying) for _, r in ok.iterrows()]
    e_unit, e_factor = unit_for(float(ok.energy_pj.max()), "energy_pj")
    bottom = pd.Series(0.0, index=ok.index)
    for key, name in _COMPONENTS.items():
        if key in ok:
            ax.bar(range(len(ok)), ok[key] / e_factor, bottom=bottom, label=name)
            bottom += ok[key] / e_factor
    ax.set_xticks(range(len(ok)), labels, rotation=45 if len(ok) > 6 else 0, ha="right" if len(ok) > 6 else "center",
                  fontsize=8 if len(ok) <= 24 else 6)
    ax.set_xlabel(", ".join(_short_name(k) for k in varying))
    ax.set_ylabel(f"energy per training step ({e_unit})")
    ax.set_title("Energy by component")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    paths += save_figure(fig, out, "energy_breakdown")
    paths += _utilization_figure(ok, keys, Path(out).parent / "points", out)
    return paths


def _against(ok: pd.DataFrame, out: Path, e_factor: float, e_unit: str) -> tuple[pd.Series, pd.Series, str, str]:
    """Each point's speed-up and energy, and the axis labels: against the sweep's baseline chip
    (the ``speedup_vs_<chip>`` and ``energy_ratio_vs_<chip>`` columns, described by
    ``out/baseline.csv``) where the table has them; else the speed-up against the fastest of the
    smallest arrays and the energy per step in ``e_unit``."""
    chip = next((c[11:] for c in ok.columns if c.startswith("speedup_vs_")), None)
    if chip is not None and ok[f"speedup_vs_{chip}"].notna().all():
        base = pd.read_csv(out / "baseline.csv").iloc[0] if (out / "baseline.csv").is_file() else None
        what = f"{chip} chip" + (f" ({base['recipe_name']}, {base['array']} {base['dataflow'].upper()})"
                                 if base is not None else "")
        return (ok[f"speedup_vs_{chip}"], ok[f"energy_ratio_vs_{chip}"], f"speed-up vs {what} (x)",
                f"energy ratio vs {what} (x)")
    smallest = ok[ok.pes == ok.pes.min()]
    ref = smallest.loc[smallest.time_s.idxmin()]  # one reference for every series
    return (ref.time_s / ok.time_s, ok.energy_pj / e_factor,
            f"speed-up vs {ref['recipe_name']}, {ref['dataflow'].upper()} at {ref['array']} (x)",
            f"energy per step ({e_unit})")


def _utilization_figure(ok: pd.DataFrame, keys: list[str], points: Path, out: Path) -> list[Path]:
    """PE utilization of every GEMM (layer and phase) of the first point's configuration, one
    marker series per (array shape, dataflow) among the points that differ from it only in
    those."""
    first = ok.iloc[0]
    others = [k for k in keys if k not in ("array.rows", "array.cols", "array", "array.dataflow")]
    same = ok[(ok[others] == first[others]).all(axis=1)] if others else ok
    series = []  # (row, its GEMMs with MACs), each per-layer table read once
    for _, row in same.drop_duplicates(["array", "dataflow"]).iterrows():
        path = points / f"{row.point_id}.layers.parquet"
        if path.is_file():
            df = pd.read_parquet(path)
            series.append((row, df[df.macs > 0]))
    if not series:
        return []
    names = [f"{lay} {ph}" for lay, ph in zip(series[-1][1].layer, series[-1][1].phase, strict=True)]
    fig, ax = plt.subplots(figsize=(min(max(11.0, 0.16 * len(names) + 3), 40), 5.2))  # room for every label
    for row, df in series:
        util = 100 * df.macs / (df.total_cycles * df.peak_macs_per_cycle).clip(lower=1)
        ax.plot(range(len(df)), util, marker=_FLOW_STYLE.get(row.dataflow, ("-", "o"))[1], linestyle="none",
                markersize=4, label=f"{row['array']} {row.dataflow.upper()}")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7 if len(names) <= 80 else 5)
    ax.set_xlim(-0.7, len(names) - 0.3)
    ax.set_xlabel("GEMM (layer and phase, in the order the step runs them)")
    ax.set_ylabel("PE utilization (%)")
    ax.set_ylim(0, 105)
    fixed = ", ".join(f"{_short_name(k)} {first[k]}" for k in others)
    ax.set_title("PE utilization per GEMM" + (f" ({fixed})" if fixed else ""))
    ax.legend(title="array, dataflow", fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out, "utilization_per_layer")


def compare_figure(table: pd.DataFrame, baseline: str, out: str | Path) -> list[Path]:
    """``compare`` (PNG and SVG in ``out``): speed-up and energy ratio of every chip against
    ``baseline``, iso-array beside iso-area (bars grouped by mode, one colour per chip, the
    array shape over each bar). Rows that did not run are left out."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ok = table[table.status == "ok"]
    modes = list(dict.fromkeys(ok["mode"]))
    chips = list(dict.fromkeys(ok["chip"]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    width = 0.8 / max(len(chips), 1)
    colours = ["#0072b2", "#7f7f7f", "#009e73", "#d55e00", "#cc79a7", "#e69f00", "#56b4e9", "#f0e442"]
    for ax, col, title in ((axes[0], f"speedup_vs_{baseline}", f"speed-up vs {baseline} (x)"),
                           (axes[1], f"energy_ratio_vs_{baseline}", f"energy per step vs {baseline} (x)")):
        for j, chip in enumerate(chips):
            rows = [ok[(ok["mode"] == m) & (ok["chip"] == chip)] for m in modes]
            xs = [i + (j - (len(chips) - 1) / 2) * width for i in range(len(modes))]
            vals = [float(r[col].iloc[0]) if len(r) else float("nan") for r in rows]
            bars = ax.bar(xs, vals, width, label=chip, color=colours[j % len(colours)])
            ax.bar_label(bars, [r["array"].iloc[0] if len(r) else "" for r in rows], fontsize=7, padding=2)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_ylim(0, max(1.0, float(ok[col].max())) * 1.25)  # room for the labels and the legend
        ax.set_xticks(range(len(modes)), modes)
        ax.set_ylabel(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_title("Speed-up per training step (higher is better)")
    axes[1].set_title("Energy per training step (lower is better)")
    axes[0].legend(fontsize=8, loc="upper center", ncol=len(chips), frameon=False)
    fig.tight_layout()
    return save_figure(fig, out, "compare")


def ablation_figure(runs: pd.DataFrame, out: str | Path) -> list[Path]:
    """``ablation`` (PNG and SVG in ``out``) from the per-run table of `fourbit.analysis.ablation`:
    each variant's test accuracy (or, for a model without one, its test loss) per seed (dots),
    the spread from the lowest to the highest seed (a line) and the mean (a diamond, labelled);
    the first variant's mean as a dashed reference line."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    acc = runs["test_accuracy_pct"].notna().any()
    metric, name, better = ("test_accuracy_pct", "test accuracy (%)", "higher") if acc else \
        ("test_loss", "test loss", "lower")
    variants = list(dict.fromkeys(runs["variant"]))
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(variants) + 1.8))
    means = []
    for i, variant in enumerate(variants):
        vals = runs.loc[runs["variant"] == variant, metric].astype(float)
        means.append(float(vals.mean()))
        ax.plot([vals.min(), vals.max()], [i, i], color="#0072b2", linewidth=1)
        ax.plot(vals, [i] * len(vals), "o", color="#0072b2", alpha=0.6, markersize=5,
                label="one seed" if i == 0 else None)
        ax.plot(means[-1], i, "D", color="#d55e00", markersize=7, label="mean over the seeds" if i == 0 else None)
        ax.annotate(f"{means[-1]:.2f}", (means[-1], i), textcoords="offset points", xytext=(0, 7), ha="center",
                    fontsize=8)
    ax.axvline(means[0], color="black", linestyle="--", linewidth=0.8)
    ax.set_yticks(range(len(variants)), variants, fontsize=8)
    ax.set_ylim(len(variants) - 0.4, -0.8)  # the first variant on top, room for its label
    ax.set_xlabel(f"{name}; dashed: {variants[0]}'s mean")
    ax.set_title(f"Ablation: {name.split(' (')[0]} per variant ({better} is better)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right" if acc else "upper right")
    fig.tight_layout()
    return save_figure(fig, out, "ablation")


def _minor_log_label(v: float, _pos) -> str:
    """Minor tick labels of a log axis at 2x and 5x each power of ten only."""
    lead = round(v / 10 ** math.floor(math.log10(v))) if v > 0 else 0
    return f"{v:g}" if lead in (2, 5) else ""


def waterfall_figure(explanation):
    """The speed-up and energy waterfalls of an `fourbit.analysis.explain.Explanation`: one
    floating bar per term on a log axis, from the ratio before the term to the ratio after it,
    labelled with its factor; the measured ratio as the last, grey bar. Returns the figure."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for ax, df, title, good_up in ((axes[0], explanation.speedup, "speed-up", True),
                                   (axes[1], explanation.energy, "energy ratio", False)):
        before, labels = 1.0, []
        for i, r in enumerate(df.itertuples()):
            lo, hi = sorted((before, r.ratio))
            colour = "tab:green" if (r.ratio >= before) == good_up else "tab:red"
            ax.barh(i, hi - lo, left=lo, color=colour, height=0.6)
            ax.text(hi * 1.03, i, f"x{r.factor:.3f}", va="center", fontsize=8)
            labels.append(r.term)
            before = r.ratio
        n = len(df)
        ax.barh(n, before - 1.0 if before >= 1 else 1.0 - before, left=min(1.0, before), color="0.5", height=0.6)
        ax.text(max(1.0, before) * 1.03, n, f"{before:.3f}", va="center", fontsize=8, weight="bold")
        ax.set_yticks(range(n + 1), [*labels, "measured"], fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(_minor_log_label))
        ax.tick_params(axis="x", which="both", labelsize=7)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xlabel(f"{title}, {explanation.chip} over {explanation.baseline} (log scale)")
        ax.set_title(f"{title.capitalize()}: each term's factor, cumulative")
        lo = min(df["ratio"].min(), 1.0)
        hi = max(df["ratio"].max(), 1.0)
        ax.set_xlim(lo / 1.3, hi * 1.6)
    fig.tight_layout()
    return fig

"""The 4-bit chip against FP16, INT8 and HFP8 hardware on one workload, iso-array and iso-area.

``compare(source) -> DataFrame`` and ``fourbit compare`` pair each chip preset with the recipe it
is built for (``fourbit`` runs ``int4``, ``fp16`` runs ``fp16``, ``int8`` runs ``int8``, ``hfp8``
runs ``hfp8``), get each recipe's trace the way `fourbit.analysis.sweep` does (trained once and cached, or
re-imported from a SCALE-Sim topology), and simulate every pair twice: on the preset's own array
(iso-array: the same rows x cols as the baseline) and on an array that fits the baseline's PE
area (iso-area; Sun et al. 2020 section 6 compare at iso-area). At iso-area every chip, the
baseline too, runs the fastest of its shapes that fit that area with an aspect ratio of at most
4 (``iso_area = "search"``, `fourbit.hwsim.config.iso_area_shapes`; the metric is the workload's
step time, ties to fewer PEs) or the most square one (``"square"``,
`fourbit.hwsim.config.iso_area`); ``iso_area_shape`` fixes the shapes of some chips instead.
The table has one row per (mode, chip), with the shape used and the number of shapes tried: speed-up and energy ratio against the baseline chip in the same mode,
DRAM bytes, utilization, PE-array area, test accuracy and its difference from the baseline
recipe's (percentage points) where the recipes were trained. Written to ``out/compare.csv``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import Field, model_validator

from fourbit.analysis.jobdir import job_dir
from fourbit.analysis.plots import compare_figure
from fourbit.analysis.sweep import CHIP_RECIPES, Axis, SweepSpec, _execute, _plan
from fourbit.analysis.workloads import Source
from fourbit.hwsim.area import chip_area
from fourbit.hwsim.config import iso_area, iso_area_shapes, load_chip
from fourbit.traces.config import Listed, PathText, StrictModel
from fourbit.traces.files import atomic_write

__all__ = ["CHIP_RECIPES", "Comparison", "compare"]

class Comparison(StrictModel):
    """A comparison: ``chips`` (presets of `CHIP_RECIPES`) against ``baseline`` on ``source``'s
    workload, written to ``out``; ``workers`` local processes or a ``scheduler``."""

    source: Source = Field(description="where the traces come from")
    chips: Listed(str) = Field(("fourbit", "fp16", "int8", "hfp8"), min_length=1,
                               description="chip presets, each with its own recipe")
    baseline: str = Field("fp16", description="the chip the others are compared with")
    out: PathText = Field("compare-out", description="output directory")
    workers: int = Field(1, ge=1, description="local worker processes")
    scheduler: str | None = Field(None, description="a dask.distributed scheduler address, tcp://HOST:PORT")
    iso_area: Literal["search", "square"] = Field(
        "search", description="iso-area array shapes: the fastest of those within the area (aspect <= 4), or the "
                              "most square")
    iso_area_shape: str = Field(
        "", description="fixed iso-area shapes of some chips, e.g. fourbit=29x30,int8=32x28 (the others as --iso-area)")
    fp16_mode: Literal["preset", "separate", "shared"] = Field(
        "preset", description="array.fp16_mode of every chip: each preset's own, or an FP16 FMA of its own, or "
                              "the FP16 mode on the other units' datapath (fourbit.hwsim.area)")

    @model_validator(mode="after")
    def _known_chips(self) -> Comparison:
        if len(set(self.chips)) != len(self.chips):
            raise ValueError(f"compare: chips {self.chips} name a chip twice")
        for c in self.chips:
            if c not in CHIP_RECIPES:
                raise ValueError(f"compare: chip {c!r} has no recipe; chips: {', '.join(CHIP_RECIPES)}")
        if self.baseline not in self.chips:
            raise ValueError(f"compare: the baseline {self.baseline!r} must be one of the chips {self.chips}")
        for chip in self.fixed_shapes():
            if chip not in self.chips:
                raise ValueError(f"compare: iso_area_shape names {chip!r}, which is not among the chips {self.chips}")
        return self

    def fixed_shapes(self) -> dict[str, tuple[int, int]]:
        """``iso_area_shape`` as {chip: (rows, cols)}. Raises ValueError naming a malformed item."""
        out: dict[str, tuple[int, int]] = {}
        for item in filter(None, (part.strip() for part in self.iso_area_shape.split(","))):
            chip, _, shape = item.partition("=")
            rows, _, cols = shape.strip().lower().partition("x")
            if not (rows.isdigit() and cols.isdigit() and int(rows) >= 1 and int(cols) >= 1) or chip.strip() in out:
                raise ValueError(f"compare: iso_area_shape item {item!r} is not CHIP=ROWSxCOLS (each chip once), "
                                 "e.g. fourbit=29x30")
            out[chip.strip()] = (int(rows), int(cols))
        return out


def compare(job: Comparison | Source | None = None, *, progress: bool = True, overwrite: bool = False,
            **fields) -> pd.DataFrame:
    """Compare ``chips`` against ``baseline`` on a workload; returns the table.

    ``job`` is a `Comparison`, or the `fourbit.analysis.workloads.Source` of one whose other
    fields (``chips``, ``baseline``, ``out``, ``workers``, ``scheduler``) are given as keywords
    (``compare(Source(trace="runs/x"), out="cmp")``). The same comparison on the same
    ``out`` continues (trained runs and simulated points are reused); another job's directory is
    refused unless ``overwrite`` (`fourbit.analysis.jobdir`).

    Raises
    ------
    ConfigError
        A chip without a known recipe (see `CHIP_RECIPES`), a chip named twice, a baseline not
        among the chips, ``out`` refused, or anything `fourbit.analysis.sweep.sweep` rejects;
        before any work.
    """
    if not isinstance(job, Comparison):
        job = Comparison(**({"source": job} if job is not None else {}), **fields)
    elif fields:
        job = job.replace(**fields)
    chips, baseline = job.chips, job.baseline
    over = {} if job.fp16_mode == "preset" else {"array.fp16_mode": job.fp16_mode}
    loaded = {c: load_chip(c, over) for c in chips}
    ref = loaded[baseline]
    fixed = job.fixed_shapes()
    within = {}
    for c in chips:
        if c in fixed:
            iso_area(loaded[c], ref, fixed[c])  # raises when the shape exceeds the area
            within[c] = [fixed[c]]
        elif job.iso_area == "search":
            within[c] = iso_area_shapes(loaded[c], ref)
        else:
            a = iso_area(loaded[c], ref).array
            within[c] = [(a.rows, a.cols)]
    shapes = {"iso-array": {c: [(loaded[c].array.rows, loaded[c].array.cols)] for c in chips}, "iso-area": within}
    fields = ("chip", "recipe", "array.rows", "array.cols", *over)
    specs, plans = {}, {}
    for mode, arrays in shapes.items():
        values = tuple((c, CHIP_RECIPES[c], rows, cols, *over.values()) for c in chips for rows, cols in arrays[c])
        specs[mode] = SweepSpec(source=job.source, out=job.out, workers=job.workers, scheduler=job.scheduler,
                                grid=(Axis(fields=fields, values=values),), baseline=None)
        plans[mode] = _plan(specs[mode])
    identity = {**job.model_dump(mode="json", exclude={"out", "workers", "scheduler", "source"}),
                "source": job.source.identity()}
    with job_dir(job.out, "compare", identity, overwrite=overwrite) as out:
        tables = []
        for mode, spec in specs.items():
            t = _fastest_shape(_execute(spec, plans[mode], out, f"results_{mode}", progress))
            t.insert(0, "mode", mode)
            tables.append(t)
        return _finish(pd.concat(tables, ignore_index=True), baseline, out, over)


def _fastest_shape(table: pd.DataFrame) -> pd.DataFrame:
    """One row per chip: the shape with the shortest step (``time_s``; then fewer PEs, then
    fewer rows), among the points that ran; with ``shapes_tried``."""
    rows = []
    for _, g in table.groupby("chip", sort=False):
        ok = g[g.status == "ok"] if "time_s" in g else g.iloc[0:0]
        if ok.empty:
            best = g.iloc[0].copy()
        else:
            keys = ok.assign(_pes=ok["array.rows"] * ok["array.cols"])
            best = keys.sort_values(["time_s", "_pes", "array.rows"], kind="stable").iloc[0].drop("_pes")
        best["shapes_tried"] = len(g)
        rows.append(best)
    return pd.DataFrame(rows).reset_index(drop=True)


def _finish(table: pd.DataFrame, baseline: str, out: Path, over: dict) -> pd.DataFrame:
    rows = []
    for _, r in table.iterrows():
        chip = load_chip(r["chip"], {"array.rows": int(r["array.rows"]), "array.cols": int(r["array.cols"]), **over})
        area = chip_area(chip)
        rows.append({
            "mode": r["mode"], "chip": r["chip"], "recipe": r["recipe"], "array": r["array"],
            "shapes_tried": int(r["shapes_tried"]),
            "pe_array_mm2": float(area[area.block == "pe_array"].area_mm2.iloc[0]),
            "status": r["status"], "time_per_step_us": r.get("time_s", float("nan")) * 1e6,
            "energy_per_step_uj": r.get("energy_pj", float("nan")) * 1e-6,
            "dram_bytes_per_step": r.get("dram_read_bytes", float("nan")) + r.get("dram_write_bytes", float("nan")),
            "utilization": r.get("utilization", float("nan")), "test_accuracy_pct": r.get("test_accuracy_pct"),
        })
    df = pd.DataFrame(rows)
    for _, g in df.groupby("mode", sort=False):
        base = g[g.chip == baseline].iloc[0]
        df.loc[g.index, f"speedup_vs_{baseline}"] = base.time_per_step_us / g.time_per_step_us
        df.loc[g.index, f"energy_ratio_vs_{baseline}"] = g.energy_per_step_uj / base.energy_per_step_uj
        df.loc[g.index, f"accuracy_delta_vs_{baseline}_pts"] = g.test_accuracy_pct - base.test_accuracy_pct
    order = ["mode", "chip", "recipe", "array", "shapes_tried", "pe_array_mm2", "time_per_step_us", f"speedup_vs_{baseline}",
             "energy_per_step_uj", f"energy_ratio_vs_{baseline}", "dram_bytes_per_step", "utilization",
             "test_accuracy_pct", f"accuracy_delta_vs_{baseline}_pts", "status"]
    df = df[order]
    with atomic_write(out / "compare.csv") as tmp:
        df.to_csv(tmp, index=False)
    compare_figure(df, baseline, out / "figures")
    return df

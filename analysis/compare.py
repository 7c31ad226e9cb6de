"""The 4-bit chip against FP16, INT8 and HFP8 hardware on one workload, iso-array and iso-area.

``compare(source) -> DataFrame`` and ``fourbit compare`` pair each chip preset with the recipe it
is built for (``fourbit`` runs ``int4``, ``fp16`` runs ``fp16``, ``int8`` runs ``int8``, ``hfp8``
runs ``hfp8``), get each recipe's trace the way `fourbit.analysis.sweep` does (trained once and cached, or
re-imported from a SCALE-Sim topology), and simulate every pair twice: on the preset's own array
(iso-array: the same rows x cols as the baseline) and on the array that fits the baseline's PE
area (iso-area, `fourbit.hwsim.iso_area`; Sun et al. 2020 section 6 compare at iso-area). The table has
one row per (mode, chip): speed-up and energy ratio against the baseline chip in the same mode,
DRAM bytes, utilization, PE-array area, test accuracy and its difference from the baseline
recipe's (percentage points) where the recipes were trained. Written to ``out/compare.csv``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fourbit.analysis.run import check_writable, write_csv
from fourbit.analysis.sweep import Axis, Source, SweepSpec, sweep
from fourbit.hwsim.config import load_chip
from fourbit.hwsim.config import iso_area
from fourbit.hwsim.energy import chip_area
from fourbit.traces.errors import ConfigError

__all__ = ["CHIP_RECIPES", "compare"]

CHIP_RECIPES = {"fourbit": "int4", "fp16": "fp16", "int8": "int8", "hfp8": "hfp8"}
"""Each chip preset and the recipe whose numerics it implements."""


def compare(source: Source, *, chips: tuple[str, ...] = ("fourbit", "fp16", "int8", "hfp8"),
            baseline: str = "fp16", out: str | Path = "compare-out", workers: int = 1,
            scheduler: str | None = None, progress: bool = True) -> pd.DataFrame:
    """Compare ``chips`` against ``baseline`` on ``source``'s workload; returns the table.

    Raises
    ------
    ConfigError
        A chip without a known recipe (see `CHIP_RECIPES`), a chip named twice, a baseline not
        among the chips, or
        anything `fourbit.analysis.sweep.sweep` rejects; before any work.
    """
    chips = tuple(c.strip() for c in chips)
    baseline = baseline.strip()
    if len(set(chips)) != len(chips):
        raise ConfigError(f"compare: chips {chips} name a chip twice")
    for c in chips:
        if c not in CHIP_RECIPES:
            raise ConfigError(f"compare: chip {c!r} has no recipe; chips: {', '.join(CHIP_RECIPES)}")
    if baseline not in chips:
        raise ConfigError(f"compare: the baseline {baseline!r} must be one of the chips {chips}")
    out = check_writable(out)
    ref = load_chip(baseline)
    shapes = {"iso-array": {c: load_chip(c).array for c in chips},
              "iso-area": {c: iso_area(load_chip(c), ref).array for c in chips}}
    tables = []
    for mode, arrays in shapes.items():
        values = tuple((c, CHIP_RECIPES[c], arrays[c].rows, arrays[c].cols) for c in chips)
        spec = SweepSpec(source=source, grid=(Axis(("chip", "recipe", "array.rows", "array.cols"), values),),
                         out=str(out), workers=workers, scheduler=scheduler, table_name=f"results_{mode}")
        t = sweep(spec, progress=progress)
        t.insert(0, "mode", mode)
        tables.append(t)
    table = pd.concat(tables, ignore_index=True)
    return _finish(table, baseline, out)


def _finish(table: pd.DataFrame, baseline: str, out: Path) -> pd.DataFrame:
    rows = []
    for _, r in table.iterrows():
        chip = load_chip(r["chip"], {"array.rows": int(r["array.rows"]), "array.cols": int(r["array.cols"])})
        area = chip_area(chip)
        rows.append({
            "mode": r["mode"], "chip": r["chip"], "recipe": r["recipe"], "array": r["array"],
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
    order = ["mode", "chip", "recipe", "array", "pe_array_mm2", "time_per_step_us", f"speedup_vs_{baseline}",
             "energy_per_step_uj", f"energy_ratio_vs_{baseline}", "dram_bytes_per_step", "utilization",
             "test_accuracy_pct", f"accuracy_delta_vs_{baseline}_pts", "status"]
    df = df[order]
    write_csv(df, out / "compare.csv")
    return df

"""Comparison tables: recipes on chips, against a baseline chip running the baseline recipe."""

from __future__ import annotations

import pandas as pd

from fourbit.hwsim.report import SimReport

__all__ = ["comparison_row", "comparison_table"]


def comparison_row(recipe: str, chip: str, accuracy: float | None, report: SimReport) -> dict:
    """One row: accuracy (%), cycles, time (us at the chip clock), energy (uJ) and DRAM bytes of a
    training step."""
    t = report.totals()
    return {
        "recipe": recipe,
        "chip": chip,
        "test_accuracy_pct": None if accuracy is None else 100.0 * accuracy,
        "cycles_per_step": int(t["total_cycles"]),
        "time_per_step_us": float(t["time_s"] * 1e6),
        "energy_per_step_uj": float(t["energy_pj"] * 1e-6),
        "datapath_energy_per_step_uj": float(t["datapath_energy_pj"] * 1e-6),
        "dram_bytes_per_step": float(t["dram_read_bytes"] + t["dram_write_bytes"]),
        "utilization": float(t["utilization"]),
    }


def comparison_table(rows: list[dict], baseline: int = 0, baseline_name: str = "fp16") -> pd.DataFrame:
    """Rows of `comparison_row` with ``speedup_vs_<baseline_name>`` (baseline time / time),
    ``energy_ratio_vs_<baseline_name>`` (energy / baseline energy) and
    ``accuracy_delta_vs_<baseline recipe>_pts`` (test accuracy - the baseline row's, in points,
    named after its recipe: accuracy belongs to the recipe) against row ``baseline``."""
    df = pd.DataFrame(rows)
    base = df.iloc[baseline]
    df.insert(df.columns.get_loc("time_per_step_us") + 1, f"speedup_vs_{baseline_name}",
              base["time_per_step_us"] / df["time_per_step_us"])
    df.insert(df.columns.get_loc("energy_per_step_uj") + 1, f"energy_ratio_vs_{baseline_name}",
              df["energy_per_step_uj"] / base["energy_per_step_uj"])
    df.insert(df.columns.get_loc("test_accuracy_pct") + 1, f"accuracy_delta_vs_{base['recipe']}_pts",
              df["test_accuracy_pct"] - base["test_accuracy_pct"])  # accuracy is the recipe's, not the chip's
    df["dram_bytes_per_step"] = df["dram_bytes_per_step"].round().astype("int64")
    return df

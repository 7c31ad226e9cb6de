"""Matplotlib figures of fourbit's results (PNG; the Agg backend, no screen needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from hwsim.report import SimReport  # noqa: E402

__all__ = ["main_job_figure"]

_COMPONENTS = {
    "energy_mac_pj": "MAC", "energy_acc_pj": "accumulate", "energy_reg_pj": "registers",
    "energy_sram_pj": "SRAM", "energy_dram_pj": "DRAM", "energy_scaling_pj": "scaling unit",
    "energy_leakage_pj": "leakage",
}


def main_job_figure(table: pd.DataFrame, reports: list[SimReport], path: str | Path) -> Path:
    """Cycles per step (compute, memory stall, scaling-unit stall) and energy per step by
    component, one bar per (recipe, chip) row of ``table``; written to ``path`` (PNG)."""
    labels = [f"{r.recipe}\non {r.chip}" for r in table.itertuples()]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 5.2))
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
    ax2.set_ylabel("uJ per training step")
    ax2.set_title("Energy")
    ax2.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=4, frameon=False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

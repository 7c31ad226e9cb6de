"""Validation anchors: modelled peak throughput and efficiency next to published chip figures.

IBM RaPiD (Agrawal et al., ISSCC 2021 9.1; Oh et al., JSSC 57(1) 2022; reference/hardware.md
section 3.1): 7 nm, 4 cores; 104.9 TOPS INT4 and 26.2 TFLOPS HFP8 at 1.6 GHz, 0.75 V; 16.9 TOPS/W
INT4 and 3.58 TFLOPS/W HFP8 at 1 GHz, 0.55 V (JSSC). Our energy table is for nominal 0.75 V, so
the modelled TOPS/W is also shown scaled by (0.75/0.55)^2, the dynamic-energy voltage rule of
hardware.md section 6.
"""

from __future__ import annotations

import pandas as pd

from fourbit.hwsim.config import ChipConfig
from fourbit.hwsim.energy import peak_throughput
from fourbit.traces import schema
from fourbit.traces.io import Trace

__all__ = ["PUBLISHED", "anchor_table", "modelled_tops_per_w"]

PUBLISHED = {
    "rapid": {
        "int4": {"peak_tops": 104.9, "tops_per_w": 16.9, "at": "1.6 GHz peak; TOPS/W at 1 GHz, 0.55 V (JSSC 2022)"},
        "fp8": {"peak_tops": 26.2, "tops_per_w": 3.58, "at": "HFP8; same conditions"},
    },
}
_FORMATS = {"int4": ("uint4", "int4", "int32"), "fp8": ("fp8_e4m3", "fp8_e4m3", "fp16/g2/c64"),
            "fp16": ("fp16", "fp16", "fp32/g1"), "fp4xint4": ("fp4_r4_e3", "int4", "fp16/g4/c64"),
            "int8": ("int8", "int8", "int32")}
VOLTAGE_SCALE = (0.55 / 0.75) ** 2


def modelled_tops_per_w(chip: ChipConfig, unit: str, size: int = 2048) -> tuple[float, float]:
    """(TOPS/W of the whole chip, TOPS/W without DRAM) on a compute-bound size^3 GEMM run by
    ``unit`` (2 ops per MAC; energy from the simulation, leakage included)."""
    from fourbit.hwsim.engine import simulate

    a, b, acc = _FORMATS[unit]
    row = {"step": 0, "layer": "gemm", "layer_type": "matmul", "phase": "fwd", "M": size * chip.chip.cores,
           "N": size, "K": size, "groups": 1, "a_format": a, "b_format": b, "acc_format": acc, "out_format": "fp16"}
    trace = Trace({"batch_size": 1}, schema.from_records("gemms", [row]), schema.from_records("ops", []),
                  schema.from_records("metrics", []))
    t = simulate(trace, chip).totals()
    ops = 2 * t["macs"]
    return ops / t["energy_pj"], ops / (t["energy_pj"] - t["energy_dram_pj"])


def anchor_table(chip: ChipConfig) -> pd.DataFrame:
    """Peak TOPS per unit and modelled TOPS/W, with the published figures of the chip the preset
    imitates (where there are any: ``rapid``)."""
    rows = []
    published = PUBLISHED.get(chip.chip.name, {})
    for r in peak_throughput(chip).itertuples():
        whole, no_dram = modelled_tops_per_w(chip, r.unit)
        pub = published.get(r.unit, {})
        rows.append({"unit": r.unit, "peak_tops": r.peak_tops, "published_peak_tops": pub.get("peak_tops"),
                     "tops_per_w": whole, "tops_per_w_no_dram": no_dram,
                     "tops_per_w_no_dram_at_0.55V": no_dram / VOLTAGE_SCALE,
                     "published_tops_per_w": pub.get("tops_per_w"), "published_at": pub.get("at")})
    return pd.DataFrame(rows)

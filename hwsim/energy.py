"""Energy per event, every number with its source (areas: `fourbit.hwsim.area`).

The default table is the 7 nm table of ``reference/hardware.md`` section 6 (published 7 nm
operation energies of Jouppi et al., ISCA 2021, Table 2, where they exist; otherwise derived by
the stated scaling rules). The alternative ``45nm`` table is Horowitz, ISSCC 2014 (logic without
a Horowitz entry: the 7 nm value x 3, the inverse of hardware.md's logic porting rule).

Source tags: PUB-V published and seen, PUB-R published and quoted from memory, DER derived by
arithmetic, ASM engineering assumption (hardware.md "How much to trust each number").
Energies are dynamic energy in pJ per event; per-bit entries are per bit moved (``reg.bit`` per
bit latched, `fourbit.hwsim.registers`). The two ``leak.*`` entries are leakage energy per ns of
a unit of area (logic, per um^2) or storage (SRAM, per bit), at nominal voltage; the 45 nm table
keeps them (no 45 nm figure at hand).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fourbit.hwsim.area import PARTS, chip_area
from fourbit.traces.errors import ConfigError

__all__ = ["EnergyEntry", "energy_table", "leakage_by_block", "leakage_pj_per_cycle", "peak_throughput",
           "sram_pj_per_bit"]


@dataclass(frozen=True)
class EnergyEntry:
    event: str
    pj: float
    source: str
    tag: str


_7NM = [
    EnergyEntry("mac.int4", 0.030, "hardware.md 6: int8 mult 0.07*(4/8)^2 + ~12b adder-tree share (Jouppi ISCA'21 Tab.2)", "DER"),
    EnergyEntry("shift_add.shifter_per_bit_stage", 0.016 / 48, "hardware.md 2, 6: shifter 0.012-0.0175 pJ for a 16-bit, 3-stage shifter (radix 4, e = 3)", "DER"),
    EnergyEntry("shift_add.tree_per_bit", 0.019 / 16, "hardware.md 6: 16-20b adder-tree share 0.019 pJ of the FP4xINT4 shift-add", "DER"),
    EnergyEntry("mac.int8", 0.10, "Jouppi ISCA'21 Tab.2: int8 mult 0.07 + int32 add 0.03", "PUB-V"),
    EnergyEntry("mac.fp8", 0.26, "hardware.md 6: fp8 mult 0.10 (fit on Jouppi FP16/BF16 mult) + fp16 add 0.16", "DER"),
    EnergyEntry("mac.fp16", 0.72, "Jouppi ISCA'21 Tab.2: fp16 mult 0.34 + fp32 add 0.38 (FMA fp16 -> fp32 accumulator)", "PUB-V"),
    EnergyEntry("add.int32", 0.03, "Jouppi ISCA'21 Tab.2", "PUB-V"),
    EnergyEntry("add.fp16", 0.16, "Jouppi ISCA'21 Tab.2", "PUB-R"),
    EnergyEntry("add.dlfloat16", 0.16, "as fp16 (1-6-9 vs 1-5-10: same width)", "ASM"),
    EnergyEntry("add.fp32", 0.38, "Jouppi ISCA'21 Tab.2", "PUB-V"),
    EnergyEntry("reg.bit", 0.003, "hardware.md 6: Aladdin 40nm register 0.009 pJ/bit / 3 (one latch of one bit)", "DER"),
    EnergyEntry("leak.logic.um2_ns", 0.10 * 0.72 / PARTS["lane.fp16"].um2,
                "logic leakage per um^2 per ns: 10 % of dynamic at full rate (hardware.md 6, ASM) taken on the FP16 "
                "FMA, 0.72 pJ per cycle at 1 GHz (Jouppi Tab.2) over its 485.33 um^2 (area.PARTS lane.fp16): "
                "148 nW/um^2 = 0.148 W/mm^2 at nominal voltage", "DER"),
    EnergyEntry("leak.sram.bit_ns", 20e-12 * 1e12 / 1e9,
                "SRAM leakage per bit per ns: 20 pW per high-density bitcell at nominal voltage (a 7 nm 6T cell "
                "leaks of the order of 10-50 pA at 0.75 V; no published figure at hand)", "ASM"),
    EnergyEntry("sram.read_bit.8KB", 7.5 / 64, "Jouppi ISCA'21 Tab.2: 8 KB 7.5 pJ per 64-bit read", "PUB-R"),
    EnergyEntry("sram.read_bit.32KB", 8.5 / 64, "Jouppi ISCA'21 Tab.2: 32 KB 8.5 pJ per 64-bit read", "PUB-R"),
    EnergyEntry("sram.read_bit.1MB", 14 / 64, "Jouppi ISCA'21 Tab.2: 1 MB 14 pJ per 64-bit read", "PUB-R"),
    EnergyEntry("sram.read_bit.8MB", 0.40, "hardware.md 6: the 1 MB bank (64-bit port) + 2-3 mm of global wire "
                "at 0.05-0.1 pJ/bit/mm", "DER"),
    EnergyEntry("sram.write_factor", 1.15, "hardware.md 6: writes 1.1-1.2x reads", "ASM"),
    EnergyEntry("dram.bit.hbm2e", 4.0, "Jouppi Tab.2 HBM2 250-450 pJ/64b; Samsung HBM3E 3.9 pJ/b", "PUB-R"),
    EnergyEntry("dram.bit.lpddr4", 8.0, "hardware.md 1.3: LPDDR3 I/O 3.7, LPDDR4 13-14 pJ/b; mid value", "ASM"),
    EnergyEntry("dram.bit.ddr4", 20.0, "Jouppi Tab.2 DDR3/4 1300 pJ/64b", "PUB-R"),
    EnergyEntry("op.maxabs", 0.015, "hardware.md 6: |x| + 16b compare ~ 16b add", "DER"),
    EnergyEntry("op.compare", 0.015, "a 16-bit compare/select, as op.maxabs", "ASM"),
    EnergyEntry("op.scale_pow2", 0.005, "hardware.md 6: 5-8b exponent add", "DER"),
    EnergyEntry("op.mul_fp16", 0.34, "Jouppi ISCA'21 Tab.2 fp16 mult", "PUB-V"),
    EnergyEntry("op.mul_fp32", 1.31, "Jouppi ISCA'21 Tab.2 fp32 mult", "PUB-V"),
    EnergyEntry("op.add_fp32", 0.38, "Jouppi ISCA'21 Tab.2 fp32 add", "PUB-V"),
    EnergyEntry("op.quantize_fp4", 0.02, "hardware.md 6: exponent extract + rounding compare + 3b clamp", "DER"),
    EnergyEntry("op.quantize_int", 0.01, "hardware.md 6: round + clamp after the scale multiply", "DER"),
    EnergyEntry("op.quantize_float", 0.01, "round a float to a narrower float: as op.quantize_int", "ASM"),
    EnergyEntry("op.scale_factor", 0.1, "hardware.md 6: log2(maxabs) -> scale, per tensor", "ASM"),
]

_45NM_OVERRIDES = {
    "mac.int4": (0.08, "Horowitz ISSCC'14: 8b mult 0.2 * (4/8)^2 + 8b add 0.03 (hardware.md 6 note)", "DER"),
    "mac.int8": (0.3, "Horowitz ISSCC'14: 8b mult 0.2 + 32b add 0.1", "PUB-V"),
    "mac.fp16": (2.0, "Horowitz ISSCC'14: 16b FP mult 1.1 + 32b FP add 0.9", "PUB-V"),
    "add.int32": (0.1, "Horowitz ISSCC'14", "PUB-V"),
    "add.fp16": (0.4, "Horowitz ISSCC'14", "PUB-V"),
    "add.dlfloat16": (0.4, "as fp16", "ASM"),
    "add.fp32": (0.9, "Horowitz ISSCC'14", "PUB-V"),
    "reg.bit": (0.009, "Aladdin 40nm register", "PUB-V"),
    "sram.read_bit.8KB": (10 / 64, "Horowitz ISSCC'14: 8 KB cache 10 pJ/64b", "PUB-V"),
    "sram.read_bit.32KB": (20 / 64, "Horowitz ISSCC'14: 32 KB cache 20 pJ/64b", "PUB-V"),
    "sram.read_bit.1MB": (100 / 64, "Horowitz ISSCC'14: 1 MB 100 pJ/64b", "PUB-V"),
    "sram.read_bit.8MB": (2.8, "1 MB value + global wire (x1.8 as in the 7 nm table)", "ASM"),
    "dram.bit.hbm2e": (4.0, "as 7 nm (DRAM does not scale with logic)", "PUB-R"),
    "dram.bit.lpddr4": (8.0, "as 7 nm", "ASM"),
    "dram.bit.ddr4": (20.0, "Horowitz ISSCC'14: 1.3-2.6 nJ/64b", "PUB-V"),
    "op.mul_fp16": (1.1, "Horowitz ISSCC'14", "PUB-V"),
    "op.mul_fp32": (3.7, "Horowitz ISSCC'14", "PUB-V"),
    "op.add_fp32": (0.9, "Horowitz ISSCC'14", "PUB-V"),
}


def _rows(table: str) -> list[EnergyEntry]:
    if table == "7nm":
        return list(_7NM)
    if table == "45nm":
        out = []
        for e in _7NM:
            if e.event in _45NM_OVERRIDES:
                pj, src, tag = _45NM_OVERRIDES[e.event]
                out.append(EnergyEntry(e.event, pj, src, tag))
            elif e.event == "sram.write_factor" or e.event.startswith("leak."):
                out.append(e)
            else:
                out.append(EnergyEntry(e.event, e.pj * 3, f"7 nm x 3 (logic porting rule, hardware.md 6): {e.source}", "DER"))
        return out
    raise ConfigError(f"energy.table = {table!r} is out of range: allowed ('7nm', '45nm')")


def energy_table(table: str = "7nm", overrides: dict | None = None) -> dict[str, float]:
    """{event: pJ} for ``table`` with ``overrides`` (energy.overrides of the chip) applied.

    Raises ConfigError for an unknown table or an override of an unknown event.
    """
    values = {e.event: e.pj for e in _rows(table)}
    for k, v in (overrides or {}).items():
        if k not in values:
            raise ConfigError(f"energy.overrides.{k}: unknown event; events: {', '.join(values)}")
        values[k] = float(v)
    return values


def sram_pj_per_bit(capacity_bytes: float, table: dict[str, float], write: bool = False) -> float:
    """Read (or write) energy per bit of an SRAM of ``capacity_bytes``: log-linear in capacity
    between the 8 KB, 32 KB, 1 MB and 8 MB anchors of the table, flat outside them. The anchors
    up to 1 MB are one source at one port width (64-bit reads, Jouppi et al. ISCA 2021 Table 2;
    Horowitz ISSCC 2014 for the 45 nm table), so the slope against capacity is that source's."""
    anchors = [(8 * 1024, table["sram.read_bit.8KB"]), (32 * 1024, table["sram.read_bit.32KB"]),
               (1 << 20, table["sram.read_bit.1MB"]), (8 << 20, table["sram.read_bit.8MB"])]
    x = math.log2(max(capacity_bytes, 1))
    xs = [math.log2(a) for a, _ in anchors]
    ys = [v for _, v in anchors]
    pj = float(np.interp(x, xs, ys))
    return pj * table["sram.write_factor"] if write else pj


def leakage_by_block(chip, table: dict[str, float]) -> pd.DataFrame:
    """Leakage power of each block of ``chip`` (all cores): block, area_mm2, leakage_mw, rule.
    Logic blocks (the PE array, the scaling unit) leak ``leak.logic.um2_ns`` per um^2 of their
    `fourbit.hwsim.area.chip_area`; an SRAM buffer leaks ``leak.sram.bit_ns`` per bit it
    stores. With ``energy.leakage = false`` every row is 0."""
    on = chip.energy.leakage
    rows = []
    for r in chip_area(chip).itertuples():
        if r.block.startswith("sram_"):
            bits = getattr(chip.sram, f"{r.block[5:]}_bytes") * 8 * chip.chip.cores
            pj_ns, rule = bits * table["leak.sram.bit_ns"], f"{bits:,} bits x leak.sram.bit_ns"
        else:
            pj_ns, rule = r.area_mm2 * 1e6 * table["leak.logic.um2_ns"], "area x leak.logic.um2_ns"
        rows.append((r.block, r.area_mm2, pj_ns * on, rule))  # 1 pJ/ns = 1 mW
    return pd.DataFrame(rows, columns=["block", "area_mm2", "leakage_mw", "rule"])


def leakage_pj_per_cycle(chip, table: dict[str, float]) -> float:
    """Leakage energy of the whole chip per clock cycle, pJ (`leakage_by_block` over the clock)."""
    return float(leakage_by_block(chip, table)["leakage_mw"].sum()) * 1e9 / chip.array.clock_hz  # mW x ns


def peak_throughput(chip) -> pd.DataFrame:
    """Peak MACs per cycle and TOPS (2 ops per MAC) of each unit of the chip, all cores."""
    rows = []
    for kind in chip.units:
        macs = chip.array.rows * chip.array.cols * chip.unit_macs_per_pe(kind) * chip.chip.cores
        rows.append((kind, macs, 2 * macs * chip.array.clock_hz / 1e12))
    return pd.DataFrame(rows, columns=["unit", "peak_macs_per_cycle", "peak_tops"])

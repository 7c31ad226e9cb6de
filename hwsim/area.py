"""Area from parts: each PE is the sum of the units it has, its registers and an overhead; the
chip adds its SRAM buffers and the scaling unit. Every number carries its source.

The unit areas are 45 nm synthesis figures (Horowitz, ISSCC 2014; Aladdin's 40 nm register)
scaled to 7 nm by the standard-cell area ratio of reference/hardware.md section 6, with the width
rules of its section 2 (multiplier area ~ n^2, adder area ~ n). None is fitted to a PE area: the
PE's area follows from them (`pe_parts`). Source tags as in `fourbit.hwsim.energy`: PUB-V
published and seen, DER derived by arithmetic, ASM engineering assumption.

Two things are design choices rather than numbers, and are config fields:

- ``array.fp16_mode``: a chip whose PE has lower-precision units and an FP16 mode either builds
  that mode as an FP16 FMA of its own (``separate``, the default: IBM's RaPiD runs INT4 on a
  fixed-point pipeline separate from its floating-point one, Oh et al., JSSC 2022, abstract;
  hardware.md 3.1) or runs it on the other units' datapath at no extra area (``shared``: what Sun
  et al. 2020 imply when they give the 4-bit PE 0.55 of an FP16 PE while it also runs FP16
  layers; hardware.md 5).
- ``array.pe_area_um2``: unset, the PE area is the sum of its parts; set, it overrides that sum
  (the area table says so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

__all__ = ["LOGIC_45NM_TO_7NM", "PARTS", "AreaPart", "chip_area", "pe_area_um2", "pe_parts"]

LOGIC_45NM_TO_7NM = 12.0
"""Logic area 45 nm / 7 nm: NAND2_X1 0.80 um^2 (Nangate45) against 0.06-0.09 um^2 for 7 nm-class
cells, a ratio of 10-15 (hardware.md 6; the 7 nm cell areas recalled, unverified): DER, mid value."""


@dataclass(frozen=True)
class AreaPart:
    """One part of a PE: its area at 7 nm (um^2 per product lane, per register bit, or a
    fraction), where it comes from and how far to trust it."""

    name: str
    um2: float
    source: str
    tag: str


def _scaled(um2_45nm: float) -> float:
    return um2_45nm / LOGIC_45NM_TO_7NM


# Horowitz ISSCC 2014, 45 nm (hardware.md 1.1, PUB-V): 8b int add 36, 16b int add 67, 32b int add
# 137, 16b FP add 1,360, 32b FP add 4,184, 8b int mult 282, 16b FP mult 1,640 um^2.
PARTS: dict[str, AreaPart] = {p.name: p for p in (
    AreaPart("lane.int4", _scaled(282 * (4 / 8) ** 2 + 36 * 12 / 8),
             "INT4 multiplier: Horowitz 8b mult 282 um^2 x (4/8)^2 (area ~ n^2, hardware.md 2) + its share of the "
             "adder tree, a 12-bit adder (8b add 36 um^2 x 12/8, area ~ n); / 12 for 7 nm", "DER"),
    AreaPart("lane.fp4xint4", _scaled(0.85 * 282 * (4 / 8) ** 2 + 67),
             "radix 4, e = 3: a 3-stage shifter of 0.85 x an INT4 multiplier (gate counts 70-80 vs 80-100 NAND2, "
             "hardware.md 2) + a 16-bit adder-tree share (Horowitz 16b add 67 um^2); / 12 for 7 nm; other radixes "
             "scale by `LogPath.area_factor`", "DER"),
    AreaPart("lane.int8", _scaled(282 + 137),
             "INT8 MAC: Horowitz 8b mult 282 + 32b add 137 um^2; / 12 for 7 nm", "DER"),
    AreaPart("lane.fp8", _scaled(1640 * 0.10 / 0.34 + 1360),
             "FP8 FMA: an E4M3 multiplier at the FP16 multiplier's area (Horowitz 1,640 um^2) x 0.10/0.34, the energy "
             "ratio of the a*M^2 + b fit (hardware.md 2; area taken to follow energy: ASM) + a 16b FP add (1,360 "
             "um^2); / 12 for 7 nm", "ASM"),
    AreaPart("lane.fp16", _scaled(1640 + 4184),
             "FP16 FMA into an FP32 accumulator: Horowitz 16b FP mult 1,640 + 32b FP add 4,184 um^2; / 12 for 7 nm",
             "DER"),
    AreaPart("register.bit", 5.98 / LOGIC_45NM_TO_7NM,
             "Aladdin 40 nm register 5.98 um^2 per bit (hardware.md 1.6, PUB-V), taken as 45 nm; / 12 for 7 nm", "DER"),
    AreaPart("pe.overhead", 0.10,
             "control, clock and local wiring of a PE: 10 % of its units and registers", "ASM"),
)}

OPERAND_BITS = {"int4": 4, "fp4xint4": 4, "int8": 8, "fp8": 8, "fp16": 16}
"""Bits of each operand a unit kind takes (INT4 x INT4, INT4 x FP4, INT8, FP8, FP16)."""
ACCUMULATOR_BITS = {"int32": 32, "fp32": 32, "fp16": 16, "dlfloat16": 16}


def _lane_um2(kind: str, chip) -> float:
    um2 = PARTS[f"lane.{kind}"].um2
    if kind == "fp4xint4":
        from fourbit.hwsim.blocks.log_path import LogPath

        um2 *= LogPath(chip.log_path).area_factor()
    return um2


def _has_datapath(kind: str, chip) -> bool:
    """Whether unit ``kind`` adds a datapath of its own: every unit, except an FP16 mode that
    ``array.fp16_mode = "shared"`` runs on the PE's other units."""
    return not (kind == "fp16" and len(chip.units) > 1 and chip.array.fp16_mode == "shared")


def register_bits(chip) -> int:
    """Register bits of one PE: for each unit, its p streamed and p stationary operands and the
    partial sum it forwards (p x (a + b) + accumulator bits); the modes share the registers, so
    the largest of the units."""
    return max(chip.unit_macs_per_pe(k) * 2 * OPERAND_BITS[k] + ACCUMULATOR_BITS[u.accumulator]
               for k, u in chip.units.items())


def pe_parts(chip) -> pd.DataFrame:
    """The parts of one PE of ``chip``: part, count (product lanes, register bits), um2_each,
    um2, source, tag; the last row is the overhead. Their ``um2`` sum is the PE's area from parts
    (``array.pe_area_um2``, when set, overrides it: `pe_area_um2`)."""
    rows = []
    for kind in chip.units:
        lanes = chip.unit_macs_per_pe(kind)
        part = PARTS[f"lane.{kind}"]
        if not _has_datapath(kind, chip):
            rows.append((f"{kind} mode", lanes, 0.0, 0.0, "array.fp16_mode = shared: runs on the other units", "ASM"))
            continue
        each = _lane_um2(kind, chip)
        rows.append((f"{kind} lanes", lanes, each, lanes * each, part.source, part.tag))
    reg = PARTS["register.bit"]
    bits = register_bits(chip)
    rows.append(("registers", bits, reg.um2, bits * reg.um2, reg.source, reg.tag))
    over = PARTS["pe.overhead"]
    subtotal = sum(r[3] for r in rows)
    rows.append(("overhead", 1, over.um2 * subtotal, over.um2 * subtotal, over.source, over.tag))
    return pd.DataFrame(rows, columns=["part", "count", "um2_each", "um2", "source", "tag"])


def pe_area_um2(chip) -> float:
    """Area of one PE (um^2): ``array.pe_area_um2`` when set, else the sum of `pe_parts`."""
    if chip.array.pe_area_um2 is not None:
        return chip.array.pe_area_um2
    return float(pe_parts(chip).um2.sum())


SRAM_BITCELL_UM2 = 0.027
"""High-density SRAM bitcell at N7, um^2 (hardware.md 6, recalled: ASM)."""
SRAM_ARRAY_EFFICIENCY = 0.6
"""Bitcell area / macro area of an SRAM (hardware.md 6: 50-70%; ASM)."""


def chip_area(chip) -> pd.DataFrame:
    """Area per block in mm^2 with its source: the PE array (`pe_area_um2` per PE), each SRAM
    buffer (bitcell / array efficiency), the scaling unit (``scaling.area_um2_per_lane``),
    times ``chip.cores``. DRAM is off chip and not counted."""
    a = chip.array
    if a.pe_area_um2 is not None:
        note = f"array.pe_area_um2 = {a.pe_area_um2} (set: overrides the sum of the PE's parts)"
    else:
        parts = pe_parts(chip)
        note = "sum of the PE's parts: " + ", ".join(f"{r.part} {r.um2:.1f}" for r in parts.itertuples()) + " um^2"
    rows = [("pe_array", a.rows * a.cols * pe_area_um2(chip), note)]
    cell = SRAM_BITCELL_UM2 / SRAM_ARRAY_EFFICIENCY
    for buf in ("ifmap", "filter", "ofmap"):
        rows.append((f"sram_{buf}", getattr(chip.sram, f"{buf}_bytes") * 8 * cell,
                     f"{SRAM_BITCELL_UM2} um^2/bit HD bitcell / {SRAM_ARRAY_EFFICIENCY} array efficiency (hardware.md 6, ASM)"))
    lanes = chip.scaling.lanes
    rows.append(("scaling_unit", 0.0 if math.isinf(lanes) else lanes * chip.scaling.area_um2_per_lane,
                 "scaling.area_um2_per_lane (ASM)"))
    df = pd.DataFrame(rows, columns=["block", "area_um2", "source"])
    df["area_um2"] *= chip.chip.cores
    df.insert(2, "area_mm2", df["area_um2"] / 1e6)
    return df.drop(columns="area_um2")

"""Areas from parts (`fourbit.hwsim.area`): each preset's PE by hand from the Horowitz 45 nm
areas scaled by 12 to 7 nm, the iso-area rule and the area override."""

from __future__ import annotations

import pytest

from fourbit.hwsim.area import chip_area, pe_area_um2, pe_parts
from fourbit.hwsim.config import iso_area, load_chip

# 7 nm um^2 by hand: Horowitz 45 nm areas (8b mult 282, 8b add 36, 16b add 67, 32b add 137, 16b FP
# add 1,360, 16b FP mult 1,640, 32b FP add 4,184; Aladdin register 5.98 per bit) / 12
INT4 = (282 / 4 + 36 * 12 / 8) / 12  # INT4 multiplier (n^2) + a 12-bit adder-tree share
SHIFT_ADD = (0.85 * 282 / 4 + 67) / 12  # 3-stage shifter at 0.85 of an INT4 multiplier + 16-bit tree share
INT8 = (282 + 137) / 12
FP8 = (1640 * 0.10 / 0.34 + 1360) / 12
FP16 = (1640 + 4184) / 12
REG = 5.98 / 12
OVERHEAD = 1.10


@pytest.mark.parametrize("preset, want", [
    # 4 INT4 lanes, 4 shift-add lanes, an FP16 FMA of its own; registers 4 x (4 + 4) + 32 bits
    ("fourbit", (4 * INT4 + 4 * SHIFT_ADD + FP16 + 64 * REG) * OVERHEAD),
    ("fourbit_iso_area", (4 * INT4 + 4 * SHIFT_ADD + FP16 + 64 * REG) * OVERHEAD),
    ("fp16", (FP16 + (16 + 16 + 32) * REG) * OVERHEAD),
    # FP16 mode shared with the 2 FP8 FMAs; registers: the FP16 mode's 16 + 16 + 32 = FP8's 2 x 16 + 32
    ("hfp8", (2 * FP8 + 64 * REG) * OVERHEAD),
    ("int8", (2 * INT8 + FP16 + 64 * REG) * OVERHEAD),
    # 8 INT4 lanes, 2 FP8 FMAs (FP16 shared); registers 8 x (4 + 4) + 32 = 96 bits
    ("rapid", (8 * INT4 + 2 * FP8 + 96 * REG) * OVERHEAD),
])
def test_each_presets_pe_is_the_sum_of_its_parts_by_hand(preset, want):
    chip = load_chip(preset)
    assert pe_area_um2(chip) == pytest.approx(want, rel=1e-12)
    assert pe_parts(chip).um2.sum() == pytest.approx(want, rel=1e-12)


def test_the_fp16_mode_is_free_only_when_shared():
    separate, shared = load_chip("fourbit"), load_chip("fourbit", {"array.fp16_mode": "shared"})
    assert pe_area_um2(separate) - pe_area_um2(shared) == pytest.approx(FP16 * OVERHEAD)
    assert pe_area_um2(shared) / pe_area_um2(load_chip("fp16")) == pytest.approx(0.2237, abs=1e-4)


def test_a_set_pe_area_overrides_the_parts_and_says_so():
    chip = load_chip("fourbit", {"array.pe_area_um2": 267.0})
    assert pe_area_um2(chip) == 267.0
    row = chip_area(chip).set_index("block").loc["pe_array"]
    assert row.area_mm2 == pytest.approx(1024 * 267e-6) and "overrides the sum" in row.source


def test_the_radix_scales_the_shift_add_lanes():
    four, sixteen = load_chip("fourbit"), load_chip("fourbit", {"log_path.radix": 16})
    four_lane, sixteen_lane = (pe_parts(c).set_index("part").loc["fp4xint4 lanes", "um2_each"] for c in (four, sixteen))
    assert four_lane == pytest.approx(SHIFT_ADD)
    assert sixteen_lane > four_lane  # 28-bit products: a wider shifter and tree


def test_iso_area_preset_follows_the_rule():
    fourbit, fp16 = load_chip("fourbit"), load_chip("fp16")
    derived = iso_area(fourbit, fp16)
    shipped = load_chip("fourbit_iso_area")
    assert (derived.array.rows, derived.array.cols) == (shipped.array.rows, shipped.array.cols) == (29, 30)
    # 1,024 FP16 PEs' area holds 881 4-bit PEs; 29 x 30 = 870 is the most square arrangement within
    n = int(1024 * pe_area_um2(fp16) // pe_area_um2(fourbit))
    assert n == 881 and 29 * 30 <= n < 30 * 30

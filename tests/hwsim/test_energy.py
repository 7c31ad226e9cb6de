"""Energy per block: SRAM energy per bit against capacity, register latches per dataflow (by
hand), leakage from area and bits (by hand) and how the simulation charges them."""

from __future__ import annotations

import math

import pytest

from fourbit.hwsim.area import chip_area
from fourbit.hwsim.config import load_chip
from fourbit.hwsim.energy import energy_table, leakage_by_block, leakage_pj_per_cycle, sram_pj_per_bit
from fourbit.hwsim.engine import mapped_jobs, simulate
from fourbit.hwsim.registers import register_latches
from fourbit.traces import schema
from fourbit.traces.io import Trace


def test_sram_anchors_are_one_source_at_one_port_width():
    """7 nm: Jouppi et al. ISCA 2021 Table 2, pJ per 64-bit read (8 KB 7.5, 32 KB 8.5, 1 MB 14);
    45 nm: Horowitz ISSCC 2014 (10, 20, 100). Energy per bit grows with capacity."""
    for name, per_64b in (("7nm", (7.5, 8.5, 14)), ("45nm", (10, 20, 100))):
        t = energy_table(name)
        for size, pj in zip((8 << 10, 32 << 10, 1 << 20), per_64b, strict=True):
            assert sram_pj_per_bit(size, t) == pytest.approx(pj / 64, rel=1e-12)
        sizes = [1 << k for k in range(10, 26)]
        pj = [sram_pj_per_bit(s, t) for s in sizes]
        assert pj == sorted(pj) and pj[0] < pj[-1]
        assert sram_pj_per_bit(1 << 20, t, write=True) == pytest.approx(per_64b[2] / 64 * t["sram.write_factor"])


# M = 3, N = 5, K = 7 on a 2 x 4 array with p = 2: K-folds of p*R = 4 cover k = 4 and k = 3,
# column folds n = 4 and n = 1; os row folds m = 2 and m = 1.
def test_register_latches_weight_stationary_by_hand():
    out = register_latches(3, 5, 7, 2, 4, 2, "ws")
    assert out["a"] == 3 * 7 * 5  # each a value latched in every column of its fold: one per MAC
    assert out["psum"] == 3 * 5 * 2 * 2  # M x N partial sums, 2 K-folds, through all R = 2 rows
    # stationary b shifted from the top: k = 4 -> row 0 (2 values x 1) + row 1 (2 x 2) = 6;
    # k = 3 -> row 0 (2 x 1) + row 1 (1 x 2) = 4; for each of the N = 5 columns
    assert out["b"] == 5 * (6 + 4)
    assert register_latches(3, 5, 7, 2, 4, 2, "ws", reloads=3)["b"] == 3 * 5 * 10


def test_register_latches_input_stationary_is_the_transposed_ws():
    out = register_latches(3, 5, 7, 2, 4, 2, "is")
    assert out == {"a": 3 * (6 + 4), "b": 3 * 7 * 5, "psum": 5 * 3 * 2 * 2}


def test_register_latches_output_stationary_by_hand():
    out = register_latches(3, 5, 7, 2, 4, 2, "os")
    assert out["a"] == out["b"] == 3 * 7 * 5
    # accumulator writes: M x N outputs x ceil(7 / 2) = 4 cycles; drain to the bottom edge of
    # R = 2 rows: fold m = 2 -> 2 + 1, fold m = 1 -> 2, for each of the N = 5 columns
    assert out["psum"] == 3 * 5 * 4 + 5 * (3 + 2)
    with pytest.raises(ValueError, match="dataflow = 'xs' is out of range"):
        register_latches(3, 5, 7, 2, 4, 2, "xs")


def _gemm_trace(M: int, N: int, K: int) -> Trace:
    row = {"step": 0, "layer": "gemm", "layer_type": "matmul", "phase": "fwd", "M": M, "N": N, "K": K, "groups": 1,
           "a_format": "uint4", "b_format": "int4", "acc_format": "int32", "out_format": "fp16"}
    return Trace({"batch_size": 1}, schema.from_records("gemms", [row]), schema.from_records("ops", []),
                 schema.from_records("metrics", []))


@pytest.mark.parametrize("dataflow", ["ws", "is", "os"])
def test_simulated_register_energy_is_the_latches_times_their_widths(dataflow):
    chip = load_chip("fourbit", {"array.rows": 8, "array.cols": 8, "array.dataflow": dataflow})
    trace = _gemm_trace(40, 24, 100)
    (job,) = mapped_jobs(trace, chip)
    g, cand = job.gemm, job.plan.candidate
    reloads = 1 if dataflow == "os" or cand.order == "n-k-m" else math.ceil((g.N if dataflow == "is" else g.M) / cand.tile)
    lat = register_latches(g.M, g.N, g.K, 8, 8, g.p, dataflow, reloads)
    psum_bits = 32  # int32 accumulator
    expect = (lat["a"] * 4 + lat["b"] * 4 + lat["psum"] * psum_bits) * energy_table()["reg.bit"]
    got = simulate(trace, chip).to_frame().energy_reg_pj.sum()
    assert got == pytest.approx(expect, rel=1e-12)


def test_leakage_by_block_by_hand():
    """PE array and scaling unit leak per um^2 of their area, SRAM per bit stored."""
    chip, t = load_chip("fourbit"), energy_table()
    area = chip_area(chip).set_index("block").area_mm2
    leak = leakage_by_block(chip, t).set_index("block").leakage_mw
    assert leak["pe_array"] == pytest.approx(area["pe_array"] * 1e6 * t["leak.logic.um2_ns"], rel=1e-12)
    assert leak["sram_ifmap"] == pytest.approx(chip.sram.ifmap_bytes * 8 * 20e-12 * 1e3, rel=1e-12)  # 20 pW/bit
    # 10 % of the FP16 FMA's 0.72 pJ per cycle at 1 GHz over its 485.33 um^2: 0.148 W/mm^2
    assert t["leak.logic.um2_ns"] * 1e6 * 1e-3 == pytest.approx(0.1 * 0.72e-3 / 485.33e-6, rel=1e-3)
    assert leakage_pj_per_cycle(chip, t) == pytest.approx(leak.sum() * 1e9 / chip.array.clock_hz)
    off = load_chip("fourbit", {"energy.leakage": False})
    assert (leakage_by_block(off, t).leakage_mw == 0).all()


def test_simulated_leakage_is_the_chip_leakage_over_every_cycle():
    chip = load_chip("fourbit", {"array.rows": 8, "array.cols": 8})
    df = simulate(_gemm_trace(40, 24, 100), chip).to_frame()
    per_cycle = leakage_pj_per_cycle(chip, energy_table())
    assert df.energy_leakage_pj.sum() == pytest.approx(per_cycle * df.total_cycles.sum(), rel=1e-12)
    off = simulate(_gemm_trace(40, 24, 100), load_chip("fourbit", {"array.rows": 8, "array.cols": 8,
                                                                    "energy.leakage": False})).to_frame()
    assert off.energy_leakage_pj.sum() == 0
    assert off.total_cycles.sum() == df.total_cycles.sum()

"""The simulated chip on a real trace: units by format, closed forms with unlimited memory."""

from __future__ import annotations

from fourbit.hwsim.config import load_chip
from fourbit.hwsim.engine import simulate


def test_units_follow_formats(digits_traces):
    df = simulate(digits_traces["int4"], load_chip("fourbit")).to_frame()
    unit = dict(zip(zip(df.layer, df.phase, strict=True), df.unit, strict=True))
    assert unit[("fc2", "fwd")] == "int4"
    assert unit[("fc2", "bwd_data")] == "fp4xint4" and unit[("fc3", "bwd_weight")] == "fp4xint4"
    assert unit[("fc1", "fwd")] == "fp16" and unit[("fc4", "bwd_data")] == "fp16"


def test_unlimited_memory_gives_closed_form_cycles(digits_traces):
    chip = load_chip("fourbit", {"dram.bandwidth_bytes_per_s": float("inf"), "dram.latency_cycles": 0,
                                 "scaling.lanes": float("inf")})
    df = simulate(digits_traces["int4"], chip).to_frame()
    gemm = df[df.unit != "vector"]
    assert (gemm.total_cycles == gemm.compute_cycles).all()
    assert (gemm.stall_cycles == 0).all()


def test_four_bit_chip_beats_fp16_chip_on_the_same_trace(digits_traces):
    trace = digits_traces["int4"]
    fast = simulate(trace, load_chip("fourbit")).to_frame()
    slow = simulate(trace, load_chip("fp16")).to_frame()
    four = fast.unit.isin(["int4", "fp4xint4"]).to_numpy()
    assert four.sum() == 6  # the hidden layers fc2, fc3 in three phases
    # 4 products per PE per cycle against 1: the hidden GEMMs' fill/drain-free part is 4x shorter
    ratio = slow.compute_cycles[four].sum() / fast.compute_cycles[four].sum()
    assert 3.0 < ratio <= 4.0
    assert fast.energy_mac_pj[four].sum() < slow.energy_mac_pj[four].sum() / 10
    assert fast.energy_pj.sum() < slow.energy_pj.sum()


def test_a_gigantic_gemm_is_extended_or_refused_never_hung(digits_traces):
    import pytest

    from fourbit.traces.errors import SimulationError

    trace = digits_traces["int4"]
    g = trace.gemms.copy()
    g.loc[g.index[1], "M"] = 10**12
    big = type(trace)(trace.meta, g, trace.ops, trace.metrics)
    with pytest.raises(SimulationError, match="tiles to simulate one by one on this chip"):
        simulate(big, load_chip("fourbit"), compress=False)
    with pytest.raises(SimulationError, match="steady-state extrapolation"):
        simulate(big, load_chip("fourbit"))
    # its 3e10 tiles are one steady run: a few short probes give the whole GEMM
    row = simulate(big, load_chip("fourbit"), extrapolate=True).to_frame().iloc[1]
    assert row.M == 10**12 and row.tiles > 10**10
    assert row.total_cycles >= row.compute_cycles > 10**10


def test_gate_zeros_removes_mac_energy_of_zero_products(digits_traces):
    """With gating, a product with a zero operand costs no MAC energy: the MAC energy of a row
    scales by (1 - P(a = 0 or b = 0)) from the trace's zero fractions; nothing else changes."""
    import numpy as np

    trace = digits_traces["int4"]
    plain = simulate(trace, load_chip("fourbit")).to_frame()
    gated = simulate(trace, load_chip("fourbit", {"energy.gate_zeros": True})).to_frame()
    rows = trace.step().gemms.set_index(["layer", "phase"])
    za, zb = (rows.loc[list(zip(plain.layer, plain.phase, strict=True)), c].astype(float).fillna(0).to_numpy()
              for c in ("a_zero_frac", "b_zero_frac"))
    np.testing.assert_allclose(gated.energy_mac_pj, plain.energy_mac_pj * (1 - (za + zb - za * zb)), rtol=1e-12)
    assert (gated.energy_mac_pj < plain.energy_mac_pj).any()
    for col in ("total_cycles", "dram_read_bytes", "energy_sram_pj", "energy_dram_pj"):
        np.testing.assert_array_equal(gated[col], plain[col])

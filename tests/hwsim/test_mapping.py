"""Closed-form compute cycles (hand-derived) and the simulated cycles that must equal them."""

from __future__ import annotations

import pytest

from fourbit.hwsim.mapping import Gemm, Operand, compute_cycles


@pytest.mark.parametrize("df, M, N, K, want", [
    # ws: ceil(K/(pR)) * ceil(N/C) folds of 2R + C + M - 2 (R = C = 32, p = 4)
    ("ws", 64, 256, 256, 2 * 8 * (64 + 32 + 64 - 2)),
    ("ws", 1, 1, 1, 1 * (64 + 32 + 1 - 2)),
    # os: ceil(M/R) * ceil(N/C) folds of R + C + ceil(K/p) - 2
    ("os", 64, 256, 256, 2 * 8 * (32 + 32 + 64 - 2)),
    ("os", 1, 10, 300, 1 * (32 + 32 + 75 - 2)),
    # is: ceil(K/(pR)) * ceil(M/C) folds of 2R + C + N - 2
    ("is", 64, 256, 256, 2 * 2 * (64 + 32 + 256 - 2)),
])
def test_closed_forms_by_hand(df, M, N, K, want):
    assert compute_cycles(M, N, K, 32, 32, 4, df) == want
    gemm = Gemm(M, N, K, 1, Operand(M, K, 0.5), Operand(K, N, 0.5), 32, 32, 4, df, 2)
    # every n-k-m candidate (os: every candidate) has the closed form's folds; tile-major orders add fills
    cands = [c for c in gemm.candidates(1 << 20, 1 << 20, 1 << 20) if df == "os" or c.order == "n-k-m"]
    assert cands
    for cand in cands:
        plan = gemm.plan(cand)
        assert sum(t.compute_cycles * r for t, r in plan.runs()) == plan.compute_cycles == want
        assert plan.macs == M * N * K

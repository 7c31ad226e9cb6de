"""Mapping a GEMM onto the PE array: folds, tiles, closed-form compute cycles, and traffic.

A GEMM multiplies a (M x K, the *ifmap* operand) by b (K x N, the *filter* operand) into
M x N (the *ofmap*). An R x C array whose PEs each reduce p products per cycle runs it in folds
(the standard systolic model of SCALE-Sim, Samajdar et al., ISPASS 2020), counted as cycles,
not as the index of the last cycle (SCALE-Sim prints one less):

``ws`` (weight stationary)
    b is held in the array (K along rows, p per PE; N along columns); a streams through.
    ceil(K/(p*R)) * ceil(N/C) folds of 2R + C + M - 2 cycles: R to load the stationary values
    (a PE loads its p values in one cycle), M to stream, R + C - 2 to drain the skew.
``is`` (input stationary)
    a^T is held (K along rows, M along columns); b^T streams: ceil(K/(p*R)) * ceil(M/C) folds of
    2R + C + N - 2 cycles. It is ``ws`` of the transposed product b^T a^T.
``os`` (output stationary)
    outputs are held (M along rows, N along columns); a and b stream along K, p per cycle:
    ceil(M/R) * ceil(N/C) folds of R + C + ceil(K/p) - 2 cycles.

With ``overlap`` each fold after the first starts while its predecessor drains: every fold but
the last saves its drain (R + C - 2 cycles).

Tiles and traffic. A fold is split into tiles along its streamed dimension so that each tile's
operands fit half of the double-buffered SRAM; one tile is one DMA transfer and one compute
event. Loop order (``ws``/``is``): for each column fold of the stationary operand, for each
K-fold, for each tile of the streamed operand. Reuse policy: the stationary operand is read
from DRAM once (each of its tiles is used by one fold); the streamed operand is read once if it
fits its buffer whole, else once per column fold; the partial sums of a column fold stay in the
ofmap buffer across K-folds if the whole stripe fits, else they spill to DRAM after every K-fold
but the last and are read back before every K-fold but the first (both directions counted).
``os``: for each row fold, for each column fold, for each K-tile; a's row block is kept across
column folds if it fits, else re-read; b is read once if it fits whole, else once per row fold;
outputs never spill (they live in the PEs).

Padded lanes of partial folds cost cycles, never MACs: the MAC count is groups * M * N * K.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from traces.errors import ConfigError

__all__ = ["Tile", "TilePlan", "compute_cycles", "fold_count", "plan_gemm"]


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def fold_count(M: int, N: int, K: int, rows: int, cols: int, p: int, dataflow: str) -> int:
    """Number of folds of one GEMM (see the module docstring)."""
    if dataflow == "ws":
        return _ceil(K, p * rows) * _ceil(N, cols)
    if dataflow == "is":
        return _ceil(K, p * rows) * _ceil(M, cols)
    if dataflow == "os":
        return _ceil(M, rows) * _ceil(N, cols)
    raise ConfigError(f"array.dataflow = {dataflow!r} is out of range: allowed ('ws', 'os', 'is')")


def compute_cycles(M: int, N: int, K: int, rows: int, cols: int, p: int, dataflow: str,
                   overlap: bool = False) -> int:
    """Closed-form compute cycles of one GEMM (one group); see the module docstring.

    ``ws``: folds * (2R + C + M - 2); ``is``: folds * (2R + C + N - 2); ``os``:
    folds * (R + C + ceil(K/p) - 2); with ``overlap`` every fold but the last saves R + C - 2.
    """
    folds = fold_count(M, N, K, rows, cols, p, dataflow)
    stream = {"ws": M, "is": N, "os": _ceil(K, p)}[dataflow]
    load = 0 if dataflow == "os" else rows
    drain = rows + cols - 2
    per_fold = load + stream + drain
    total = folds * per_fold
    if overlap:
        total -= (folds - 1) * drain
    return total


@dataclass(frozen=True)
class Tile:
    """One step of a mapped GEMM: what the DMA brings in, what the array computes, what leaves.

    Bytes are DRAM bytes; ``out_elements`` are finished outputs handed to the scaling unit.
    """

    read_a_bytes: float
    read_b_bytes: float
    read_psum_bytes: float
    compute_cycles: int
    out_elements: int
    spill_psum_bytes: float

    @property
    def read_bytes(self) -> float:
        return self.read_a_bytes + self.read_b_bytes + self.read_psum_bytes


@dataclass
class TilePlan:
    """A mapped GEMM: tiles as (tile, repeat) runs in execution order, closed-form totals and
    traffic per level (bytes; SRAM in bits for energy)."""

    dataflow: str
    folds: int
    compute_cycles: int
    macs: int
    runs: list[tuple[Tile, int]] = field(default_factory=list)
    a_resident: bool = False
    stationary_resident: bool = False
    psum_spill: bool = False
    sram_bits: dict = field(default_factory=dict)  # buffer -> {"read": bits, "write": bits}

    def add(self, tile: Tile, repeat: int = 1) -> None:
        if repeat <= 0:
            return
        if self.runs and self.runs[-1][0] == tile:
            self.runs[-1] = (tile, self.runs[-1][1] + repeat)
        else:
            self.runs.append((tile, repeat))

    @property
    def tiles(self) -> int:
        return sum(r for _, r in self.runs)

    def total(self, attr: str) -> float:
        return sum(getattr(t, attr) * r for t, r in self.runs)


def _split(total: int, size: int) -> list[tuple[int, int]]:
    """[(length, count)] of chunks of ``size`` covering ``total`` (the last may be shorter)."""
    full, rest = divmod(total, size)
    out = [(size, full)] if full else []
    if rest:
        out.append((rest, 1))
    return out


def _need(buffer: str, needed: float, have: float) -> None:
    if needed > have:
        raise ConfigError(
            f"sram.{buffer}_bytes is too small: the smallest tile needs {math.ceil(needed)} bytes "
            f"per buffer half, the buffer half has {int(have)}; allowed: sram.{buffer}_bytes >= "
            f"{math.ceil(needed * 2)} (double buffered)"
        )


def _fold_runs(plan: TilePlan, length: int, tile_len: int, make) -> None:
    """Add the tiles of one fold: ``length`` split into tiles of ``tile_len`` (the last may be
    shorter); ``make(len, first, last)`` builds a tile. Identical middle tiles become one run."""
    full, rest = divmod(length, tile_len)
    lengths = [tile_len] * min(full, 2) + ([rest] if rest else [])
    n = full + (1 if rest else 0)
    if n == 1:
        plan.add(make(lengths[0], True, True))
        return
    plan.add(make(tile_len, True, False))
    if n > 2:
        plan.add(make(tile_len, False, False), n - 2)
    plan.add(make(rest if rest else tile_len, False, True))


def _stationary(plan: TilePlan, L: int, K: int, T: int, R: int, C: int, p: int,
                bytes_x: float, bytes_s: float, bytes_psum: float, x_cap: float, s_cap: float,
                o_cap: float, x_buf: str, s_buf: str, overlap: bool) -> None:
    """ws/is: a stationary K x T operand, a streamed L x K operand, L x T outputs."""
    kp = p * R
    k_folds = _ceil(K, kp)
    t_folds = _ceil(T, C)
    _need(s_buf, min(kp, K) * min(C, T) * bytes_s, s_cap / 2)
    plan.stationary_resident = False  # each stationary tile is used by one fold only
    plan.a_resident = L * K * bytes_x <= x_cap
    plan.psum_spill = k_folds > 1 and L * min(C, T) * bytes_psum > o_cap
    # tile length along the streamed dimension: its operand slice (and, when they spill or leave
    # the array, its partial sums) must fit half a buffer
    per_row = min(kp, K) * bytes_x
    x_limit = x_cap if plan.a_resident else x_cap / 2
    _need(x_buf, per_row, x_limit)
    l_tile = int(x_limit // per_row)
    o_row = min(C, T) * bytes_psum
    _need("ofmap", o_row, o_cap / 2)
    if plan.psum_spill or k_folds == 1:
        l_tile = min(l_tile, int(o_cap / 2 // o_row))
    l_tile = max(1, min(L, l_tile))
    drain = R + C - 2
    index = 0
    for t_len, t_count in _split(T, C):
        for _ in range(t_count):
            for k_idx in range(k_folds):
                k_len = min(kp, K - k_idx * kp)
                last_k = k_idx == k_folds - 1
                reread = index < k_folds or not plan.a_resident  # first column fold, or no reuse
                index += 1
                last_fold = index == k_folds * t_folds
                spill = plan.psum_spill

                def make(l_len, first, last, k_len=k_len, last_k=last_k, reread=reread,
                         last_fold=last_fold, spill=spill, k_idx=k_idx, t_len=t_len):
                    cyc = l_len + (R if first else 0)
                    if last and (last_fold or not overlap):
                        cyc += drain
                    psum = l_len * t_len * bytes_psum
                    return Tile(l_len * k_len * bytes_x if reread else 0.0,
                                k_len * t_len * bytes_s if first else 0.0,
                                psum if spill and k_idx > 0 else 0.0, cyc,
                                l_len * t_len if last_k else 0,
                                psum if spill and not last_k else 0.0)

                _fold_runs(plan, L, l_tile, make)


def plan_gemm(M: int, N: int, K: int, groups: int, rows: int, cols: int, p: int, dataflow: str,
              bytes_a: float, bytes_b: float, bytes_psum: float, ifmap_bytes: float,
              filter_bytes: float, ofmap_bytes: float, overlap: bool = False) -> TilePlan:
    """Tile a GEMM for the array and buffers (see the module docstring).

    ``bytes_a``/``bytes_b``: bytes per operand element as stored (0.5 for 4-bit formats);
    ``bytes_psum``: bytes per accumulator value; ``*_bytes``: buffer capacities.

    Raises
    ------
    ConfigError
        A buffer that cannot hold the smallest tile (the message names it and the needed size).
    """
    for name, v in (("M", M), ("N", N), ("K", K), ("groups", groups)):
        if v < 1:
            raise ConfigError(f"GEMM {name} = {v} must be >= 1")
    cyc = compute_cycles(M, N, K, rows, cols, p, dataflow, overlap)
    plan = TilePlan(dataflow, fold_count(M, N, K, rows, cols, p, dataflow) * groups, cyc * groups,
                    groups * M * N * K)
    one = TilePlan(dataflow, 0, 0, 0)
    if dataflow == "ws":
        _stationary(one, M, K, N, rows, cols, p, bytes_a, bytes_b, bytes_psum, ifmap_bytes,
                    filter_bytes, ofmap_bytes, "ifmap", "filter", overlap)
    elif dataflow == "is":
        _stationary(one, N, K, M, rows, cols, p, bytes_b, bytes_a, bytes_psum, filter_bytes,
                    ifmap_bytes, ofmap_bytes, "filter", "ifmap", overlap)
        one.runs = [(Tile(t.read_b_bytes, t.read_a_bytes, t.read_psum_bytes, t.compute_cycles,
                          t.out_elements, t.spill_psum_bytes), r) for t, r in one.runs]
    else:
        _output_stationary(one, M, N, K, rows, cols, p, bytes_a, bytes_b, ifmap_bytes,
                           filter_bytes, overlap)
    for _ in range(groups):
        for tile, rep in one.runs:
            plan.add(tile, rep)
    plan.a_resident, plan.psum_spill = one.a_resident, one.psum_spill
    plan.stationary_resident = one.stationary_resident
    plan.sram_bits = _sram_traffic(M, N, K, groups, rows, cols, p, dataflow, bytes_a, bytes_b,
                                   bytes_psum, plan)
    return plan


def _sram_traffic(M, N, K, groups, R, C, p, dataflow, bytes_a, bytes_b, bytes_psum,
                  plan: TilePlan) -> dict:
    """Bits read and written per buffer (for energy): the DMA writes what it reads from DRAM;
    the array reads the streamed operand once per column fold and the stationary operand once;
    partial sums are written after every K-fold and read back for every K-fold but the first,
    and read once more by the scaling unit."""
    g = groups * 8
    if dataflow == "os":
        a_reads = M * K * _ceil(N, C) * bytes_a
        b_reads = K * N * _ceil(M, R) * bytes_b
        psum_w, psum_r = M * N * bytes_psum, M * N * bytes_psum
    else:
        k_folds = _ceil(K, p * R)
        if dataflow == "ws":
            a_reads, b_reads = M * K * _ceil(N, C) * bytes_a, K * N * bytes_b
        else:
            a_reads, b_reads = M * K * bytes_a, K * N * _ceil(M, C) * bytes_b
        psum_w = M * N * k_folds * bytes_psum
        psum_r = M * N * k_folds * bytes_psum  # k_folds - 1 accumulations + the final read-out
    return {
        "ifmap": {"read": a_reads * g, "write": plan.total("read_a_bytes") * 8},
        "filter": {"read": b_reads * g, "write": plan.total("read_b_bytes") * 8},
        "ofmap": {"read": psum_r * g, "write": psum_w * g + plan.total("read_psum_bytes") * 8},
    }


def _output_stationary(plan: TilePlan, M: int, N: int, K: int, R: int, C: int, p: int,
                       bytes_a: float, bytes_b: float, a_cap: float, b_cap: float,
                       overlap: bool) -> None:
    """os: outputs held in the PEs; a's R-row block and b's C-column block stream along K."""
    rows, cols = min(R, M), min(C, N)
    _need("ifmap", rows * min(p, K) * bytes_a, a_cap / 2)
    _need("filter", cols * min(p, K) * bytes_b, b_cap / 2)
    # K-tile: a multiple of p whose a (rows x k) and b (k x cols) slices fit half a buffer
    k_tile = min(int(a_cap / 2 // (rows * bytes_a)), int(b_cap / 2 // (cols * bytes_b)), K)
    k_tile = max(min(p, K), (k_tile // p) * p)
    plan.a_resident = rows * K * bytes_a <= a_cap / 2  # a's row block kept across column folds
    plan.stationary_resident = K * N * bytes_b <= b_cap / 2  # all of b kept across row folds
    drain = R + C - 2
    n_folds = _ceil(N, C)
    total = _ceil(M, R) * n_folds
    index = 0
    for m_len, m_count in _split(M, R):
        for _ in range(m_count):
            for n_len, n_count in _split(N, C):
                for _ in range(n_count):
                    read_a = index % n_folds == 0 or not plan.a_resident
                    read_b = index < n_folds or not plan.stationary_resident
                    index += 1
                    last_fold = index == total

                    def make(k_len, first, last, m_len=m_len, n_len=n_len, read_a=read_a,
                             read_b=read_b, last_fold=last_fold):
                        cyc = _ceil(k_len, p)
                        if last and (last_fold or not overlap):
                            cyc += drain
                        return Tile(m_len * k_len * bytes_a if read_a else 0.0,
                                    k_len * n_len * bytes_b if read_b else 0.0, 0.0, cyc,
                                    m_len * n_len if last else 0, 0.0)

                    _fold_runs(plan, K, k_tile, make)

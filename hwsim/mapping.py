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
event. ``ws``/``is`` have two loop orders, and `plan_gemm` takes the one with the smaller
estimated time, max(compute cycles, DRAM bytes / bandwidth) (fewer bytes on a tie):

``n-k-m`` (fold-major, the closed forms above)
    for each column fold of the stationary operand, for each K-fold, for each tile of the
    streamed operand. The stationary operand is read from DRAM once (each tile is used by one
    fold); the streamed operand once if it fits its buffer whole, else once per column fold;
    the partial sums of a column fold stay in the ofmap buffer across K-folds if the whole stripe
    fits, else they spill to DRAM after every K-fold but the last and are read back before every
    K-fold but the first (both directions counted).
``n-m-k`` (tile-major)
    for each column fold, for each tile of the streamed operand, for each K-fold: a tile's
    partial sums stay in the ofmap buffer until its last K-fold (never spill), at the price of
    reloading the stationary values (a fold's fill and drain) for every tile; the stationary
    column stripe (K x C) is read from DRAM once per column fold if it fits its buffer, else for
    every tile. Compute cycles exceed the closed form by the extra fills and drains.

``os``: for each row fold, for each column fold, for each K-tile; a's row block is kept across
column folds if it fits, else re-read; b is read once if it fits whole, else once per row fold;
outputs never spill (they live in the PEs).

Padded lanes of partial folds cost cycles, never MACs: the MAC count is groups * M * N * K.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fourbit.traces.errors import ConfigError

__all__ = ["Tile", "TilePlan", "compute_cycles", "fold_count", "plan_gemm"]

Run = tuple  # (Tile, count): ``count`` identical consecutive tiles
Pattern = tuple  # (Run, ...): a sequence of runs


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

    @property
    def silent(self) -> bool:
        """No outputs and no spilled partial sums: the scaling unit has nothing to do for it."""
        return not (self.out_elements or self.spill_psum_bytes)

    def swapped(self) -> Tile:
        """The same tile with the roles of a and b exchanged (input stationary)."""
        return Tile(self.read_b_bytes, self.read_a_bytes, self.read_psum_bytes, self.compute_cycles,
                    self.out_elements, self.spill_psum_bytes)


def _merge(runs) -> Pattern:
    out: list[list] = []
    for tile, count in runs:
        if count <= 0:
            continue
        if out and out[-1][0] == tile:
            out[-1][1] += count
        else:
            out.append([tile, count])
    return tuple((t, c) for t, c in out)


@dataclass
class TilePlan:
    """A mapped GEMM: its tiles in execution order as segments (a pattern of runs, repeated),
    the closed-form and summed totals, the loop order and reuse decisions, and the SRAM traffic
    per buffer (bits, for energy)."""

    dataflow: str
    folds: int
    compute_cycles: int
    macs: int
    segments: list = field(default_factory=list)  # [(Pattern, repeat)]
    loop_order: str = ""
    reloads: int = 1  # times the array loads the whole stationary operand (tiles per fold, n-m-k)
    a_resident: bool = False
    stationary_resident: bool = False
    psum_spill: bool = False
    sram_bits: dict = field(default_factory=dict)  # buffer -> {"read": bits, "write": bits}

    def add(self, pattern, repeat: int = 1) -> None:
        """Append ``pattern`` (a Tile, or runs) ``repeat`` times, merging with the last segment
        where the sequence stays the same."""
        if isinstance(pattern, Tile):
            pattern = ((pattern, 1),)
        pattern = _merge(pattern)
        if repeat <= 0 or not pattern:
            return
        if len(pattern) == 1:  # a single run: fold the repeat into its count
            pattern, repeat = ((pattern[0][0], pattern[0][1] * repeat),), 1
        if self.segments:
            last, r = self.segments[-1]
            if last == pattern:
                self.segments[-1] = (last, r + repeat)
                return
            if len(last) == 1 and len(pattern) == 1 and last[0][0] == pattern[0][0]:
                self.segments[-1] = (((last[0][0], last[0][1] * r + pattern[0][1] * repeat),), 1)
                return
        self.segments.append((pattern, repeat))

    def _sum(self, value) -> float:
        return sum(sum(value(t) * k for t, k in pat) * r for pat, r in self.segments)

    @property
    def tiles(self) -> int:
        return int(self._sum(lambda t: 1))

    @property
    def output_tiles(self) -> int:
        """Tiles that the scaling unit processes (outputs or spilled partial sums)."""
        return int(self._sum(lambda t: 0 if t.silent else 1))

    def total(self, attr: str) -> float:
        return self._sum(lambda t: getattr(t, attr))

    def runs(self):
        """The tiles as (tile, count) runs, in order (expands the repeats: for small plans)."""
        for pat, r in self.segments:
            for _ in range(r):
                yield from pat


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


def _fold(length: int, tile_len: int, make) -> Pattern:
    """The tiles of one fold: ``length`` split into tiles of ``tile_len`` (the last may be
    shorter); ``make(len, first, last)`` builds a tile."""
    full, rest = divmod(length, tile_len)
    n = full + (1 if rest else 0)
    if n == 1:
        return ((make(rest or tile_len, True, True), 1),)
    return _merge([(make(tile_len, True, False), 1), (make(tile_len, False, False), n - 2),
                   (make(rest or tile_len, False, True), 1)])


def _k_folds(K: int, kp: int) -> list[tuple[int, int, bool, bool]]:
    """K-folds as (k_len, count, first, last) groups in order."""
    kf = _ceil(K, kp)
    last_len = K - (kf - 1) * kp
    if kf == 1:
        return [(last_len, 1, True, True)]
    out = [(kp, 1, True, False)]
    if kf > 2:
        out.append((kp, kf - 2, False, False))
    out.append((last_len, 1, False, True))
    return out


def _stationary(plan: TilePlan, L: int, K: int, T: int, R: int, C: int, p: int,
                bytes_x: float, bytes_s: float, bytes_psum: float, x_cap: float, s_cap: float,
                o_cap: float, x_buf: str, s_buf: str, overlap: bool) -> None:
    """ws/is, loop order n-k-m: a stationary K x T operand, a streamed L x K one, L x T outputs."""
    kp = p * R
    k_folds = _ceil(K, kp)
    t_folds = _ceil(T, C)
    _need(s_buf, min(kp, K) * min(C, T) * bytes_s, s_cap / 2)
    plan.loop_order = "n-k-m"
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
    spill = plan.psum_spill
    t_index = 0
    for t_len, t_count in _split(T, C):
        for _ in range(t_count):
            reread = t_index == 0 or not plan.a_resident  # first column fold, or no reuse
            t_index += 1
            last_t = t_index == t_folds
            column = []  # this column fold's K-folds: (fold pattern, count)
            for k_len, count, first_k, last_k in _k_folds(K, kp):

                def make(l_len, first, last, k_len=k_len, first_k=first_k, last_k=last_k,
                         reread=reread, last_fold=last_t and last_k, t_len=t_len):
                    cyc = l_len + (R if first else 0)
                    if last and (last_fold or not overlap):
                        cyc += drain
                    psum = l_len * t_len * bytes_psum
                    return Tile(l_len * k_len * bytes_x if reread else 0.0,
                                k_len * t_len * bytes_s if first else 0.0,
                                psum if spill and not first_k else 0.0, cyc,
                                l_len * t_len if last_k else 0,
                                psum if spill and not last_k else 0.0)

                column.append((_fold(L, l_tile, make), count))
            if sum(len(pat) * n for pat, n in column) <= 64:  # short: one pattern, so that
                plan.add([run for pat, n in column for _ in range(n) for run in pat])  # equal columns merge
            else:
                for pat, n in column:
                    plan.add(pat, n)


def _stationary_tile_major(plan: TilePlan, L: int, K: int, T: int, R: int, C: int, p: int,
                           bytes_x: float, bytes_s: float, bytes_psum: float, x_cap: float,
                           s_cap: float, o_cap: float, x_buf: str, s_buf: str, overlap: bool) -> None:
    """ws/is, loop order n-m-k: partial sums stay on chip; every (tile, K-fold) is a fold."""
    kp = p * R
    t_folds = _ceil(T, C)
    plan.loop_order = "n-m-k"
    plan.a_resident = L * K * bytes_x <= x_cap
    plan.stationary_resident = K * min(C, T) * bytes_s <= s_cap  # a column stripe, kept across tiles
    plan.psum_spill = False
    if not plan.stationary_resident:
        _need(s_buf, min(kp, K) * min(C, T) * bytes_s, s_cap / 2)
    per_row = min(kp, K) * bytes_x
    x_limit = x_cap if plan.a_resident else x_cap / 2
    _need(x_buf, per_row, x_limit)
    o_row = min(C, T) * bytes_psum
    _need("ofmap", o_row, o_cap / 2)
    l_tile = max(1, min(L, int(x_limit // per_row), int(o_cap / 2 // o_row)))
    plan.reloads = _ceil(L, l_tile)
    drain = R + C - 2
    m_groups = _split(L, l_tile)
    t_index = 0
    for t_len, t_count in _split(T, C):
        for _ in range(t_count):
            first_t = t_index == 0
            t_index += 1
            last_t = t_index == t_folds
            m_index = 0
            for gi, (l_len, l_count) in enumerate(m_groups):
                for first_m, n in ((True, 1), (False, l_count - 1)) if m_index == 0 else ((False, l_count),):
                    if n <= 0:
                        continue
                    last_group = gi == len(m_groups) - 1

                    def tile(k_len, last_k, first_m=first_m, l_len=l_len, t_len=t_len, first_t=first_t,
                             final=False):
                        cyc = R + l_len + (drain if (final or not overlap) else 0)
                        read_x = l_len * k_len * bytes_x if (first_t or not plan.a_resident) else 0.0
                        read_s = k_len * t_len * bytes_s if (first_m or not plan.stationary_resident) else 0.0
                        return Tile(read_x, read_s, 0.0, cyc, l_len * t_len if last_k else 0, 0.0)

                    pattern = [(tile(k_len, last), count) for k_len, count, _, last in _k_folds(K, kp)]
                    if last_t and last_group and overlap:  # the very last fold drains
                        plan.add(pattern, n - 1)
                        k_len, count, _, last = _k_folds(K, kp)[-1]
                        pattern[-1] = (tile(k_len, last, final=True), count)
                        plan.add(pattern, 1)
                    else:
                        plan.add(pattern, n)
                    m_index += n


def _estimate(plan: TilePlan, bytes_per_cycle: float) -> tuple[float, float]:
    traffic = plan.total("read_bytes") + plan.total("spill_psum_bytes")
    memory = 0.0 if math.isinf(bytes_per_cycle) else traffic / bytes_per_cycle
    return max(plan.compute_cycles, memory), traffic


def plan_gemm(M: int, N: int, K: int, groups: int, rows: int, cols: int, p: int, dataflow: str,
              bytes_a: float, bytes_b: float, bytes_psum: float, ifmap_bytes: float,
              filter_bytes: float, ofmap_bytes: float, overlap: bool = False,
              bytes_per_cycle: float = math.inf) -> TilePlan:
    """Tile a GEMM for the array and buffers (see the module docstring).

    ``bytes_a``/``bytes_b``: bytes per operand element as stored (0.5 for 4-bit formats);
    ``bytes_psum``: bytes per accumulator value; ``*_bytes``: buffer capacities;
    ``bytes_per_cycle``: DRAM bandwidth, to choose the loop order of ``ws``/``is``.

    Raises
    ------
    ConfigError
        A buffer that cannot hold the smallest tile (the message names it and the needed size).
    """
    for name, v in (("M", M), ("N", N), ("K", K), ("groups", groups)):
        if v < 1:
            raise ConfigError(f"GEMM {name} = {v} must be >= 1")
    folds = fold_count(M, N, K, rows, cols, p, dataflow)  # validates the dataflow
    swap = dataflow == "is"  # input stationary is ws of the transposed product
    L, T = (N, M) if swap else (M, N)
    bx, bs = (bytes_b, bytes_a) if swap else (bytes_a, bytes_b)
    caps = (filter_bytes, ifmap_bytes) if swap else (ifmap_bytes, filter_bytes)
    bufs = ("filter", "ifmap") if swap else ("ifmap", "filter")
    candidates, errors = [], []
    builders = [_output_stationary] if dataflow == "os" else [_stationary, _stationary_tile_major]
    for build in builders:
        one = TilePlan(dataflow, 0, 0, 0)
        try:
            if dataflow == "os":
                build(one, M, N, K, rows, cols, p, bytes_a, bytes_b, ifmap_bytes, filter_bytes, overlap)
            else:
                build(one, L, K, T, rows, cols, p, bx, bs, bytes_psum, caps[0], caps[1], ofmap_bytes,
                      bufs[0], bufs[1], overlap)
        except ConfigError as exc:
            errors.append(exc)
            continue
        one.compute_cycles = int(one.total("compute_cycles"))
        candidates.append(one)
    if not candidates:
        raise errors[0]
    best = min(candidates, key=lambda c: _estimate(c, bytes_per_cycle))
    if best.loop_order == "n-m-k":
        folds = best.tiles  # every tile reloads the stationary values
    plan = TilePlan(dataflow, folds * groups, best.compute_cycles * groups, groups * M * N * K)
    for pat, r in best.segments:
        pat = tuple((t.swapped(), k) for t, k in pat) if swap else pat
        plan.segments.append((pat, r))
    if groups > 1:  # the groups are independent GEMMs of the same plan, one after another
        plan.segments = _repeat(plan.segments, groups)
    plan.loop_order = best.loop_order
    plan.reloads = best.reloads
    plan.a_resident, plan.psum_spill = best.a_resident, best.psum_spill
    plan.stationary_resident = best.stationary_resident
    plan.sram_bits = _sram_traffic(M, N, K, groups, rows, cols, p, dataflow, bytes_a, bytes_b,
                                   bytes_psum, plan)
    return plan


def _repeat(segments: list, times: int) -> list:
    """``segments`` repeated ``times`` times: one segment when the whole sequence is one pattern
    (flattened into a single pattern when it is short), else the list repeated."""
    if len(segments) == 1:
        pat, r = segments[0]
        return [(pat, r * times)]
    runs = [run for pat, r in segments for _ in range(r) for run in pat]
    if len(runs) <= 64:
        return [(_merge(runs), times)]
    return segments * times


def _sram_traffic(M, N, K, groups, R, C, p, dataflow, bytes_a, bytes_b, bytes_psum,
                  plan: TilePlan) -> dict:
    """Bits read and written per buffer (for energy): the DMA writes what it reads from DRAM;
    the array reads the streamed operand once per column fold, the stationary operand once per
    fold (n-k-m) or once per streamed tile (n-m-k); partial sums are written after every K-fold
    and read back for every K-fold but the first, and read once more by the scaling unit."""
    g = groups * 8
    if dataflow == "os":
        a_reads = M * K * _ceil(N, C) * bytes_a
        b_reads = K * N * _ceil(M, R) * bytes_b
        psum_w, psum_r = M * N * bytes_psum, M * N * bytes_psum
    else:
        k_folds = _ceil(K, p * R)
        if dataflow == "ws":
            a_reads, b_reads = M * K * _ceil(N, C) * bytes_a, K * N * bytes_b * plan.reloads
        else:
            a_reads, b_reads = M * K * bytes_a * plan.reloads, K * N * _ceil(M, C) * bytes_b
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
    plan.loop_order = "m-n-k"
    rows, cols = min(R, M), min(C, N)
    _need("ifmap", rows * min(p, K) * bytes_a, a_cap / 2)
    _need("filter", cols * min(p, K) * bytes_b, b_cap / 2)
    # K-tile: a multiple of p whose a (rows x k) and b (k x cols) slices fit half a buffer
    k_tile = min(int(a_cap / 2 // (rows * bytes_a)), int(b_cap / 2 // (cols * bytes_b)), K)
    k_tile = max(min(p, K), (k_tile // p) * p)
    plan.a_resident = rows * K * bytes_a <= a_cap / 2  # a's row block kept across column folds
    plan.stationary_resident = K * N * bytes_b <= b_cap / 2  # all of b kept across row folds
    drain = R + C - 2
    m_groups = _split(M, R)
    n_groups = _split(N, C)

    def m_fold(m_len: int, first_m: bool, final: bool) -> Pattern:
        """The tiles of one row fold: every column fold, every K-tile."""
        runs = []
        n_index = 0
        n_total = _ceil(N, C)
        for n_len, n_count in n_groups:
            for first_n, n in ((True, 1), (False, n_count - 1)) if n_index == 0 else ((False, n_count),):
                if n <= 0:
                    continue
                read_a = first_n or not plan.a_resident
                read_b = first_m or not plan.stationary_resident
                last_n = n_index + n == n_total

                def make(k_len, first, last, n_len=n_len, read_a=read_a, read_b=read_b, final=False):
                    cyc = _ceil(k_len, p)
                    if last and (final or not overlap):
                        cyc += drain
                    return Tile(m_len * k_len * bytes_a if read_a else 0.0,
                                k_len * n_len * bytes_b if read_b else 0.0, 0.0, cyc,
                                m_len * n_len if last else 0, 0.0)

                fold = list(_fold(K, k_tile, make))
                if final and last_n:
                    runs += fold * (n - 1)
                    fold[-1] = (make(K - (_ceil(K, k_tile) - 1) * k_tile, False, True, final=True), 1) \
                        if len(fold) > 1 else (make(K, True, True, final=True), 1)
                    runs += fold
                else:
                    runs += fold * n
                n_index += n
        return _merge(runs)

    m_total = _ceil(M, R)
    m_index = 0
    for m_len, m_count in m_groups:
        for first_m, n in ((True, 1), (False, m_count - 1)) if m_index == 0 else ((False, m_count),):
            if n <= 0:
                continue
            if m_index + n == m_total and overlap:  # the very last fold drains
                plan.add(m_fold(m_len, first_m, False), n - 1)
                plan.add(m_fold(m_len, first_m, True), 1)
            else:
                plan.add(m_fold(m_len, first_m, False), n)
            m_index += n

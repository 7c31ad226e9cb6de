"""Mapping a GEMM onto the PE array: folds, closed-form compute cycles, the candidate mappings
(loop orders, tile lengths, what stays resident) and the tiles and traffic of each.

A GEMM multiplies a (M x K, the *ifmap* operand) by b (K x N, the *filter* operand) into M x N
(the *ofmap*). An R x C array whose PEs each reduce p products per cycle runs it in folds (the
standard systolic model of SCALE-Sim, Samajdar et al., ISPASS 2020), counted as cycles, not as the
index of the last cycle (SCALE-Sim prints one less):

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

Operands move as stored (`Operand`): a convolution's column matrix (the forward ifmap, the
weight gradient's filter operand) is fetched as regions of the stored input tensor and expanded
into rows on chip (`fourbit.hwsim.tensors.ConvGeometry.region_elements`); its columns are in
channel-major order (c, r, s).

Candidates. For ``ws`` and ``is`` (write x for the streamed operand, L x K, and s for the
stationary one, K x T; ``is`` swaps a and b) a candidate is a loop order, a tile length l along
L, and which operands stay resident. A resident operand is filled on its first use, each block
bringing its share of the stored bytes (`Operand.share_bytes`: the first sweep brings in the
stored operand exactly once, halos included), and kept (it must fit its whole buffer); the
others are read in blocks as the order needs them (a block must fit half its buffer: the
other half is filled meanwhile).

``n-k-m`` (fold-major; the closed forms above)
    for each column fold of s, for each K-fold, for each tile of x. Each stationary block is read
    once. x is read once per column fold, a tile's block of the current K-fold at a time, unless
    resident (``x_resident``: filled during the first column fold). Partial sums stay in the
    ofmap buffer across K-folds when a column stripe (L x C) fits (``psum_resident``), else they
    spill to DRAM after every K-fold but the last and are read back before every K-fold but the
    first. With ``group`` g > 1 the
    column folds go in groups of g that share each K-fold block of x (the whole L x p*R block
    kept in a half of the ifmap buffer, one tile of length L): x is read once per group, and the
    group's g partial-sum stripes stay on chip when they fit (2-D blocking of the output).
``n-m-k`` (tile-major)
    for each column fold, for each tile of x, for each K-fold: a tile's partial sums stay on
    chip, at the price of reloading the stationary values (a fold's fill and drain) for every
    tile; x as in ``n-k-m``; s is read for every tile unless resident (``s_resident``: filled
    during the first tile of each column fold).
``m-n-k`` (ifmap stripe resident)
    for each tile of x, for each column fold, for each K-fold: the tile's whole stripe of x
    (l x K) stays in the ifmap buffer, so x is read once (a convolution's stripes overlap by
    their halos, unless all of x stays resident, ``x_resident``, when each stripe brings its
    share); s as in ``n-m-k``; partial sums stay on chip; every (tile, column fold,
    K-fold) is a fold with its own fill and drain.

``os``: for each row fold, for each column fold, for each K-tile of length l (a multiple of
p): a's and b's blocks are read for every fold unless resident (``x_resident`` for a, filled
during the first column fold; ``s_resident`` for b, filled during the first row fold); outputs
never spill (they live in the PEs).

Which candidate runs is the mapper's choice (`fourbit.hwsim.mapper`): the fastest by simulated
time, or the one moving the fewest DRAM bytes (``mapping.objective``). The tile lengths come
from a fixed set (`tile_lengths`: powers of two, a convolution's output row, two rows and image,
the whole dimension) and feasibility only asks that data fit its buffer, so every candidate
feasible with a buffer is feasible with a larger one: a GEMM never gets slower when a buffer
grows. A candidate whose plan would need more than `MAX_SEGMENTS` segments is left out whatever
the buffers. The smallest tile of any candidate (one row of x, one K-fold) sets the smallest
buffers that work (`Gemm.candidates` names them). "Never slower" holds for the default
objective; with ``dram_bytes`` a larger buffer never adds bytes instead.

Padded lanes of partial folds cost cycles, never MACs: the MAC count is groups * M * N * K.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

from fourbit.hwsim.registers import register_latches
from fourbit.hwsim.tensors import ConvGeometry
from fourbit.traces.errors import ConfigError

__all__ = ["Candidate", "Gemm", "Operand", "Tile", "TilePlan", "compute_cycles", "fold_count",
           "tile_lengths", "too_small"]

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


class Tile(NamedTuple):
    """One step of a mapped GEMM: what the DMA brings in, what the array computes, what leaves.

    Bytes are DRAM bytes; ``out_elements`` are finished outputs handed to the scaling unit. (A
    named tuple: plans compare and sum many of them.)
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
    the closed-form and summed totals, the `Candidate` it was built from, and the SRAM traffic
    per buffer (bits, for energy)."""

    dataflow: str
    folds: int
    compute_cycles: int
    macs: int
    segments: list = field(default_factory=list)  # [(Pattern, repeat)]
    candidate: Candidate | None = None  # the loop order, tile length and residencies it was built from
    sram_bits: dict = field(default_factory=dict)  # buffer -> {"read": bits, "write": bits}
    register_latches: dict = field(default_factory=dict)  # "a", "b", "psum" -> latches (all groups)
    _totals: dict | None = field(default=None, repr=False, compare=False)  # of the tiles' fields (`total`)

    def add(self, pattern, repeat: int = 1, merged: bool = False) -> None:
        """Append ``pattern`` (a Tile, or runs; ``merged``: runs already merged, a tuple)
        ``repeat`` times, merging with the last segment where the sequence stays the same."""
        self._totals = None
        if isinstance(pattern, Tile):
            pattern = ((pattern, 1),)
        if not merged:
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

    def total(self, attr: str) -> float:
        """The sum of a `Tile` field (or ``tiles``, ``output_tiles``) over every tile; all of
        them are summed in one pass and kept until the next `add` (segments change only through
        `add`, or before the first total)."""
        if self._totals is None:
            width = len(Tile._fields) + 2
            sums = [0] * width
            per_pattern: dict[int, list] = {}  # plans repeat few distinct patterns (exact sums either way)
            for pat, r in self.segments:
                once = per_pattern.get(id(pat))
                if once is None:
                    once = [0] * width
                    for t, k in pat:
                        once = [a + b * k for a, b in zip(once, (*t, 1, 0 if t.silent else 1), strict=True)]
                    per_pattern[id(pat)] = once
                sums = [a + b * r for a, b in zip(sums, once, strict=True)]
            self._totals = dict(zip((*Tile._fields, "tiles", "output_tiles"), sums, strict=True))
        return self._totals[attr]

    @property
    def tiles(self) -> int:
        return int(self.total("tiles"))

    @property
    def output_tiles(self) -> int:
        """Tiles that the scaling unit processes (outputs or spilled partial sums)."""
        return int(self.total("output_tiles"))

    @property
    def traffic(self) -> float:
        """DRAM bytes the tiles move (operands and spilled partial sums, both ways; the output
        path's bytes are the same for every plan of a GEMM)."""
        return sum(self.total(n) for n in ("read_a_bytes", "read_b_bytes", "read_psum_bytes", "spill_psum_bytes"))

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




@dataclass(frozen=True)
class Operand:
    """A GEMM operand as the chip moves it: a ``rows`` x ``cols`` matrix of one group, at
    ``bytes_per_element`` as stored; ``conv`` when it is the column matrix of that convolution's
    input (``pixels``: which dimension holds output pixels, ``"rows"`` or ``"cols"``)."""

    rows: int
    cols: int
    bytes_per_element: float
    conv: ConvGeometry | None = None
    pixels: str = "rows"

    def block_bytes(self, n_rows: float, n_cols: float) -> float:
        """DRAM bytes of an ``n_rows`` x ``n_cols`` block (a convolution's stored region)."""
        if self.conv is None:
            return n_rows * n_cols * self.bytes_per_element
        pix, col = (n_rows, n_cols) if self.pixels == "rows" else (n_cols, n_rows)
        return self.conv.region_elements(pix, col) * self.bytes_per_element

    @property
    def stored_bytes(self) -> float:
        """The whole operand as stored (one group)."""
        return self.block_bytes(self.rows, self.cols)

    def share_bytes(self, n_rows: float, n_cols: float) -> float:
        """What an ``n_rows`` x ``n_cols`` block adds to a resident copy being filled on first
        use: its share of the stored bytes (the blocks of one sweep bring in the stored operand
        exactly once, whatever their halos)."""
        return self.stored_bytes * (n_rows * n_cols) / (self.rows * self.cols)

    @property
    def T(self) -> Operand:  # noqa: N802 (the transpose, as in numpy)
        return Operand(self.cols, self.rows, self.bytes_per_element, self.conv,
                       "cols" if self.pixels == "rows" else "rows")


@dataclass(frozen=True)
class Candidate:
    """One way to map a GEMM: ``order`` (``n-k-m``, ``n-m-k``, ``m-n-k``), the tile length along
    the streamed dimension (``os``: along K), and what stays resident (see the module docstring)."""

    order: str
    tile: int
    x_resident: bool = False
    s_resident: bool = False
    psum_resident: bool = False
    group: int = 1  # n-k-m: column folds that share each K-fold block of x

    def describe(self) -> str:
        kept = [n for n, on in (("x", self.x_resident), ("s", self.s_resident), ("psum", self.psum_resident)) if on]
        return (f"{self.order} tile {self.tile}" + (f" group {self.group}" if self.group > 1 else "")
                + (f" resident {'+'.join(kept)}" if kept else ""))


def tile_lengths(length: int, conv_row: int = 0, conv_image: int = 0) -> list[int]:
    """The tile lengths tried along a dimension of ``length``: powers of two, one and two output
    rows and one image of a convolution (``conv_row``, ``conv_image`` pixels), and the whole
    length; all at most ``length``. The set depends on the GEMM only, never on a buffer."""
    out = {length}
    out.update(min(length, 1 << i) for i in range(length.bit_length() + 1))
    for n in (conv_row, 2 * conv_row, conv_image):
        if n:
            out.add(min(length, n))
    return sorted(out)


MAX_SEGMENTS = 4096
"""Segments a candidate's tile plan may have (an m-n-k plan of short tiles over many column
folds would need one per tile and fold); longer candidates are left out, whatever the buffers."""


def _fits(needed: float, have: float) -> bool:
    return needed <= have


@dataclass(frozen=True)
class _Shape:
    """A ws/is GEMM as the plan sees it: x (L x K) streamed, s (K x T) stationary, outputs L x T,
    an R x C array with p products per PE per cycle, accumulators of ``psum`` bytes."""

    x: Operand
    s: Operand
    R: int
    C: int
    p: int
    psum: float
    overlap: bool
    out_conv: ConvGeometry | None = None  # bwd_data: outputs are columns of this input gradient
    swapped: bool = False  # is: outputs are the transposed product (L = columns, T = pixels)

    @property
    def L(self) -> int:  # noqa: N802
        return self.x.rows

    def staged(self, n_rows: int, n_cols: int) -> float:
        """Ofmap bytes an ``n_rows`` x ``n_cols`` output tile needs (`staged_bytes`)."""
        return staged_bytes(n_rows, n_cols, self.psum, self.out_conv, self.swapped)

    @property
    def K(self) -> int:  # noqa: N802
        return self.x.cols

    @property
    def T(self) -> int:  # noqa: N802
        return self.s.cols


def staged_bytes(n_rows: int, n_cols: int, psum: float, out_conv: ConvGeometry | None, swapped: bool) -> float:
    """Ofmap-buffer bytes that hold an ``n_rows`` x ``n_cols`` output tile at the accumulator's
    ``psum`` bytes; for ``bwd_data`` (``out_conv``) whose windows overlap (stride below the
    kernel), the region of the input gradient its columns are added into (col2im on chip), when
    larger (`ConvGeometry.region_elements`; ``swapped``: the tile's rows are columns of the
    gradient's column matrix). Windows that do not overlap add each column into its own element
    (the others are zeros, written without being held)."""
    elements = n_rows * n_cols
    if out_conv is not None and out_conv.stride < max(out_conv.kernel_h, out_conv.kernel_w):
        pixels, columns = (n_cols, n_rows) if swapped else (n_rows, n_cols)
        elements = max(elements, out_conv.region_elements(pixels, columns))
    return elements * psum


def _stationary_candidates(sh: _Shape, caps: tuple[float, float, float], lengths: list[int],
                           halves: int = 2) -> list[Candidate]:
    """The feasible ws/is candidates with buffer capacities ``caps`` (x, s, ofmap bytes), each
    buffer in ``halves`` halves (2: double buffered; a streamed block fits one half)."""
    x_cap, s_cap, o_cap = caps
    kp, c = min(sh.p * sh.R, sh.K), min(sh.C, sh.T)
    k_folds = _ceil(sh.K, sh.p * sh.R)
    s_tile = _fits(sh.s.block_bytes(kp, c), s_cap / halves)
    long_folds = _ceil(sh.T, sh.C) * len(_k_folds(sh.K, sh.p * sh.R)) > 64  # a tile's folds: no one pattern

    def too_long(n: int) -> bool:  # m-n-k: three segments per tile when its folds are long
        return long_folds and 3 * _ceil(sh.L, n) > MAX_SEGMENTS

    out = []
    for order in ("n-k-m", "n-m-k", "m-n-k"):
        for n in lengths:
            if not _fits(sh.staged(n, c), o_cap / halves):  # outputs staged for the scaling unit (and col2im)
                continue
            if order == "m-n-k":
                if not _fits(sh.x.block_bytes(n, sh.K), x_cap / halves) or too_long(n):
                    continue
                for x_res in (False, True):  # x_res: the stripes fill a resident copy of x
                    if x_res and not _fits(sh.x.stored_bytes, x_cap):
                        continue
                    for s_res in (False, True):
                        if (s_tile if not s_res else _fits(sh.s.stored_bytes, s_cap)):
                            out.append(Candidate(order, n, x_resident=x_res, s_resident=s_res))
                continue
            for x_res in (False, True):
                x_ok = _fits(sh.x.stored_bytes, x_cap) if x_res else _fits(sh.x.block_bytes(n, kp), x_cap / halves)
                if not x_ok:
                    continue
                if order == "n-k-m":
                    if not s_tile:
                        continue
                    for p_res in ((False, True) if k_folds > 1 else (False,)):
                        if not p_res or _fits(sh.L * c * sh.psum, o_cap):
                            out.append(Candidate(order, n, x_resident=x_res, psum_resident=p_res))
                    if not x_res and n == sh.L and _fits(sh.x.block_bytes(sh.L, kp), x_cap / halves):
                        out += _groups(sh, order, n, k_folds, o_cap)
                    continue
                for s_res in (False, True):
                    if (s_tile if not s_res else _fits(sh.s.stored_bytes, s_cap)):
                        out.append(Candidate(order, n, x_resident=x_res, s_resident=s_res))
    return out


def _groups(sh: _Shape, order: str, n: int, k_folds: int, o_cap: float) -> list[Candidate]:
    """n-k-m with column folds in groups of 2, 4, ... (and all of them) sharing each K-fold block
    of x (L x p*R, kept in a half of the ifmap buffer): x is read once per group instead of once
    per column fold; the group's partial sums stay on chip when they fit the ofmap buffer."""
    folds = _ceil(sh.T, sh.C)
    sizes = sorted({g for g in (1 << i for i in range(1, folds.bit_length())) if g < folds} | ({folds} if folds > 1 else set()))
    out = []
    for g in sizes:
        for p_res in ((False, True) if k_folds > 1 else (False,)):
            if not p_res or _fits(g * sh.L * min(sh.C, sh.T) * sh.psum, o_cap):
                out.append(Candidate(order, n, psum_resident=p_res, group=g))
    return out


def _os_candidates(a: Operand, b: Operand, R: int, C: int, caps: tuple[float, float], lengths: list[int],
                   staged: float, halves: int = 2) -> list[Candidate]:
    """The feasible os candidates: K-tile lengths and whether a and b stay resident (none when
    the ``staged`` bytes of an R x C output tile do not fit a half of the ofmap buffer,
    ``caps[2]``; each buffer in ``halves`` halves)."""
    a_cap, b_cap, o_cap = caps
    rows, cols = min(R, a.rows), min(C, b.cols)
    out = []
    if not _fits(staged, o_cap / halves):
        return out
    for n in lengths:
        if not (_fits(a.block_bytes(rows, n), a_cap / halves) and _fits(b.block_bytes(n, cols), b_cap / halves)):
            continue
        for a_res in (False, True):
            if a_res and not _fits(a.stored_bytes, a_cap):
                continue
            for b_res in (False, True):
                if not b_res or _fits(b.stored_bytes, b_cap):
                    out.append(Candidate("m-n-k", n, x_resident=a_res, s_resident=b_res))
    return out


def _drain_last(plan: TilePlan, drain: int) -> None:
    """With fill/drain overlap only the GEMM's very last fold drains: add ``drain`` cycles to its
    last tile (the builders leave every fold's drain out when folds overlap)."""
    pattern, repeat = plan.segments.pop()
    if repeat > 1:
        plan.segments.append((pattern, repeat - 1))
    tile, count = pattern[-1]
    runs = [*pattern[:-1], *([(tile, count - 1)] if count > 1 else []), (tile._replace(compute_cycles=tile.compute_cycles + drain), 1)]
    plan.add(runs)


def _n_k_m(plan: TilePlan, sh: _Shape, cand: Candidate) -> None:
    """ws/is, loop order n-k-m (see the module docstring)."""
    R, C, kp = sh.R, sh.C, sh.p * sh.R
    drain = 0 if sh.overlap else R + C - 2
    spill = _ceil(sh.K, kp) > 1 and not cand.psum_resident

    def fold(t_len: int, k_len: int, first_k: bool, last_k: bool, read) -> Pattern:
        """The tiles of one fold; ``read(l, k)``: what a tile reads of x."""

        def make(l_len, first, last):
            psum = l_len * t_len * sh.psum
            return Tile(read(l_len, k_len), sh.s.block_bytes(k_len, t_len) if first else 0.0,
                        psum if spill and not first_k else 0.0,
                        l_len + (R if first else 0) + (drain if last else 0),
                        l_len * t_len if last_k else 0, psum if spill and not last_k else 0.0)

        return _fold(sh.L, cand.tile, make)

    def group(lens: tuple, read) -> list:
        """A group of column folds (their widths ``lens``) K-fold by K-fold, as (runs, count):
        the group's first fold reads x with ``read``, the others reuse it."""
        return [([run for i, t_len in enumerate(lens) for run in fold(t_len, k_len, first_k, last_k, read if i == 0 else _none)],
                 count) for k_len, count, first_k, last_k in _k_folds(sh.K, kp)]

    if cand.x_resident:  # filled during the first column fold, then kept
        first = True
        for t_len, t_count in _split(sh.T, C):
            if first:
                _emit(plan, group((t_len,), sh.x.share_bytes), 1)
                t_count, first = t_count - 1, False
            _emit(plan, group((t_len,), _none), t_count)
        return
    widths = [t_len for t_len, n in _split(sh.T, C) for _ in range(n)]
    groups: list[list] = []  # [widths, repeat]: consecutive equal groups of cand.group column folds
    for i in range(0, len(widths), cand.group):
        lens = tuple(widths[i:i + cand.group])
        if groups and groups[-1][0] == lens:
            groups[-1][1] += 1
        else:
            groups.append([lens, 1])
    for lens, repeat in groups:
        _emit(plan, group(lens, sh.x.block_bytes), repeat)


def _none(*_) -> float:
    return 0.0


def _tile_major(plan: TilePlan, sh: _Shape, cand: Candidate) -> None:
    """ws/is, loop orders n-m-k and m-n-k: every (tile, column fold, K-fold) is a fold whose
    partial sums stay on chip (see the module docstring)."""
    R, C, kp = sh.R, sh.C, sh.p * sh.R
    drain = 0 if sh.overlap else R + C - 2
    k_folds = _k_folds(sh.K, kp)
    m_outer = cand.order == "m-n-k"

    def tile_folds(l_len: int, t_len: int, first_l: bool, first_t: bool) -> list:
        """One tile's K-folds for one column fold, as (Tile, count) runs."""
        runs = []
        for k_len, count, _, last_k in k_folds:
            if m_outer:  # the tile's stripe is loaded during its first column fold
                stripe = sh.x.share_bytes if cand.x_resident else sh.x.block_bytes
                read_x = stripe(l_len, sh.K) * k_len / sh.K if first_t else 0.0
            elif cand.x_resident:  # filled during the first column fold, then kept
                read_x = sh.x.share_bytes(l_len, k_len) if first_t else 0.0
            else:
                read_x = sh.x.block_bytes(l_len, k_len)
            if cand.s_resident:  # filled with the first tile of each column fold, then kept
                read_s = sh.s.share_bytes(k_len, t_len) if first_l else 0.0
            else:
                read_s = sh.s.block_bytes(k_len, t_len)
            runs.append((Tile(read_x, read_s, 0.0, R + l_len + drain, l_len * t_len if last_k else 0, 0.0), count))
        return runs

    outer, inner = (_split(sh.L, cand.tile), _split(sh.T, C)) if m_outer else (_split(sh.T, C), _split(sh.L, cand.tile))
    for oi, (o_len, o_count) in enumerate(outer):
        for first_o, o_n in ((True, 1), (False, o_count - 1)) if oi == 0 else ((False, o_count),):
            if o_n <= 0:
                continue
            seq = []
            for ii, (i_len, i_count) in enumerate(inner):
                for first_i, i_n in ((True, 1), (False, i_count - 1)) if ii == 0 else ((False, i_count),):
                    if i_n > 0:
                        l_len, t_len = (o_len, i_len) if m_outer else (i_len, o_len)
                        first_l, first_t = (first_o, first_i) if m_outer else (first_i, first_o)
                        seq.append((tile_folds(l_len, t_len, first_l, first_t), i_n))
            _emit(plan, seq, o_n)


def _emit(plan: TilePlan, seq: list, times: int) -> None:
    """Append ``times`` repetitions of ``seq`` ((runs, count) in order): one pattern when it is
    short, else its parts one after another."""
    if sum(len(runs) * n for runs, n in seq) <= 64:
        plan.add([run for runs, n in seq for _ in range(n) for run in runs], times)
        return
    patterns = [(_merge(runs), n) for runs, n in seq]
    for _ in range(times):
        for pattern, n in patterns:
            plan.add(pattern, n, merged=True)


def _output_stationary(plan: TilePlan, a: Operand, b: Operand, R: int, C: int, p: int, overlap: bool,
                       cand: Candidate) -> None:
    """os: outputs held in the PEs; a's row block and b's column block stream along K in tiles of
    ``cand.tile`` (see the module docstring)."""
    K = a.cols
    drain = 0 if overlap else R + C - 2
    n_groups = _split(b.cols, C)

    def m_fold(m_len: int, first_m: bool) -> list:
        runs = []
        for ni, (n_len, n_count) in enumerate(n_groups):
            for first_n, n in ((True, 1), (False, n_count - 1)) if ni == 0 else ((False, n_count),):
                if n <= 0:
                    continue
                # resident a: filled during the first column fold; resident b: during the first row fold
                read_a = a.block_bytes if not cand.x_resident else a.share_bytes if first_n else None
                read_b = b.block_bytes if not cand.s_resident else b.share_bytes if first_m else None

                def make(k_len, first, last, n_len=n_len, read_a=read_a, read_b=read_b):
                    return Tile(read_a(m_len, k_len) if read_a else 0.0, read_b(k_len, n_len) if read_b else 0.0, 0.0,
                                _ceil(k_len, p) + (drain if last else 0), m_len * n_len if last else 0, 0.0)

                runs += list(_fold(K, cand.tile, make)) * n
        return runs

    for mi, (m_len, m_count) in enumerate(_split(a.rows, R)):
        for first_m, n in ((True, 1), (False, m_count - 1)) if mi == 0 else ((False, m_count),):
            if n > 0:
                plan.add(m_fold(m_len, first_m), n)


def _bytes_text(n: float) -> str:
    """Bytes as text: whole numbers without a point, halves with one (a 1-byte buffer's half is 0.5)."""
    return f"{n:.1f}".rstrip("0").rstrip(".")


def too_small(needs: dict[str, int], have: dict[str, float], halves: int, allowed: dict[str, int] | None = None,
              why: str = "") -> ConfigError:
    """The error for buffers ``have`` (bytes) that cannot hold the smallest tile, whose buffers
    need ``needs`` (`Gemm.smallest_tile_bytes`): the first buffer short, what it needs per half
    and has, and the size that works (``allowed``, default ``needs``; ``why`` follows it)."""
    part = "per buffer half" if halves == 2 else "in the buffer (single buffered)"
    allowed = allowed or needs
    for buffer, need in needs.items():
        if need > have[buffer]:
            return ConfigError(
                f"sram.{buffer}_bytes is too small: the smallest tile needs {math.ceil(need / halves)} bytes {part}, "
                f"there are {_bytes_text(have[buffer] / halves)}; allowed: sram.{buffer}_bytes >= {allowed[buffer]}{why}")
    return ConfigError("no mapping of this GEMM fits the SRAM buffers")


@dataclass(frozen=True)
class Gemm:
    """A GEMM (one group; ``groups`` of them run one after another) on an array, ready to map:
    its operands as stored (`Operand`), the array's rows, columns and products per PE per cycle,
    the dataflow, the accumulator's bytes and whether folds overlap fill and drain."""

    M: int
    N: int
    K: int
    groups: int
    a: Operand
    b: Operand
    rows: int
    cols: int
    p: int
    dataflow: str
    psum_bytes: float
    overlap: bool = False
    out_conv: ConvGeometry | None = None  # bwd_data: outputs are added into this convolution's input gradient

    def __post_init__(self) -> None:
        for name in ("M", "N", "K", "groups"):
            if getattr(self, name) < 1:
                raise ConfigError(f"GEMM {name} = {getattr(self, name)} must be >= 1")
        fold_count(self.M, self.N, self.K, self.rows, self.cols, self.p, self.dataflow)  # validates the dataflow

    @property
    def _swap(self) -> bool:
        return self.dataflow == "is"  # input stationary is ws of the transposed product

    def _shape(self) -> _Shape:
        x, s = (self.b.T, self.a.T) if self._swap else (self.a, self.b)
        return _Shape(x, s, self.rows, self.cols, self.p, self.psum_bytes, self.overlap, self.out_conv, self._swap)

    def _os_staged(self) -> float:
        return staged_bytes(min(self.rows, self.M), min(self.cols, self.N), self.psum_bytes, self.out_conv, False)

    def lengths(self) -> list[int]:
        """The tile lengths tried (`tile_lengths`) along the streamed dimension (os: along K)."""
        if self.dataflow == "os":
            return sorted({min(self.K, self.p * n) for n in tile_lengths(_ceil(self.K, self.p))} | {self.K})
        x = self._shape().x
        conv = x.conv if x.pixels == "rows" else None  # its rows are output pixels
        return tile_lengths(x.rows, conv.out_w if conv else 0, conv.out_h * conv.out_w if conv else 0)

    def candidates(self, ifmap_bytes: float, filter_bytes: float, ofmap_bytes: float,
                   halves: int = 2) -> list[Candidate]:
        """The candidates whose tiles fit the buffers (bytes each; each buffer in ``halves``
        halves, 2 when double buffered: a streamed block fits one half).

        Raises ConfigError naming the buffer that cannot hold the smallest tile and the size that
        would (`smallest_tile_bytes`)."""
        if self.dataflow == "os":
            found = _os_candidates(self.a, self.b, self.rows, self.cols, (ifmap_bytes, filter_bytes, ofmap_bytes),
                                   self.lengths(), self._os_staged(), halves)
        else:
            caps = (filter_bytes, ifmap_bytes, ofmap_bytes) if self._swap else (ifmap_bytes, filter_bytes, ofmap_bytes)
            found = _stationary_candidates(self._shape(), caps, self.lengths(), halves)
        if not found:
            raise too_small(self.smallest_tile_bytes(halves), {"ifmap": ifmap_bytes, "filter": filter_bytes,
                                                              "ofmap": ofmap_bytes}, halves)
        return found

    def smallest_tile_bytes(self, halves: int = 2) -> dict[str, int]:
        """Bytes each buffer (``ifmap``, ``filter``, ``ofmap``) needs for the smallest tile (one
        row, one K-fold; os: one K-step): ``halves`` times its block (ofmap: its staged outputs)."""
        if self.dataflow == "os":
            k = min(self.p, self.K)
            needs = {"ifmap": self.a.block_bytes(min(self.rows, self.M), k),
                     "filter": self.b.block_bytes(k, min(self.cols, self.N)), "ofmap": self._os_staged()}
        else:
            sh = self._shape()
            kp, c = min(self.p * self.rows, self.K), min(self.cols, sh.T)
            x_buf, s_buf = ("filter", "ifmap") if self._swap else ("ifmap", "filter")
            needs = {s_buf: sh.s.block_bytes(kp, c), x_buf: sh.x.block_bytes(1, kp), "ofmap": sh.staged(1, c)}
        return {buffer: math.ceil(needs[buffer] * halves) for buffer in ("ifmap", "filter", "ofmap")}

    def floor_cycles(self, cand: Candidate, per_load: int) -> int:
        """A lower bound of any simulation of ``cand``'s plan, without building it: the
        closed-form compute cycles (tile-major orders only add fills), and the tiles of the
        first sweep that must read operands (every tile of the first column fold, K-fold by
        K-fold; os: the K-tiles of every row fold), each at least ``per_load`` cycles of the
        DMA, which loads one tile at a time (setup and latency)."""
        compute = compute_cycles(self.M, self.N, self.K, self.rows, self.cols, self.p, self.dataflow, self.overlap)
        if self.dataflow == "os":
            loads = _ceil(self.M, self.rows) * _ceil(self.K, cand.tile)
        else:
            sh = self._shape()
            loads = _ceil(sh.L, cand.tile) * _ceil(sh.K, self.p * self.rows)
        return self.groups * max(compute, loads * per_load)

    def plan(self, cand: Candidate) -> TilePlan:
        """The tile plan of candidate ``cand`` (all groups)."""
        one = TilePlan(self.dataflow, 0, 0, 0)
        if self.dataflow == "os":
            _output_stationary(one, self.a, self.b, self.rows, self.cols, self.p, self.overlap, cand)
        elif cand.order == "n-k-m":
            _n_k_m(one, self._shape(), cand)
        else:
            _tile_major(one, self._shape(), cand)
        if self.overlap:
            _drain_last(one, self.rows + self.cols - 2)
        folds = fold_count(self.M, self.N, self.K, self.rows, self.cols, self.p, self.dataflow)
        tiles_per_fold = 1
        if self.dataflow != "os" and cand.order != "n-k-m":  # every tile reloads the stationary values
            tiles_per_fold = _ceil(self._shape().L, cand.tile)
        plan = TilePlan(self.dataflow, folds * tiles_per_fold * self.groups, int(one.total("compute_cycles")) * self.groups,
                        self.groups * self.M * self.N * self.K, candidate=cand)
        for pat, r in one.segments:
            plan.segments.append((tuple((t.swapped(), k) for t, k in pat) if self._swap else pat, r))
        if self.groups > 1:  # the groups are independent GEMMs of the same plan, one after another
            plan.segments = _repeat(plan.segments, self.groups)
        totals = {name: value * self.groups for name, value in one._totals.items()}
        if self._swap:
            totals["read_a_bytes"], totals["read_b_bytes"] = totals["read_b_bytes"], totals["read_a_bytes"]
        plan._totals = totals
        plan.sram_bits = _sram_traffic(self, plan, tiles_per_fold)
        latches = register_latches(self.M, self.N, self.K, self.rows, self.cols, self.p, self.dataflow, tiles_per_fold)
        plan.register_latches = {name: n * self.groups for name, n in latches.items()}
        return plan


def _sram_traffic(gemm: Gemm, plan: TilePlan, reloads: int) -> dict:
    """Bits read and written per buffer (for energy): the DMA writes what it reads from DRAM;
    the array reads the streamed operand once per column fold (expanded rows for a column
    matrix) and the stationary operand once per fold, i.e. ``reloads`` times for a tile-major
    order; partial sums are written after every K-fold and read back for every K-fold but the
    first, and read once more by the scaling unit."""
    M, N, K, R, C, p = gemm.M, gemm.N, gemm.K, gemm.rows, gemm.cols, gemm.p
    bytes_a, bytes_b, bytes_psum = gemm.a.bytes_per_element, gemm.b.bytes_per_element, gemm.psum_bytes
    g = gemm.groups * 8
    if gemm.dataflow == "os":
        a_reads = M * K * _ceil(N, C) * bytes_a
        b_reads = K * N * _ceil(M, R) * bytes_b
        psum_w, psum_r = M * N * bytes_psum, M * N * bytes_psum
    else:
        k_folds = _ceil(K, p * R)
        if gemm.dataflow == "ws":
            a_reads, b_reads = M * K * _ceil(N, C) * bytes_a, K * N * bytes_b * reloads
        else:
            a_reads, b_reads = M * K * bytes_a * reloads, K * N * _ceil(M, C) * bytes_b
        psum_w = M * N * k_folds * bytes_psum
        psum_r = M * N * k_folds * bytes_psum  # k_folds - 1 accumulations + the final read-out
    return {
        "ifmap": {"read": a_reads * g, "write": plan.total("read_a_bytes") * 8},
        "filter": {"read": b_reads * g, "write": plan.total("read_b_bytes") * 8},
        "ofmap": {"read": psum_r * g, "write": psum_w * g + plan.total("read_psum_bytes") * 8},
    }

"""DMA: prefetches each tile's operands from DRAM into the double-buffered SRAM."""

from __future__ import annotations

from dataclasses import dataclass

import simpy

from fourbit.hwsim.blocks.dram import Dram, channel_cycles
from fourbit.hwsim.blocks.sram import Sram

__all__ = ["Batch", "Dma", "load_cycles"]


def load_cycles(read_bytes: float, setup_cycles: int, bytes_per_cycle: float, latency_cycles: int) -> int:
    """Cycles from the DMA starting to load a tile of ``read_bytes`` to its data in SRAM without
    contention: descriptor setup, the transfer on the channel, the DRAM latency (0 for a tile
    that reads nothing)."""
    if read_bytes <= 0:
        return 0
    return setup_cycles + channel_cycles(read_bytes, bytes_per_cycle) + latency_cycles


@dataclass(frozen=True)
class Batch:
    """``count`` consecutive silent tiles (no outputs, no spills) handed to the array as one
    event: it holds the array for ``span`` cycles, of which ``busy`` compute and the rest operand
    waits between its tiles, exactly as in the tile-by-tile schedule it replaces."""

    count: int
    span: int
    busy: int


class _Cursor:
    """A position in a plan's segments: segment, repetition, run, tile within the run."""

    def __init__(self, segments: list) -> None:
        self.segments = segments
        self.si = self.rep = self.ri = self.off = 0

    @property
    def done(self) -> bool:
        return self.si >= len(self.segments)

    @property
    def tile(self):
        return self.segments[self.si][0][self.ri][0]

    def advance(self, n: int = 1) -> None:
        """Move ``n`` tiles forward within the current run (then normalise)."""
        self.off += n
        while not self.done:
            pattern, repeat = self.segments[self.si]
            if self.off < pattern[self.ri][1]:
                return
            self.off = 0
            self.ri += 1
            if self.ri < len(pattern):
                continue
            self.ri = 0
            self.rep += 1
            if self.rep < repeat:
                continue
            self.rep = 0
            self.si += 1


class _Stretch:
    """The recurrence S(i+1) = S(i) + max(load(i), compute(i-1)) summed over silent tiles, run
    by run and repetition by repetition (closed forms, not tile by tile)."""

    def __init__(self, dma: Dma, prev_compute: int) -> None:
        self.dma = dma
        self.c_prev = prev_compute
        self.s = 0  # S(next tile) - S(first tile)
        self.count = 0
        self.busy = 0
        self.read_bytes = 0.0
        self.channel_cycles = 0
        self.first_step = None  # S(first + 1) - S(first)

    def add_run(self, tile, k: int) -> None:
        load, c = self.dma.load_cycles(tile), tile.compute_cycles
        step = max(load, self.c_prev)
        if self.first_step is None:
            self.first_step = step
        self.s += step + (k - 1) * max(load, c)
        self.busy += k * c
        self.count += k
        self.read_bytes += k * tile.read_bytes
        self.channel_cycles += k * self.dma.dram.cycles(tile.read_bytes)
        self.c_prev = c

    def add_repeats(self, pattern, times: int) -> None:
        """``times`` whole repetitions of an all-silent ``pattern``: the first one run by run,
        the others with the same advance (their first tile follows the pattern's last)."""
        for tile, k in pattern:
            self.add_run(tile, k)
        if times > 1:
            start = (self.s, self.busy, self.count, self.read_bytes, self.channel_cycles)
            for tile, k in pattern:  # a second repetition measures the steady advance
                self.add_run(tile, k)
            d = [now - then for now, then in zip((self.s, self.busy, self.count, self.read_bytes,
                                                   self.channel_cycles), start, strict=True)]
            extra = times - 2
            self.s += d[0] * extra
            self.busy += d[1] * extra
            self.count += d[2] * extra
            self.read_bytes += d[3] * extra
            self.channel_cycles += d[4] * extra

    @property
    def span(self) -> int:
        """From the array's start of the first tile, S(first + 1), to the end of the last,
        S(after last) + compute(last)."""
        return self.s + self.c_prev - (self.first_step or 0)


def _silent_pattern(pattern) -> bool:
    return all(t.silent for t, _ in pattern)


class Dma:
    """Walks the tiles of a GEMM in order: waits for a free input buffer half (the array frees
    one when it finishes a tile), reads the tile's ifmap, filter and spilled partial-sum bytes
    from DRAM (after ``setup_cycles`` of descriptor handling), and hands the tile to the array.
    With two halves the DMA works one tile ahead of the array (double buffering).

    Steady state (``compress``). While tiles produce no outputs, the array never waits for the
    scaling unit, so the DMA acquires the half for tile i + 1 exactly when the array starts tile
    i; if in addition the scaling unit is idle and nothing else holds the DRAM channel
    (``quiet``), nothing else can use the channel until the next tile with outputs, and the
    schedule follows the recurrence S(i+1) = S(i) + max(load(i), compute(i-1)), where S(i) is
    when tile i starts loading and load = setup + transfer + latency. The DMA then hands the whole
    silent stretch to the array as one `Batch` (span and busy time from the recurrence, summed run
    by run and repetition by repetition) and resumes where the tile-by-tile schedule would be.
    Tests check that both modes give identical counters.
    """

    COUNTERS = ("batches",)
    """What grows as the DMA works (`fourbit.hwsim.periodic` adds n periods' worth in a jump)."""

    def __init__(self, env: simpy.Environment, dram: Dram, sram: Sram, setup_cycles: int,
                 compress: bool = True, quiet=None) -> None:
        self.env = env
        self.dram = dram
        self.sram = sram
        self.setup_cycles = setup_cycles
        self.compress = compress and sram.halves == 2
        self.quiet = quiet or (lambda: False)  # True when no other block can use the DRAM channel
        self.periodic = None  # a `fourbit.hwsim.periodic.Periodic` (set by the pipeline), visited before each tile
        self.batches = 0
        self.streak = 0  # silent tiles loaded just before the current one (only whether >= 2 matters)

    def shift(self, cycles: int) -> None:
        """Nothing to move: where `fourbit.hwsim.periodic` jumps (before a tile) it holds no cycle."""

    def load_cycles(self, tile) -> int:
        """Cycles from starting to load ``tile`` to its data being in SRAM, without contention
        (`load_cycles`)."""
        return load_cycles(tile.read_bytes, self.setup_cycles, self.dram.bytes_per_cycle, self.dram.latency_cycles)

    def _load(self, tile):
        if tile.read_bytes > 0:
            if self.setup_cycles:
                yield self.env.timeout(self.setup_cycles)
            yield from self.dram.transfer(tile.read_bytes, write=False)
        self.sram.fill(tile)

    def _stretch(self, cur: _Cursor, prev_compute: int) -> _Stretch:
        """Accumulate the silent tiles from ``cur`` on, moving ``cur`` past them."""
        st = _Stretch(self, prev_compute)
        while not cur.done:
            pattern, repeat = cur.segments[cur.si]
            if cur.ri == 0 and cur.off == 0 and _silent_pattern(pattern):  # whole repetitions
                st.add_repeats(pattern, repeat - cur.rep)
                cur.si, cur.rep = cur.si + 1, 0
                continue
            tile, k = pattern[cur.ri]
            if not tile.silent:
                break
            st.add_run(tile, k - cur.off)
            cur.advance(k - cur.off)
        return st

    def run(self, segments):
        """The DMA process over ``segments``: the (pattern, repeat) list of a `TilePlan`."""
        env = self.env
        cur = _Cursor(segments)
        prev_compute = 0
        while not cur.done:
            if self.periodic is not None:  # every block's state, here, is all the future depends on
                self.periodic.visit(cur, (min(self.streak, 2), prev_compute))
            tile = cur.tile
            yield self.sram.free.get(1)
            if self.compress and self.streak >= 2 and tile.silent and self.quiet():
                start = env.now
                st = self._stretch(cur, prev_compute)
                load = self.load_cycles(tile)
                if load:
                    yield env.timeout(load)
                self.dram.account_totals(st.read_bytes, st.channel_cycles, write=False)
                self.sram.write_bytes += st.read_bytes
                yield self.sram.loaded.put(Batch(st.count, st.span, st.busy))
                self.batches += 1
                yield env.timeout(start + st.s - env.now)
                prev_compute = st.c_prev
                self.streak += st.count
                continue
            yield from self._load(tile)
            yield self.sram.loaded.put(tile)
            self.streak = self.streak + 1 if tile.silent else 0
            prev_compute = tile.compute_cycles
            cur.advance()

"""DMA: prefetches each tile's operands from DRAM into the double-buffered SRAM."""

from __future__ import annotations

from dataclasses import dataclass

import simpy

from hwsim.blocks.dram import Dram
from hwsim.blocks.sram import Sram

__all__ = ["Batch", "Dma"]


@dataclass(frozen=True)
class Batch:
    """``count`` identical tiles handed to the array as one event, with the period ``period``
    (cycles) that separates their starts in the tile-by-tile schedule they replace."""

    tile: object
    count: int
    period: int


class Dma:
    """Walks the tile runs of a GEMM in order: waits for a free input buffer half (the array
    frees one when it finishes a tile), reads the tile's ifmap, filter and spilled partial-sum
    bytes from DRAM (after ``setup_cycles`` of descriptor handling), and hands the tile to the
    array. With two halves the DMA works one tile ahead of the array (double buffering).

    Steady state (``compress``): inside a run of identical tiles that produce no outputs, once
    the two tiles before have gone through and the scaling unit and the DRAM channel are idle,
    nothing else can touch the channel until the run ends, and the tile-by-tile schedule is
    exactly periodic: tile i + 1 starts loading when the array starts tile i, so loads start
    every P = max(setup + transfer + latency, compute) cycles. The DMA then hands the rest of the
    run but its last tile to the array as one `Batch` and resumes where the tile-by-tile schedule
    would be. Tests check that both modes give identical counters.
    """

    def __init__(self, env: simpy.Environment, dram: Dram, sram: Sram, setup_cycles: int,
                 compress: bool = True, quiet=None) -> None:
        self.env = env
        self.dram = dram
        self.sram = sram
        self.setup_cycles = setup_cycles
        self.compress = compress and sram.halves == 2
        self.quiet = quiet or (lambda: False)  # True when no other block can use the DRAM channel
        self.batches = 0

    def _load(self, tile):
        if tile.read_bytes > 0:
            if self.setup_cycles:
                yield self.env.timeout(self.setup_cycles)
            yield from self.dram.transfer(tile.read_bytes, write=False)
        self.sram.fill(tile)

    def run(self, runs):
        """The DMA process over ``runs``: (tile, repeat) pairs of `hwsim.mapping.TilePlan`."""
        env = self.env
        for tile, repeat in runs:
            silent = not (tile.out_elements or tile.spill_psum_bytes)
            i = 0
            while i < repeat:
                yield self.sram.free.get(1)
                left = repeat - i - 1  # tiles of the run after this one
                if self.compress and silent and i >= 2 and left >= 2 and self.quiet():
                    count = left  # this tile and all but the last of the run
                    load = self.setup_cycles * (tile.read_bytes > 0) + self.dram.cycles(tile.read_bytes) \
                        + (self.dram.latency_cycles if tile.read_bytes > 0 else 0)
                    period = max(load, tile.compute_cycles)
                    start = env.now
                    if load:
                        yield env.timeout(load)
                    self.dram.account(tile.read_bytes, count, write=False)
                    self.sram.fill(tile, count)
                    yield self.sram.loaded.put(Batch(tile, count, period))
                    self.batches += 1
                    yield env.timeout(start + count * period - env.now)
                    i += count
                    continue
                yield from self._load(tile)
                yield self.sram.loaded.put(tile)
                i += 1

"""DMA: prefetches each tile's operands from DRAM into the double-buffered SRAM."""

from __future__ import annotations

import simpy

from hwsim.blocks.dram import Dram
from hwsim.blocks.sram import Sram

__all__ = ["Dma"]


class Dma:
    """Walks the tile sequence of a GEMM in order: waits for a free input buffer half (the
    array frees one when it finishes a tile), reads the tile's ifmap, filter and spilled
    partial-sum bytes from DRAM, and hands the tile to the array. With two halves the DMA works
    one tile ahead of the array (double buffering); ``setup_cycles`` is the per-transfer
    descriptor overhead."""

    def __init__(self, env: simpy.Environment, dram: Dram, sram: Sram, setup_cycles: int) -> None:
        self.env = env
        self.dram = dram
        self.sram = sram
        self.setup_cycles = setup_cycles

    def run(self, tiles):
        """The DMA process over ``tiles`` (an iterable of `hwsim.mapping.Tile`)."""
        for tile in tiles:
            yield self.sram.free.get(1)
            if tile.read_bytes > 0:
                if self.setup_cycles:
                    yield self.env.timeout(self.setup_cycles)
                yield from self.dram.transfer(tile.read_bytes, write=False)
            self.sram.fill(tile)
            yield self.sram.loaded.put(tile)

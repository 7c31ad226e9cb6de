"""The PE array: holds each tile for its compute cycles (closed form per dataflow, with fill and
drain; `fourbit.hwsim.mapping`)."""

from __future__ import annotations

import simpy

from fourbit.hwsim.blocks.dma import Batch
from fourbit.hwsim.blocks.sram import Sram

__all__ = ["MacArray"]


class MacArray:
    """Takes a tile when its operands are in SRAM, computes it for ``tile.compute_cycles``,
    frees its input buffer half and, when the tile finishes outputs or spills partial sums,
    passes it to the scaling unit (waiting while both output staging halves are full). A
    `Batch` of silent tiles is held for its span: exactly the time those tiles take in the
    tile-by-tile schedule.

    Counts busy cycles, cycles spent waiting for operands (memory stall) and cycles spent
    waiting for the scaling unit to take outputs (scaling-unit stall)."""

    def __init__(self, env: simpy.Environment, sram: Sram) -> None:
        self.env = env
        self.sram = sram
        self.busy_cycles = 0
        self.operand_wait_cycles = 0
        self.output_wait_cycles = 0

    def run(self, n_tiles: int):
        """The array process over ``n_tiles`` tiles."""
        env = self.env
        done = 0
        while done < n_tiles:
            t0 = env.now
            item = yield self.sram.loaded.get()
            self.operand_wait_cycles += env.now - t0
            if isinstance(item, Batch):
                if item.span:
                    yield env.timeout(item.span)
                self.busy_cycles += item.busy
                self.operand_wait_cycles += item.span - item.busy
                done += item.count
                yield self.sram.free.put(1)
                continue
            tile = item
            if tile.compute_cycles:
                yield env.timeout(tile.compute_cycles)
                self.busy_cycles += tile.compute_cycles
            yield self.sram.free.put(1)
            done += 1
            if tile.out_elements or tile.spill_psum_bytes:
                t0 = env.now
                yield self.sram.outputs.put(tile)
                self.output_wait_cycles += env.now - t0

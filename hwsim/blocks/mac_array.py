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

    COUNTERS = ("busy_cycles", "operand_wait_cycles", "output_wait_cycles", "done")
    """What grows as the array works (`fourbit.hwsim.periodic` adds n periods' worth in a jump)."""

    def __init__(self, env: simpy.Environment, sram: Sram) -> None:
        self.env = env
        self.sram = sram
        self.busy_cycles = 0
        self.operand_wait_cycles = 0
        self.output_wait_cycles = 0
        self.done = 0  # tiles finished
        # where the process is (``operands``, ``batch``, ``compute``, ``free``, ``outputs``), the
        # tile or batch it holds and since when it waits (cycle): its whole state
        self.at, self.item, self.since = "operands", None, 0

    def state(self, now: int, name=None) -> tuple:
        """The process's state relative to ``now`` (`fourbit.hwsim.periodic`)."""
        waiting = self.at in ("operands", "outputs")
        return self.at, self.item, now - self.since if waiting else None

    def shift(self, cycles: int) -> None:
        """Move the cycle it holds ``cycles`` later (a periodic jump)."""
        self.since += cycles

    def run(self, n_tiles: int):
        """The array process over ``n_tiles`` tiles."""
        env = self.env
        while self.done < n_tiles:
            self.at, self.item, self.since = "operands", None, env.now
            item = yield self.sram.loaded.get()
            self.operand_wait_cycles += env.now - self.since
            self.item = item
            if isinstance(item, Batch):
                self.at = "batch"
                if item.span:
                    yield env.timeout(item.span)
                self.busy_cycles += item.busy
                self.operand_wait_cycles += item.span - item.busy
                self.done += item.count
                self.at = "free"
                yield self.sram.free.put(1)
                continue
            tile = item
            self.at = "compute"
            if tile.compute_cycles:
                yield env.timeout(tile.compute_cycles)
                self.busy_cycles += tile.compute_cycles
            self.at = "free"
            yield self.sram.free.put(1)
            self.done += 1
            if tile.out_elements or tile.spill_psum_bytes:
                self.at, self.since = "outputs", env.now
                yield self.sram.outputs.put(tile)
                self.output_wait_cycles += env.now - self.since

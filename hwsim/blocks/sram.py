"""On-chip SRAM buffers (ifmap, filter, ofmap), double buffered."""

from __future__ import annotations

import simpy

__all__ = ["Sram"]


class Sram:
    """The input buffers as the pipeline sees them: ``free`` counts free buffer halves (2 with
    double buffering, 1 without), ``loaded`` holds tiles whose operands are on chip, ``outputs``
    holds finished output tiles waiting for the scaling unit (two staging halves of the ofmap
    buffer). Counts the bits written by the DMA; reads by the array are counted from the plan
    (`fourbit.hwsim.engine`), since they do not change timing."""

    COUNTERS = ("write_bytes",)
    """What grows as tiles are loaded (`fourbit.hwsim.periodic` adds n periods' worth in a jump)."""

    def __init__(self, env: simpy.Environment, double_buffered: bool) -> None:
        halves = 2 if double_buffered else 1
        self.halves = halves
        self.free = simpy.Container(env, capacity=halves, init=halves)
        self.loaded = simpy.Store(env)
        self.outputs = simpy.Store(env, capacity=halves)
        self.write_bytes = 0.0

    def shift(self, cycles: int) -> None:
        """Nothing to move: the buffers hold no cycle."""

    def fill(self, tile, count: int = 1) -> None:
        """Account the DMA's write of ``count`` copies of ``tile``'s operands into the buffers."""
        self.write_bytes += tile.read_bytes * count

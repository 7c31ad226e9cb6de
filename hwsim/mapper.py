"""The mapper: for each GEMM, the fastest of its candidate mappings (`fourbit.hwsim.mapping`) by
simulated time, output path included; fewer DRAM bytes break ties (then fewer tiles, then the
candidate's place in the list). With ``mapping.objective = "dram_bytes"`` the fewest DRAM bytes
come first, then the time.

The search is exact without simulating every candidate (best-first branch and bound): the
candidates are taken in increasing order of a lower bound of their time, first a floor that
needs no plan (`fourbit.hwsim.mapping.Gemm.floor_cycles`), then, once the plan is built,
`lower_bound` (from the pipeline's structure: no simulated schedule can beat it); each is
simulated, and the search stops at the first candidate whose bound, with its bytes and tiles,
cannot beat the best found. A simulation stops as soon as it passes the best time found (it
cannot win). So the choice is the fastest feasible candidate. A larger buffer only adds feasible
candidates (the tile lengths are a fixed set, `fourbit.hwsim.mapping.tile_lengths`) and a plan's
simulated time does not depend on the buffer sizes, so a GEMM's cycles never rise when a buffer
grows.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from fourbit.hwsim.blocks.dma import load_cycles
from fourbit.hwsim.blocks.dram import channel_cycles
from fourbit.hwsim.blocks.scaling_unit import OutputPath, lane_cycles
from fourbit.hwsim.mapping import Candidate, Gemm, Tile, TilePlan

__all__ = ["Pipeline", "choose", "lower_bound"]


class Pipeline:
    """What the lower bound needs of the chip: the DRAM channel's ``bytes_per_cycle`` (one
    core's share) and ``latency_cycles``, the DMA's ``setup_cycles`` per tile, the scaling
    unit's ``lanes`` and the GEMM's output path."""

    def __init__(self, bytes_per_cycle: float, latency_cycles: int, setup_cycles: int, lanes: float,
                 path: OutputPath) -> None:
        self.bw, self.latency, self.setup, self.lanes, self.path = (bytes_per_cycle, latency_cycles, setup_cycles,
                                                                     lanes, path)

    def channel(self, nbytes: float) -> int:
        """Cycles one transfer holds the channel (`fourbit.hwsim.blocks.dram.channel_cycles`)."""
        return channel_cycles(nbytes, self.bw)

    def load(self, tile: Tile) -> int:
        """From the DMA starting a tile to its operands in SRAM, without contention
        (`fourbit.hwsim.blocks.dma.load_cycles`)."""
        return load_cycles(tile.read_bytes, self.setup, self.bw, self.latency)

    def tail(self, tile: Tile) -> int:
        """From the array finishing ``tile`` to its results in DRAM: state read, the lanes'
        work, the write (`fourbit.hwsim.blocks.scaling_unit.ScalingUnit.run`)."""
        n, path = tile.out_elements, self.path
        cycles = 0
        if n and path.read_bytes:
            cycles += self.channel(n * path.read_bytes) + self.latency
        cycles += lane_cycles(n, path.lane_ops, self.lanes)
        out = n * path.write_bytes + tile.spill_psum_bytes
        if out:
            cycles += self.channel(out) + self.latency
        return cycles

    def transfers(self, tile: Tile) -> int:
        """Channel cycles of everything ``tile`` moves (operands in, state in, results out)."""
        n = tile.out_elements
        return (self.channel(tile.read_bytes) + self.channel(n * self.path.read_bytes)
                + self.channel(n * self.path.write_bytes + tile.spill_psum_bytes))


def lower_bound(plan: TilePlan, pipe: Pipeline) -> int:
    """Cycles no simulation of ``plan`` can beat (vector passes apart): the largest of

    - the array's schedule with only the DMA to wait for, then the last tile's way out: with
      two input halves the array starts tile i at A(i) = A(i-1) + max(load(i), compute(i-1)),
      A(0) = load(0) (the recurrence of `fourbit.hwsim.blocks.dma.Dma`; every other block and
      the channel's other users can only delay it);
    - the first tile's load and compute, then every tile's way out one after another (the
      scaling unit is one process);
    - every transfer on the one DRAM channel.

    One pass over the runs; a repeated segment advances A by the same amount from its second
    repetition on.
    """
    costs: dict = {}  # tile -> (load, tail, transfers): plans repeat few distinct tiles
    per_pattern: dict = {}  # id(pattern) -> its part of the sums below: plans repeat few patterns

    def cost(tile: Tile) -> tuple[int, int, int]:
        if tile not in costs:
            costs[tile] = (pipe.load(tile), pipe.tail(tile), pipe.transfers(tile))
        return costs[tile]

    def pattern(pat) -> tuple[int, int, int, int, int]:
        """(first load, what the pattern adds to A beyond max(first load, c_prev), last tile's
        compute, tails, channel cycles) of one pass over ``pat``."""
        if id(pat) not in per_pattern:
            first_load = cost(pat[0][0])[0]
            inner = tails = channel = 0
            c_prev = None
            for tile, k in pat:
                load, tail, moved = cost(tile)
                c = tile.compute_cycles
                inner += (0 if c_prev is None else max(load, c_prev)) + (k - 1) * max(load, c)
                tails += tail * k
                channel += moved * k
                c_prev = c
            per_pattern[id(pat)] = (first_load, inner, c_prev, tails, channel)
        return per_pattern[id(pat)]

    a = c_prev = tails = channel = 0
    started = False
    for pat, repeat in plan.segments:
        first_load, inner, c_last, pat_tails, pat_channel = pattern(pat)
        for rep in range(min(repeat, 2)):
            before = a
            a += (first_load if not started else max(first_load, c_prev)) + inner
            started, c_prev = True, c_last
            if rep == 1 and repeat > 2:
                a += (a - before) * (repeat - 2)
        tails += pat_tails * repeat
        channel += pat_channel * repeat
    first, last = plan.segments[0][0][0][0], plan.segments[-1][0][-1][0]
    through_array = a + c_prev + pipe.tail(last)
    through_scaling = pipe.load(first) + first.compute_cycles + tails
    return max(through_array, through_scaling, channel)


def choose(gemm: Gemm, candidates: tuple[Candidate, ...], pipe: Pipeline,
           cycles: Callable[[TilePlan, int | None], int | None], objective: str = "cycles") -> tuple[TilePlan, int] | None:
    """The plan of the best of ``candidates`` and its cycles: the fastest (``objective``
    ``cycles``; fewer DRAM bytes, then fewer tiles break ties) or the one moving the fewest DRAM
    bytes (``dram_bytes``; then the fastest, then fewer tiles). ``cycles(plan, limit)`` is a
    plan's simulated cycles, or None when it cannot be simulated here or would take more than
    ``limit`` cycles (the best found so far: the simulation may stop there, it cannot win); such
    a candidate is skipped. None when no candidate could be simulated."""
    bytes_first = objective == "dram_bytes"
    plans: dict[int, TilePlan] = {}

    def key(t: int, p: TilePlan, i: int) -> tuple:
        return (p.traffic, t, p.tiles, i) if bytes_first else (t, p.traffic, p.tiles, i)

    # best first over a heap of unbuilt candidates, keyed by a floor that needs no plan
    # (`Gemm.floor_cycles`; bytes first: none), and built ones, keyed by their `lower_bound`;
    # a floor (a shorter tuple) sorts before every full key it could become
    per_load = pipe.setup + pipe.latency
    heap = [((0,) if bytes_first else (gemm.floor_cycles(c, per_load),), i) for i, c in enumerate(candidates)]
    heapq.heapify(heap)
    best = None
    while heap:
        bound, i = heapq.heappop(heap)
        if best is not None and bound > best:
            break  # this candidate, and every one after it, cannot beat the best found
        if i not in plans:
            plans[i] = gemm.plan(candidates[i])
            heapq.heappush(heap, (key(lower_bound(plans[i], pipe), plans[i], i), i))
            continue
        t = cycles(plans[i], None if best is None else best[1 if bytes_first else 0])
        if t is not None and (best is None or key(t, plans[i], i) < best):
            best = key(t, plans[i], i)
    return None if best is None else (plans[best[-1]], best[1 if bytes_first else 0])

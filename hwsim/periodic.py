"""Exact steady-state jumps in the discrete-event run of one GEMM.

A GEMM's tiles come as segments, each a pattern of runs of identical tiles repeated
(`fourbit.hwsim.mapping.TilePlan`). Fed such a stream, the pipeline (DMA, array, scaling unit,
the SRAM's stores and the DRAM channel) settles into a period. The simulation is deterministic,
so once its whole state recurs at the same place of a repeating input, everything from there on
is the earlier run shifted in time, as long as the input keeps repeating. The state is taken
where the DMA is about to take its next tile (`fourbit.hwsim.blocks.dma.Dma.run`):

- each block's place in its process and the tile it holds (``state`` of the array, the scaling
  unit and the DRAM's transfers under way), with every cycle it holds made relative to now;
- the SRAM's stores and halves and the DRAM channel: items, levels, holders and queues in order;
- the pending events: each one's cycles from now, priority, order, the process or store it
  resumes and the value it carries;
- the DMA's own: its place in the plan (segment, run, tile of the run), the previous tile's
  compute cycles and whether at least two silent tiles precede (all its batching looks at).

Four kinds of places are compared: the first tile taken in two segments of equal content (a
period of whole segments, e.g. one column fold's segments after another's), the same tile of the
pattern in two repetitions of a segment (a period of whole repetitions), the first tile taken in
two runs of one repetition of a pattern (a period of runs, e.g. the column folds merged into one
pattern), and two tiles of one run (a period of tiles). When the states are equal, the run jumps
ahead by as many whole periods as the plan still repeats (segments or runs that repeat the
period's one by one, landing on one like the current; the repetitions or tiles the segment or
run still holds, keeping at least its last): the clock and every pending event move on by n periods' cycles, and every counter
(`COUNTERS` of each block: busy and stall cycles, bytes, tiles done) grows by n times what it grew
over one period. That is exactly what simulating those periods would have given, so counters
equal the tile-by-tile run (tested on random plans, `tests/hwsim/test_properties.py`); only the
number of simpy events falls. A run that never recurs is simulated tile by tile; the checks stop
after `RUN_CHECKS` tiles of one run, and at most `MAX_RECORDS` states are kept.
"""

from __future__ import annotations

import simpy

from fourbit.hwsim.blocks.dma import Batch
from fourbit.hwsim.mapping import Tile

__all__ = ["MAX_RECORDS", "RUN_CHECKS", "Periodic"]

MAX_RECORDS = 1024
"""States remembered at once (then forgotten and collected afresh)."""
RUN_CHECKS = 256
"""Tiles of one run whose states are compared before the run is left to be simulated as it is."""
MIN_LEFT = 3
"""Tiles (of a run) or repetitions (of a segment) still to come for a check to be worth it."""


class _Unknown(Exception):  # noqa: N818 (a state that cannot be described: no jump)
    pass


class Periodic:
    """Finds the period of one GEMM's simulation and jumps over whole periods.

    ``procs``: name -> simpy Process; ``resources``: name -> the simpy Container, Store or
    Resource the processes meet at; ``blocks``: the objects whose ``COUNTERS`` grow (and whose
    ``shift(cycles)`` moves any absolute cycle they hold); ``states``: name -> a block's
    ``state(now, name)``, ``name`` giving a process's or store's name. ``jumps`` counts the jumps made."""

    def __init__(self, env: simpy.Environment, procs: dict, resources: dict, blocks: list, states: dict) -> None:
        self.env = env
        self.names = {id(p): n for n, p in procs.items()} | {id(r): n for n, r in resources.items()}
        self.resources = resources
        self.blocks = blocks
        self.states = states
        self.counters = [(b, name) for b in blocks for name in type(b).COUNTERS]
        # state (and place) -> (where, cycle, counters) at the first tile taken in a segment, of a
        # repetition of the current segment, and at each tile of the current run
        self.by_segment: dict = {}
        self.by_rep: dict = {}
        self.by_run: dict = {}
        self.by_tile: dict = {}
        self.segment = -1
        self.rep_checked = None  # (segment, repetition) whose first tile was checked
        self.run_checked = None  # (segment, repetition, run) whose first tile was checked
        self.pattern_at = None  # (segment, repetition) whose runs are in by_run
        self.run = None  # (segment, repetition, run) being checked tile by tile
        self.run_checks = 0
        self.jumps = 0

    def visit(self, cur, dma_state: tuple) -> None:
        """Called by the DMA before it takes the tile at cursor ``cur`` (its other state
        ``dma_state``); jumps (moving ``cur`` on) when this state was met one or more whole
        periods earlier."""
        segments = cur.segments
        pattern, repeat = segments[cur.si]
        count = pattern[cur.ri][1]
        by_seg = cur.si != self.segment
        if by_seg:
            self.segment, self.by_rep, self.rep_checked = cur.si, {}, None
        by_rep = repeat - cur.rep >= MIN_LEFT and self.rep_checked != (cur.si, cur.rep)
        by_run = len(pattern) - cur.ri >= MIN_LEFT and self.run_checked != (cur.si, cur.rep, cur.ri)
        by_tile = count - cur.off >= MIN_LEFT
        if by_tile:
            where = (cur.si, cur.rep, cur.ri)
            if where != self.run:
                self.run, self.run_checks, self.by_tile = where, 0, {}
            self.run_checks += 1
            by_tile = self.run_checks <= RUN_CHECKS
        if not (by_seg or by_rep or by_run or by_tile):
            return
        try:
            state = self._state(dma_state)
        except _Unknown:
            return
        now, values = self.env.now, tuple(getattr(b, name) for b, name in self.counters)
        if by_seg:
            n, period = self._match_sequence(self.by_segment, (segments[cur.si], cur.rep, cur.ri, cur.off, state),
                                             segments, cur.si, now, values)
            if n:
                cur.si += n * period
                return
        if by_rep:
            self.rep_checked = (cur.si, cur.rep)
            n, period = self._match(self.by_rep, (cur.ri, cur.off, state), cur.rep, now, values, repeat - 1)
            if n:
                cur.rep += n * period
                return
        if by_run:
            self.run_checked = (cur.si, cur.rep, cur.ri)
            if (cur.si, cur.rep) != self.pattern_at:
                self.pattern_at, self.by_run = (cur.si, cur.rep), {}
            n, period = self._match_sequence(self.by_run, (pattern[cur.ri], cur.off, state), pattern, cur.ri, now,
                                             values)
            if n:
                cur.ri += n * period
                return
        if by_tile:
            n, period = self._match(self.by_tile, state, cur.off, now, values, count - 1)
            if n:
                cur.off += n * period

    def _match_sequence(self, records: dict, key: tuple, items, at: int, now: int, values: tuple) -> tuple[int, int]:
        """Jump when ``key`` is in ``records``, seen at item ``at0`` of ``items`` (segments of the
        plan, or runs of a pattern): by n periods of at - at0 items, as far as the items from
        ``at`` on repeat those from ``at0`` on, landing on an item equal to this one; (n, period)
        or (0, 0). Else remember it."""
        seen = records.get(key)
        if seen is None:
            if len(records) >= MAX_RECORDS:
                records.clear()
            records[key] = (at, now, values)
            return 0, 0
        at0, now0, values0 = seen
        period = at - at0
        same = 1  # items from here on that repeat those from at0 on, period by period
        while at + same < len(items) and items[at + same] == items[at0 + same % period]:
            same += 1
        n = (same - 1) // period  # whole periods, landing on an item like this one
        if n:
            self._jump(n, now - now0, values, values0)
        return (n, period) if n else (0, 0)

    def _match(self, records: dict, key: tuple, at: int, now: int, values: tuple, last: int) -> tuple[int, int]:
        """Jump when ``key`` is in ``records`` (seen at an earlier place ``at``): by n periods,
        landing at most at ``last``; (n, period) or (0, 0). Else remember it."""
        seen = records.get(key)
        if seen is not None:
            at0, now0, values0 = seen
            period = at - at0
            n = (last - at) // period
            if n > 0:
                self._jump(n, now - now0, values, values0)
                return n, period
            return 0, 0
        if len(records) >= MAX_RECORDS:
            records.clear()
        records[key] = (at, now, values)
        return 0, 0

    def _jump(self, n: int, cycles: int, values: tuple, values0: tuple) -> None:
        env, shift = self.env, n * cycles
        env._now += shift
        # the same shift for every pending event keeps the heap's order
        env._queue[:] = [(t + shift, prio, eid, ev) for t, prio, eid, ev in env._queue]
        for block in self.blocks:
            block.shift(shift)
        for (block, name), v, v0 in zip(self.counters, values, values0, strict=True):
            setattr(block, name, v + n * (v - v0))
        self.jumps += 1

    # ----------------------------------------------------------------------------------------
    # the state, relative to now

    def _name(self, obj) -> str:
        name = self.names.get(id(obj))
        if name is None:
            raise _Unknown
        return name

    def _value(self, v):
        if v is None or isinstance(v, (Tile, Batch, int, float)):
            return v
        raise _Unknown

    def _event(self, ev) -> tuple:
        return (tuple((self._name(cb.__self__), cb.__func__.__name__) for cb in ev.callbacks),
                self._value(ev._value))

    def _resource(self, r) -> tuple:
        if isinstance(r, simpy.Container):
            return (r.level, tuple((self._name(e.proc), e.amount) for e in r.put_queue),
                    tuple((self._name(e.proc), e.amount) for e in r.get_queue))
        if isinstance(r, simpy.Store):
            return (tuple(map(self._value, r.items)), tuple((self._name(e.proc), self._value(e.item)) for e in r.put_queue),
                    tuple(self._name(e.proc) for e in r.get_queue))
        if isinstance(r, simpy.Resource):
            return (tuple(self._name(e.proc) for e in r.users), tuple(self._name(e.proc) for e in r.queue))
        raise _Unknown

    def _state(self, dma_state: tuple) -> tuple:
        now = self.env.now
        pending = tuple((t - now, prio, self._event(ev)) for t, prio, _, ev in sorted(self.env._queue))
        return (dma_state, pending, tuple(self._resource(r) for r in self.resources.values()),
                tuple(f(now, self._name) for f in self.states.values()))

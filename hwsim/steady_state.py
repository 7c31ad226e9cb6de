"""Steady-state extrapolation: long runs of identical tiles and many repetitions of a segment
measured on short probes of the pipeline, then extended by their steady increments
(``simulate(..., extrapolate=True)``; sweeps use it).

Total cycles, DRAM bytes and energy are tested equal to the full simulation; how the stall splits
between memory and scaling unit may differ where the blocks settle into their period later than
the probes reach, and a run whose end meets the other blocks on an irregular beat can move the
total by a few cycles (both pinned in tests).
"""

from __future__ import annotations

from dataclasses import dataclass

from fourbit.hwsim.config import ChipConfig
from fourbit.hwsim.jobs import Job
from fourbit.hwsim.pipeline import Timing, simulate_gemm

__all__ = ["EXTEND_ABOVE", "MAX_INCREMENTS", "MAX_PROBE", "PROBE", "PlanView", "extended"]

PROBE = 4
"""Tiles per run and repetitions per segment that the probe simulations keep (then 8, 16, 32)."""
EXTEND_ABOVE = 1024
"""Plans with more output tiles than this are extended from probes; others simulated whole."""
MAX_PROBE = 32
"""The longest probe; a plan whose increments do not settle by then is simulated tile by tile."""
MAX_INCREMENTS = 8
"""Most runs and repeated segments a plan may have for probing to pay off."""


@dataclass(frozen=True)
class PlanView:
    """A tile plan with other run counts and repeats (what `fourbit.hwsim.pipeline.simulate_gemm` reads of a plan)."""

    segments: list

    def _sum(self, value) -> int:
        return int(sum(sum(value(t) * k for t, k in pat) * r for pat, r in self.segments))

    @property
    def tiles(self) -> int:
        return self._sum(lambda t: 1)

    @property
    def output_tiles(self) -> int:
        return self._sum(lambda t: 0 if t.silent else 1)

    @property
    def compute_cycles(self) -> int:
        return self._sum(lambda t: t.compute_cycles)


def _counters(t: Timing) -> tuple:
    return (t.total_cycles, t.memory_stall_cycles, t.dram_read_bytes, t.dram_write_bytes)


def _probe(job: Job, chip: ChipConfig, compress: bool, counts: list, repeats: list) -> tuple:
    segments = [(tuple((tile, counts[s][j]) for j, (tile, _) in enumerate(pat)), repeats[s])
                for s, (pat, _) in enumerate(job.plan.segments)]
    view = job.with_plan(PlanView(segments))
    t = simulate_gemm(view, chip, compress)
    return _counters(t), t


def extended(job: Job, chip: ChipConfig, compress: bool, probe: int = PROBE) -> Timing | None:
    """The timing of ``job`` from probe simulations in which every run keeps at most ``probe``
    tiles and every segment at most ``probe`` repetitions, or None when it does not apply.

    A pipeline of finite buffers fed identical tiles settles into a period: once there, one more
    period of a run (or of a segment's repetitions) adds the same amount to every counter.
    Each such increment is measured over a period of 1 or 2 tiles and checked at 2, ``probe``
    and 2 * ``probe`` periods, for every counter (cycles, memory stall, DRAM bytes); then

        T = T(probe) + sum_s [Rep_s(R_s - r_s) + R_s / r_s * sum_j Run_sj(k_sj - r_sj)]

    where Rep_s(n) is what n more repetitions of segment s add and Run_sj(n) what n more tiles
    in run j of each of its r_s probed repetitions add, and r = the count, or ``probe`` (+1 when
    that leaves an odd number to extend: a period of 2 then keeps its phase). Otherwise a
    longer probe is tried (8, 16, 32); past that, None (the caller simulates every tile). Tests
    check the totals equal the full simulation on random plans. The checks cannot see what
    happens past the probes: a transient longer than them can shift the stall's split between
    memory and scaling unit, and a run whose end meets the other blocks on an irregular beat
    can move the total by a few cycles (`simulate`, ``extrapolate``)."""
    if job.plan.output_tiles <= EXTEND_ABOVE:
        return None  # silent stretches are batched anyway: few tiles walked, no probes needed
    segs = job.plan.segments

    def kept(count: int) -> int:  # at most about ``probe``, leaving an even number to extend:
        return count if count <= probe else probe + (count - probe) % 2  # periods of 2 stay in phase

    base_counts = [[kept(k) for _, k in pat] for pat, _ in segs]
    base_reps = [kept(r) for _, r in segs]
    increments = sum(r > br for (_, r), br in zip(segs, base_reps, strict=True)) + sum(
        k > kk for (pat, _), row in zip(segs, base_counts, strict=True) for (_, k), kk in zip(pat, row, strict=True))
    if increments > MAX_INCREMENTS:
        return None  # many short segments: several probes each would cost more than the walk
    if all(k == kk for (pat, _), row in zip(segs, base_counts, strict=True)
           for (_, k), kk in zip(pat, row, strict=True)) and base_reps == [r for _, r in segs]:
        return None  # nothing to extend
    base, t0 = _probe(job, chip, compress, base_counts, base_reps)
    total = list(base)
    events, batches = t0.events, t0.batches

    def increment(counts, reps):
        """``grow(n)``, what ``n`` more tiles (or repetitions) add to every counter, or None.

        The schedule may settle into a period of q = 1 or 2 tiles: d = T(base + q) - T(base)
        must give T(base + m*q) = T(base) + m*d for m = 2, ``probe`` and 2 * ``probe`` (a
        transient still in the probe shows as a mismatch); then T(base + a*q + b) = T(base + b)
        + a*d."""
        seen = {0: base}

        def at(n: int) -> tuple:
            nonlocal events, batches
            if n not in seen:
                c, t = _probe(job, chip, compress, counts(n), reps(n))
                seen[n] = c
                events += t.events
                batches += t.batches
            return seen[n]

        def close(x: float, y: float) -> bool:
            return abs(x - y) <= 1e-9 * max(1.0, abs(y))

        for q in (1, 2):
            d = [b - a for a, b in zip(base, at(q), strict=True)]
            if all(close(a + m * x, b) for m in (2, probe, 2 * probe)
                   for a, x, b in zip(base, d, at(m * q), strict=True)):
                part = {b: [y - a for a, y in zip(base, at(b), strict=True)] for b in range(q)}
                return lambda n, d=d, q=q, part=part: [n // q * x + y for x, y in zip(d, part[n % q], strict=True)]
        return None

    for s, (pat, repeat) in enumerate(segs):
        if repeat > base_reps[s]:
            grow = increment(lambda n, s=s: base_counts,
                             lambda n, s=s: [r + n if i == s else r for i, r in enumerate(base_reps)])
            if grow is None:
                return extended(job, chip, compress, probe * 2) if probe < MAX_PROBE else None
            total = [t + x for t, x in zip(total, grow(repeat - base_reps[s]), strict=True)]
        for j, (_, k) in enumerate(pat):
            if k > base_counts[s][j]:
                grow = increment(lambda n, s=s, j=j: [[c + n if (i, jj) == (s, j) else c for jj, c in enumerate(row)]
                                                        for i, row in enumerate(base_counts)],
                                 lambda n: base_reps)
                # the probes grew this run in each of its base_reps[s] repetitions: scaled to
                # all ``repeat`` of them, the cycle counts must stay whole
                d = [x * repeat / base_reps[s] for x in grow(k - base_counts[s][j])] if grow else None
                if d is None or any(abs(x - round(x)) > 1e-6 for x in d[:2]):
                    return extended(job, chip, compress, probe * 2) if probe < MAX_PROBE else None
                total = [t + x for t, x in zip(total, d, strict=True)]
    cycles, stall, read, write = total
    return Timing(int(round(cycles)), 0, int(round(stall)), float(read), float(write), events, batches)

"""DRAM: one shared channel with a bandwidth limit and a fixed, pipelined latency."""

from __future__ import annotations

import math

import simpy

__all__ = ["Dram", "channel_cycles"]


def channel_cycles(nbytes: float, bytes_per_cycle: float) -> int:
    """Cycles one transfer of ``nbytes`` holds a channel of ``bytes_per_cycle``: ceil(n / bw),
    0 with unlimited bandwidth (the 1e-9 absorbs the rounding of a fractional bandwidth)."""
    if nbytes <= 0 or math.isinf(bytes_per_cycle):
        return 0
    return math.ceil(nbytes / bytes_per_cycle - 1e-9)


class Dram:
    """Off-chip memory behind one shared channel (reads and writes share it, FIFO).

    A transfer of n bytes holds the channel for ceil(n / bytes_per_cycle) cycles (0 with
    unlimited bandwidth); the data arrives ``latency_cycles`` after the channel is released (the
    latency is pipelined: it does not hold the channel). Counts bytes read and written.

    Parameters
    ----------
    env : simpy.Environment
    bytes_per_cycle : float
        Bandwidth in bytes per clock cycle (``dram.bandwidth_bytes_per_s / array.clock_hz``);
        ``inf`` for unlimited.
    latency_cycles : int
    """

    def __init__(self, env: simpy.Environment, bytes_per_cycle: float, latency_cycles: int) -> None:
        self.env = env
        self.bytes_per_cycle = bytes_per_cycle
        self.latency_cycles = latency_cycles
        self.channel = simpy.Resource(env, capacity=1)
        self.read_bytes = 0.0
        self.write_bytes = 0.0
        self.busy_cycles = 0
        self.stages: dict = {}  # process -> (stage, bytes, write) of its transfer under way

    COUNTERS = ("read_bytes", "write_bytes", "busy_cycles")
    """What grows as transfers complete (`fourbit.hwsim.periodic` adds n periods' worth in a jump)."""

    def state(self, now: int, name) -> tuple:
        """The transfers under way, by the ``name(process)`` of the process making each:
        ``request`` (waiting for the channel), ``hold`` or ``latency``, the bytes and the
        direction (`fourbit.hwsim.periodic`; it holds no cycle)."""
        return tuple(sorted((name(proc), *stage) for proc, stage in self.stages.items()))

    def shift(self, cycles: int) -> None:
        """Nothing to move: it holds no cycle."""

    def cycles(self, nbytes: float) -> int:
        """Channel cycles of one transfer of ``nbytes`` (`channel_cycles`)."""
        return channel_cycles(nbytes, self.bytes_per_cycle)

    def account_totals(self, nbytes: float, channel_cycles: int, write: bool) -> None:
        """Count the transfers a steady-state batch stands for: ``nbytes`` in all, holding the
        channel ``channel_cycles`` in all."""
        self.busy_cycles += channel_cycles
        if write:
            self.write_bytes += nbytes
        else:
            self.read_bytes += nbytes

    def idle(self) -> bool:
        """No transfer holds or waits for the channel."""
        return self.channel.count == 0 and not self.channel.queue

    def transfer(self, nbytes: float, write: bool):
        """Move ``nbytes`` over the channel (a generator: ``yield from dram.transfer(...)``)."""
        if nbytes <= 0:
            return
        proc = self.env.active_process
        hold = self.cycles(nbytes)
        if hold:
            with self.channel.request() as req:
                self.stages[proc] = ("request", nbytes, write)
                yield req
                self.stages[proc] = ("hold", nbytes, write)
                yield self.env.timeout(hold)
            self.busy_cycles += hold
        if write:
            self.write_bytes += nbytes
        else:
            self.read_bytes += nbytes
        if self.latency_cycles:
            self.stages[proc] = ("latency", nbytes, write)
            yield self.env.timeout(self.latency_cycles)
        self.stages.pop(proc, None)

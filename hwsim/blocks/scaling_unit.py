"""The scaling/vector unit on the array's output path, and the cost of every op kind.

Each output tile of a GEMM passes through the scaling unit before it goes back to DRAM: the
trace's fused ops of that (layer, phase) run here (design.md section 5): requantization to INT4
with the fused max-abs for the next scale; for gradients the GradScale multiply, its statistics
and two FP4 quantizations (one per TPR phase); bias, activation, the optimizer update. Ops that
are not fused are separate passes over memory (`OpCost.pass_bytes`). The paper puts this work at
~10 FP16 FLOPs per gradient element, < 5% of the GEMM ops (Sun et al. 2020, section 6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import simpy

from fourbit.hwsim.blocks.dram import Dram
from fourbit.hwsim.blocks.sram import Sram
from fourbit.traces.errors import ConfigError
from fourbit.traces.formats import get_format

__all__ = ["OPS", "OpCost", "OutputPath", "ScalingUnit", "lane_cycles", "output_path"]


@dataclass(frozen=True)
class OpCost:
    """Cost of one op per element: lane operations, energy events (names of `fourbit.hwsim.energy`),
    extra DRAM bytes read and written (optimizer state), and whether the op emits a tensor that
    is stored (in its out_format)."""

    lane_ops: float
    events: tuple[str, ...]
    extra_read_bytes: float = 0.0
    extra_write_bytes: float = 0.0
    emits: bool = False


OPS: dict[str, OpCost] = {
    "cast": OpCost(1, ("op.quantize_float",), emits=True),
    "quantize_uniform": OpCost(2, ("op.mul_fp16", "op.quantize_int"), emits=True),
    "quantize_log": OpCost(2, ("op.scale_pow2", "op.quantize_fp4"), emits=True),
    # one scale per block: the block's max (a compare per element), the scale applied (a multiply
    # or, for a power of two, an exponent add) and the element rounded (ASM: the float cast's cost)
    "quantize_block": OpCost(3, ("op.maxabs", "op.mul_fp16", "op.quantize_float"), emits=True),
    # the random Hadamard transform as a fast Walsh-Hadamard transform: the op's elements count
    # butterflies (log2(block) per value, `fourbit.traces.registry.hadamard`), one FP32 add each
    # (the random signs flip sign bits: free); it feeds the quantization that follows it
    "hadamard": OpCost(1, ("op.add_fp32",)),
    "maxabs": OpCost(1, ("op.maxabs",)),
    "moments": OpCost(3, ("op.mul_fp32", "op.add_fp32", "op.add_fp32")),
    "scale": OpCost(1, ("op.scale_pow2",)),
    "bias_add": OpCost(1, ("op.add_fp32",)),
    "relu": OpCost(1, ("op.compare",)),
    "relu_bwd": OpCost(1, ("op.compare",)),
    "pact_bwd": OpCost(2, ("op.compare", "op.compare")),
    "softmax_xent": OpCost(8, ("op.mul_fp32",) * 4 + ("op.add_fp32",) * 4),
    # SGD with momentum on FP32 master weights: v = m*v + g (+ wd*w); w -= lr*v. Reads and
    # writes the FP32 weight and momentum (8 bytes each way) for every weight.
    "sgd_momentum": OpCost(6, ("op.mul_fp32",) * 3 + ("op.add_fp32",) * 3, 8.0, 8.0),
    # BatchNorm in FP32 (design.md 3): statistics (2 adds, 1 mul) then normalise (1 mul, 1 add)
    "bn_fwd": OpCost(5, ("op.add_fp32",) * 3 + ("op.mul_fp32",) * 2),
    # BN backward: two reductions and the input gradient (3 muls, 3 adds)
    "bn_bwd": OpCost(6, ("op.add_fp32",) * 3 + ("op.mul_fp32",) * 3),
    # col2im scatter-add of a convolution's bwd_data columns into the input gradient (per column element)
    "col2im_add": OpCost(1, ("op.add_fp32",)),
    "pool_fwd": OpCost(1, ("op.compare",)),
    "pool_bwd": OpCost(1, ("op.compare",)),
    "residual_add": OpCost(1, ("op.add_fp32",)),
    "embedding_bwd": OpCost(1, ("op.add_fp32",)),
    # LSTM gates per cell element: 3 sigmoids, 1 tanh (~4 mul + 4 add each, ASM) and the state update
    "lstm_cell": OpCost(20, ("op.mul_fp32",) * 10 + ("op.add_fp32",) * 10),
    "lstm_cell_bwd": OpCost(24, ("op.mul_fp32",) * 12 + ("op.add_fp32",) * 12),
    # transformer ops, FP32 (ASM, counted like the ops above): softmax as the loss's softmax (max,
    # exp by a short polynomial, sum, normalise); its backward P * (dP - rowsum(dP * P)); LayerNorm
    # and its backward as BatchNorm's; GELU's tanh form x/2 (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3)))
    # with tanh as ~4 mul + 4 add, and its derivative
    "softmax": OpCost(8, ("op.mul_fp32",) * 4 + ("op.add_fp32",) * 4),
    "softmax_bwd": OpCost(4, ("op.mul_fp32",) * 2 + ("op.add_fp32",) * 2),
    "layer_norm": OpCost(5, ("op.add_fp32",) * 3 + ("op.mul_fp32",) * 2),
    "layer_norm_bwd": OpCost(6, ("op.add_fp32",) * 3 + ("op.mul_fp32",) * 3),
    "gelu": OpCost(15, ("op.mul_fp32",) * 9 + ("op.add_fp32",) * 6),
    "gelu_bwd": OpCost(20, ("op.mul_fp32",) * 12 + ("op.add_fp32",) * 8),
    # global gradient-norm clipping: square and sum each FP32 weight gradient (the rescale folds
    # into the SGD update's learning-rate multiply)
    "grad_norm": OpCost(2, ("op.mul_fp32", "op.add_fp32")),
}


def op_cost(op: str) -> OpCost:
    if op not in OPS:
        raise ConfigError(f"unknown op {op!r} in the trace's ops table; known ops: {', '.join(OPS)}")
    return OPS[op]


@dataclass(frozen=True)
class OutputPath:
    """Per output element of a GEMM: lane ops, pJ, DRAM bytes written (stored results and
    optimizer state) and read (optimizer state); of the bytes written, ``store_bytes`` store the
    result itself when no op emits it, and ``column_store_bytes`` is what storing the GEMM's
    columns (before col2im) would write instead."""

    lane_ops: float
    energy_pj: float
    write_bytes: float
    read_bytes: float
    store_bytes: float = 0.0
    column_store_bytes: float = 0.0


def output_path(ops_rows, out_elements: int, out_format: str, table: dict[str, float],
                stored_elements: int | None = None) -> OutputPath:
    """Combine the fused ops of one GEMM into per-output-element costs.

    ``ops_rows``: iterable of (op, elements, out_format) of the fused ops; each op's per-element
    cost is weighted by its elements / ``out_elements``. Without an emitting op the result is
    stored in ``out_format``: ``stored_elements`` of it (default ``out_elements``; fewer when the
    GEMM's columns are accumulated into a smaller tensor on chip, col2im,
    `fourbit.hwsim.tensors`).
    """
    lane = energy = write = read = 0.0
    emitted = False
    for op, elements, fmt in ops_rows:
        c = op_cost(op)
        w = elements / out_elements if out_elements else 0.0
        lane += c.lane_ops * w
        energy += sum(table[e] for e in c.events) * w
        read += c.extra_read_bytes * w
        write += c.extra_write_bytes * w
        if c.emits:
            write += get_format(fmt).bytes_per_value * w
            emitted = True
    store = column_store = 0.0
    if not emitted and out_elements:
        column_store = get_format(out_format).bytes_per_value
        store = column_store * (out_elements if stored_elements is None else stored_elements) / out_elements
        write += store
    return OutputPath(lane, energy, write, read, store, column_store)


def lane_cycles(elements: int, lane_ops: float, lanes: float) -> int:
    """Cycles ``lanes`` lanes take for ``elements`` outputs of ``lane_ops`` ops each: ceil of
    their ratio (0 with unlimited lanes; the 1e-9 absorbs the rounding of fractional ops)."""
    if math.isinf(lanes) or not elements:
        return 0
    return math.ceil(elements * lane_ops / lanes - 1e-9)


class ScalingUnit:
    """Processes each finished output tile: ``lanes`` elementary ops per cycle over the tile's
    elements x the path's lane ops, then writes the results (and spilled partial sums) to DRAM;
    reads optimizer state first where the path needs it."""

    COUNTERS = ("busy_cycles", "elements", "done")
    """What grows as the unit works (`fourbit.hwsim.periodic` adds n periods' worth in a jump)."""

    def __init__(self, env: simpy.Environment, sram: Sram, dram: Dram, lanes: float,
                 path: OutputPath) -> None:
        self.env = env
        self.sram = sram
        self.dram = dram
        self.lanes = lanes
        self.path = path
        self.busy_cycles = 0
        self.elements = 0
        self.done = 0  # tiles processed
        # where the process is (``start``, ``outputs``: waiting for a tile, ``read``, ``lanes``,
        # ``write``, ``end``) and the tile it holds: its whole state
        self.at, self.tile = "start", None

    @property
    def waiting(self) -> bool:
        """Blocked on an empty output queue, or done: it uses no DRAM until fed."""
        return self.at in ("outputs", "end")

    def state(self, now: int, name=None) -> tuple:
        """The process's state (`fourbit.hwsim.periodic`; it holds no cycle)."""
        return self.at, self.tile

    def shift(self, cycles: int) -> None:
        """Nothing to move: it holds no cycle."""

    def cycles(self, elements: int) -> int:
        """Lane cycles of ``elements`` outputs (`lane_cycles`)."""
        return lane_cycles(elements, self.path.lane_ops, self.lanes)

    def run(self, n_tiles: int):
        """The scaling-unit process over the ``n_tiles`` tiles the array passes on."""
        while self.done < n_tiles:
            self.at, self.tile = "outputs", None
            tile = yield self.sram.outputs.get()
            self.tile = tile
            n = tile.out_elements
            if n:
                if self.path.read_bytes:
                    self.at = "read"
                    yield from self.dram.transfer(n * self.path.read_bytes, write=False)
                busy = self.cycles(n)
                if busy:
                    self.at = "lanes"
                    yield self.env.timeout(busy)
                    self.busy_cycles += busy
                self.elements += n
            out = n * self.path.write_bytes + tile.spill_psum_bytes
            if out:
                self.at = "write"
                yield from self.dram.transfer(out, write=True)
            self.done += 1
        self.at, self.tile = "end", None  # it will not use the DRAM again

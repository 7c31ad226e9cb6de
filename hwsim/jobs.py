"""Job planning: each GEMM row of a trace step made ready to map onto the chip (its unit, the
GEMM with its operands as stored, the candidate mappings that fit the buffers, the output path
and separate vector passes), and the ops left without a GEMM. The engine picks each job's plan
among its candidates (`fourbit.hwsim.mapper`).

GEMMs run one after another in trace order (forward layers, then the backward layers); the
cores of a multi-core chip split each GEMM's larger output dimension evenly and run in lockstep.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pandas as pd

from fourbit.hwsim.blocks.scaling_unit import OutputPath, output_path
from fourbit.hwsim.config import ChipConfig
from fourbit.hwsim.mapping import Candidate, Gemm, Operand, TilePlan, too_small
from fourbit.hwsim.tensors import GemmTensors, gemm_tensors
from fourbit.hwsim.units import select_unit
from fourbit.traces.errors import ConfigError, SimulationError
from fourbit.traces.formats import FloatFormat, get_format
from fourbit.traces.io import Trace

__all__ = ["Job", "MAX_TILES", "PSUM_BYTES", "plan_jobs", "too_many"]

PSUM_BYTES = {"int32": 4, "fp32": 4, "fp16": 2, "dlfloat16": 2}


@dataclass
class Job:
    """One GEMM of the trace: its trace row, the unit it runs on, one core's share of the GEMM
    (`Gemm`) and its feasible candidate mappings, the tile plan chosen among them (None until
    the engine maps it), the fused output path, the separate vector passes before it
    ((op, elements, in_format, out_format)), the stored tensors it moves, and the cores sharing
    it."""

    row: dict
    unit: object
    gemm: Gemm
    candidates: tuple[Candidate, ...]
    plan: TilePlan | None
    path: OutputPath
    passes: list
    tensors: GemmTensors
    cores: int = 1

    def with_plan(self, plan) -> Job:
        """This job with ``plan`` (a `TilePlan`, or a view of one with other run counts)."""
        return replace(self, plan=plan)


MAX_TILES = 5_000_000
"""Tiles one simulation may walk one by one (tens of minutes of simulation); more is refused."""


def too_many(row: dict, tiles: int, what: str) -> SimulationError:
    return SimulationError(
        f"{_name(row)} brings {what} to "
        f"{tiles:,} tiles to simulate one by one on this chip, more than {MAX_TILES:,}; use a larger "
        "array, larger SRAM buffers or steady-state extrapolation (--extrapolate)")


def gemm_of(row: dict, unit, tensors: GemmTensors, chip: ChipConfig) -> Gemm:
    """One core's share of the GEMM of trace ``row`` on ``unit``: the cores split the larger
    output dimension evenly; a convolution's column-matrix operand is moved as its stored input
    (`fourbit.hwsim.mapping.Operand`); ``bwd_data`` adds its columns into the stored input
    gradient in the ofmap buffer (col2im on chip, `fourbit.hwsim.mapping.staged_bytes`)."""
    m, n, k = int(row["M"]), int(row["N"]), int(row["K"])
    cores = chip.chip.cores
    if cores > 1:
        m, n = (-(-m // cores), n) if m >= n else (m, -(-n // cores))
    a = Operand(m, k, unit.a_bits / 8, tensors.conv if tensors.a_im2col else None, "rows")
    # bwd_weight: b = the input's column matrix transposed (K = output pixels along its rows)
    b = Operand(k, n, unit.b_bits / 8, tensors.conv if tensors.b_im2col else None, "rows")
    arr = chip.array
    return Gemm(m, n, k, int(row["groups"]), a, b, arr.rows, arr.cols, unit.macs_per_pe, arr.dataflow,
                PSUM_BYTES[unit.accumulator], arr.overlap_fill_drain, tensors.conv if tensors.out_col2im else None)


def _given(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _name(row: dict) -> str:
    return f"GEMM {row['layer']} {row['phase']} (M={row['M']}, N={row['N']}, K={row['K']})"


def _too_small(short: list, gemms: list, have: dict, halves: int) -> ConfigError:
    """One error for a step whose GEMMs in ``short`` fit no candidate: the first of them, with
    each buffer's size raised to the largest smallest-tile need of all the step's ``gemms``
    ((row, Gemm)), so that following its advice fits every GEMM (where the buffers alone are at
    fault)."""
    needs = [(r, g.smallest_tile_bytes(halves)) for r, g in gemms]
    row, why = short[0]
    own = next(n for r, n in needs if r is row)
    buffer = next((b for b in have if own[b] > have[b]), None)
    if buffer is None:  # the smallest tile fits: something else rules this GEMM out
        return ConfigError(f"{_name(row)}: {why}")
    step = {b: max(n[b] for _, n in needs) for b in have}
    worst = max(needs, key=lambda rn: rn[1][buffer])[0]
    note = "" if worst is row else f" (what every GEMM of this step needs; the most: {_name(worst)})"
    return ConfigError(f"{_name(row)}: {too_small(own, have, halves, step, note)}")


def plan_jobs(trace: Trace, chip: ChipConfig, table: dict, input_grad: bool) -> tuple[list[Job], list]:
    """The jobs of one trace step (``trace`` holds one step), not yet mapped, and the leftover
    ops: ((layer, phase), ops) of ops whose GEMM is not simulated or absent, run as separate
    passes.

    Raises ConfigError: a format no unit computes, or buffers too small for one tile of any
    candidate mapping of a GEMM (naming the first such GEMM, the buffer, and the size that fits
    every GEMM of the step)."""
    ops = trace.ops
    fused: dict[tuple[str, str], list] = {}
    passes: dict[tuple[str, str], list] = {}
    for r in ops.itertuples(index=False):
        key = (r.layer, r.phase)
        if bool(r.fused):
            fused.setdefault(key, []).append((r.op, int(r.elements), r.out_format))
        else:
            passes.setdefault(key, []).append((r.op, int(r.elements), r.in_format, r.out_format))
    jobs = []
    rows = trace.gemms.to_dict("records")
    fwd = [r["layer"] for r in rows if r["phase"] == "fwd"]
    # the layer whose bwd_data is the gradient of the data (the trace says; older traces: the first)
    input_layer = trace.meta.get("data_input_layer", fwd[0] if fwd else None)
    sram = chip.sram
    caps, halves = (sram.ifmap_bytes, sram.filter_bytes, sram.ofmap_bytes), 2 if sram.double_buffered else 1
    short: list[tuple[dict, str]] = []  # GEMMs no candidate fits, and why
    gemms: list[tuple[dict, Gemm]] = []  # every GEMM of the step, for the advice when one does not fit
    for row in rows:
        if not input_grad and row["phase"] == "bwd_data" and row["layer"] == input_layer:
            fused.pop((row["layer"], row["phase"]), None)
            passes.pop((row["layer"], row["phase"]), None)
            continue  # training never needs the gradient of the input data
        unit = select_unit(chip, row["a_format"], row["b_format"], _given(row.get("a_bits")), _given(row.get("b_bits")))
        tensors = gemm_tensors(row)
        gemm = gemm_of(row, unit, tensors, chip)
        try:
            candidates = tuple(gemm.candidates(*caps, halves))
        except ConfigError as exc:
            short.append((row, str(exc)))
            candidates = ()
        gemms.append((row, gemm))
        key = (row["layer"], row["phase"])
        out_elems = int(row["M"]) * int(row["N"]) * int(row["groups"])
        # mixed precision: FP32 results of FP16 units are stored as FP16, like their operands
        out_fmt = get_format(row["out_format"])
        store = "fp16" if unit.kind == "fp16" and isinstance(out_fmt, FloatFormat) and out_fmt.bits > 16 \
            else row["out_format"]
        path = output_path(fused.pop(key, []), out_elems, store, table, tensors.out_elements)
        jobs.append(Job(row, unit, gemm, candidates, None, path, passes.pop(key, []), tensors, chip.chip.cores))
    if short:
        raise _too_small(short, gemms, dict(zip(("ifmap", "filter", "ofmap"), caps, strict=True)), halves)
    leftovers = [(k, v) for k, v in passes.items()] + [(k, [(o, e, "fp32", f) for o, e, f in v]) for k, v in fused.items()]
    return jobs, leftovers

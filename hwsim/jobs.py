"""Job planning: each GEMM row of a trace step mapped onto the chip (its unit, tile plan, output
path and separate vector passes), and the ops left without a GEMM.

GEMMs run one after another in trace order (forward layers, then the backward layers); the
cores of a multi-core chip split each GEMM's larger output dimension evenly and run in lockstep.
"""

from __future__ import annotations

from dataclasses import dataclass

from fourbit.hwsim.blocks.scaling_unit import OutputPath, output_path
from fourbit.hwsim.config import ChipConfig
from fourbit.hwsim.mapping import TilePlan, plan_gemm
from fourbit.hwsim.tensors import GemmTensors, gemm_tensors
from fourbit.hwsim.units import select_unit
from fourbit.traces.errors import SimulationError
from fourbit.traces.io import Trace

__all__ = ["Job", "MAX_TILES", "PSUM_BYTES", "plan_jobs", "too_many"]

PSUM_BYTES = {"int32": 4, "fp32": 4, "fp16": 2, "dlfloat16": 2}


@dataclass
class Job:
    """One GEMM of the trace, mapped: its trace row, the unit it runs on, the tile plan of one
    core's share, the fused output path, the separate vector passes before it
    ((op, elements, in_format, out_format)), the stored tensors it moves, and the cores sharing
    it."""

    row: dict
    unit: object
    plan: TilePlan  # of one core's share of the GEMM
    path: OutputPath
    passes: list
    tensors: GemmTensors
    cores: int = 1


MAX_TILES = 5_000_000
"""Tiles one simulation may walk one by one (tens of minutes of simulation); more is refused."""


def too_many(row: dict, tiles: int, what: str) -> SimulationError:
    return SimulationError(
        f"GEMM {row['layer']} {row['phase']} (M={row['M']}, N={row['N']}, K={row['K']}) brings {what} to "
        f"{tiles:,} tiles to simulate one by one on this chip, more than {MAX_TILES:,}; use a larger "
        "array, larger SRAM buffers or steady-state extrapolation (--extrapolate)")


def plan_jobs(trace: Trace, chip: ChipConfig, table: dict, input_grad: bool,
              compress: bool = True) -> tuple[list[Job], list]:
    """The jobs of one trace step (``trace`` holds one step) and the leftover ops: ((layer,
    phase), ops) of ops whose GEMM is not simulated or absent, run as separate passes.

    Raises ConfigError (a format no unit computes, a buffer too small for a tile) and, without
    ``compress``, SimulationError for a step of more than `MAX_TILES` tiles."""
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
    a = chip.array
    rows = trace.gemms.to_dict("records")
    fwd = [r["layer"] for r in rows if r["phase"] == "fwd"]
    input_layer = fwd[0] if fwd else None
    total_tiles = 0
    for row in rows:
        if not input_grad and row["phase"] == "bwd_data" and row["layer"] == input_layer:
            fused.pop((row["layer"], row["phase"]), None)
            passes.pop((row["layer"], row["phase"]), None)
            continue  # training never needs the gradient of the input data
        unit = select_unit(chip, row["a_format"], row["b_format"])
        psum = PSUM_BYTES[unit.accumulator]
        m, n = int(row["M"]), int(row["N"])
        cores = chip.chip.cores
        if cores > 1:  # the cores split the larger output dimension evenly
            m, n = (-(-m // cores), n) if m >= n else (m, -(-n // cores))
        plan = plan_gemm(m, n, int(row["K"]), int(row["groups"]),
                         a.rows, a.cols, unit.macs_per_pe, a.dataflow, unit.a_bits / 8,
                         unit.b_bits / 8, psum, chip.sram.ifmap_bytes, chip.sram.filter_bytes,
                         chip.sram.ofmap_bytes, a.overlap_fill_drain, chip.bytes_per_cycle / cores)
        if not compress:  # every tile walked: refuse a step that would take tens of minutes
            total_tiles += plan.tiles
            if total_tiles > MAX_TILES:
                raise too_many(row, total_tiles, "the step")
        key = (row["layer"], row["phase"])
        out_elems = int(row["M"]) * int(row["N"]) * int(row["groups"])
        # mixed precision: FP32 results of FP16 units are stored as FP16, like their operands
        store = "fp16" if unit.kind == "fp16" and row["out_format"] == "fp32" else row["out_format"]
        tensors = gemm_tensors(row)
        path = output_path(fused.pop(key, []), out_elems, store, table, tensors.out_elements)
        jobs.append(Job(row, unit, plan, path, passes.pop(key, []), tensors, cores))
    leftovers = [(k, v) for k, v in passes.items()] + [(k, [(o, e, "fp32", f) for o, e, f in v]) for k, v in fused.items()]
    return jobs, leftovers

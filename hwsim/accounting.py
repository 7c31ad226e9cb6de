"""Energy and traffic accounting of a simulated GEMM: event counts x the energy table
(`fourbit.hwsim.energy`, every number with its source), into one `GemmResult`.

MAC and accumulator energy by unit and format (zero gating optional); registers per bit latched,
by the dataflow's systolic moves (`fourbit.hwsim.registers`); SRAM bits per buffer from the tile
plan at the energy per bit of each buffer's capacity; DRAM bits at the chip's DRAM kind; the
scaling unit's fused ops per output element and its separate passes; leakage of every block
(from its area or its bits: `fourbit.hwsim.energy.leakage_by_block`) over the GEMM's cycles.
"""

from __future__ import annotations

import math

from fourbit.hwsim.blocks.scaling_unit import op_cost
from fourbit.hwsim.config import ChipConfig
from fourbit.hwsim.energy import sram_pj_per_bit
from fourbit.hwsim.jobs import PSUM_BYTES, Job
from fourbit.hwsim.pipeline import Timing
from fourbit.hwsim.report import GemmResult
from fourbit.hwsim.units import add_energy_pj, mac_energy_pj

__all__ = ["gemm_result", "pass_energy_pj"]


def pass_energy_pj(ops: list, table: dict) -> float:
    """Energy of separate vector passes ((op, elements, ...) rows), pJ."""
    return sum(sum(table[e] for e in op_cost(op).events) * elements for op, elements, *_ in ops)


def gemm_result(job: Job, timing: Timing, chip: ChipConfig, table: dict, leak_pj_per_cycle: float) -> GemmResult:
    """The `GemmResult` of ``job``: its timing, traffic and energy per component; the chip leaks
    ``leak_pj_per_cycle`` (`fourbit.hwsim.energy.leakage_pj_per_cycle`) over all its cycles."""
    plan, unit, row = job.plan, job.unit, job.row
    total, pass_cycles, memory_stall = timing.total_cycles, timing.pass_cycles, timing.memory_stall_cycles
    cores = job.cores
    dram_read, dram_write = timing.dram_read_bytes * cores, timing.dram_write_bytes * cores
    macs = int(row["M"]) * int(row["N"]) * int(row["K"]) * int(row["groups"])
    gate = 0.0
    if chip.energy.gate_zeros:
        za, zb = row.get("a_zero_frac"), row.get("b_zero_frac")
        za = 0.0 if za is None or za != za else float(za)
        zb = 0.0 if zb is None or zb != zb else float(zb)
        gate = za + zb - za * zb
    mac_pj = macs * (1 - gate) * mac_energy_pj(unit.kind, chip, table)
    adds = math.ceil(macs / unit.macs_per_pe)
    acc_pj = adds * add_energy_pj(unit.kind, unit.accumulator, table)
    psum_bits = 8 * PSUM_BYTES[unit.accumulator]
    lat = plan.register_latches
    reg_pj = cores * (lat["a"] * unit.a_bits + lat["b"] * unit.b_bits + lat["psum"] * psum_bits) * table["reg.bit"]
    sizes = {"ifmap": chip.sram.ifmap_bytes, "filter": chip.sram.filter_bytes, "ofmap": chip.sram.ofmap_bytes}
    sram_pj = cores * sum(bits["read"] * sram_pj_per_bit(sizes[b], table)
                          + bits["write"] * sram_pj_per_bit(sizes[b], table, True)
                          for b, bits in plan.sram_bits.items())
    dram_pj = (dram_read + dram_write) * 8 * table[f"dram.bit.{chip.dram.kind}"]
    out_elems = int(row["M"]) * int(row["N"]) * int(row["groups"])
    scaling_pj = out_elems * job.path.energy_pj + pass_energy_pj(job.passes, table)
    leak_pj = leak_pj_per_cycle * total
    t, path = job.tensors, job.path
    state_read = out_elems * path.read_bytes  # optimizer state the output path reads
    compulsory_read = t.a_elements * unit.a_bits / 8 + t.b_elements * unit.b_bits / 8 + state_read
    compulsory_write = out_elems * path.write_bytes
    im2col_read = (row["M"] * row["K"] * unit.a_bits / 8 + row["K"] * row["N"] * unit.b_bits / 8) * row["groups"]
    im2col_read += state_read
    im2col_write = out_elems * (path.write_bytes - path.store_bytes + path.column_store_bytes)
    return GemmResult(
        layer=row["layer"], phase=row["phase"], unit=unit.kind, note=unit.note,
        M=int(row["M"]), N=int(row["N"]), K=int(row["K"]), groups=int(row["groups"]),
        macs=macs, folds=plan.folds * cores, tiles=plan.tiles * cores, compute_cycles=plan.compute_cycles,
        total_cycles=int(total), memory_stall_cycles=int(memory_stall),
        scaling_stall_cycles=int(total - plan.compute_cycles - memory_stall),
        vector_pass_cycles=int(pass_cycles),
        peak_macs_per_cycle=chip.array.rows * chip.array.cols * unit.macs_per_pe * cores,
        dram_read_bytes=float(dram_read), dram_write_bytes=float(dram_write),
        compulsory_read_bytes=float(compulsory_read), compulsory_write_bytes=float(compulsory_write),
        im2col_read_bytes=float(im2col_read), im2col_write_bytes=float(im2col_write),
        vector_read_bytes=float(timing.pass_read_bytes * cores), vector_write_bytes=float(timing.pass_write_bytes * cores),
        sram_read_bytes=cores * sum(b["read"] for b in plan.sram_bits.values()) / 8,
        sram_write_bytes=cores * sum(b["write"] for b in plan.sram_bits.values()) / 8,
        energy_mac_pj=mac_pj, energy_acc_pj=acc_pj, energy_reg_pj=reg_pj, energy_sram_pj=sram_pj,
        energy_dram_pj=dram_pj, energy_scaling_pj=scaling_pj, energy_leakage_pj=leak_pj,
    )

"""`SimReport`: per (layer, phase) counters of a simulated training step, as tidy DataFrames.

Units are in the column names: ``*_cycles`` (clock cycles), ``*_bytes``, ``*_pj``. Totals per
training step, throughput (samples/s at the chip clock) and TOPS/W (2 ops per MAC) come from the
same rows. ``stall_cycles = total_cycles - compute_cycles = memory_stall_cycles +
scaling_stall_cycles``; the scaling-unit stall includes separate vector passes and the output
tail after the array's last tile.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pandas as pd

__all__ = ["GemmResult", "SimReport"]

_ENERGY = ["energy_mac_pj", "energy_acc_pj", "energy_reg_pj", "energy_sram_pj", "energy_dram_pj",
           "energy_scaling_pj", "energy_leakage_pj"]
DATAPATH = ["energy_mac_pj", "energy_acc_pj", "energy_reg_pj"]


@dataclass
class GemmResult:
    """Counters of one GEMM (or one standalone vector pass, ``unit="vector"``).

    DRAM bytes: ``dram_*`` all that moved, of which ``vector_*`` by the separate vector passes
    (BatchNorm, activations, quantization not fused into an output path); ``compulsory_*`` each
    stored tensor of the GEMM once (`fourbit.hwsim.tensors`; the separate passes' own traffic for
    a vector pass); ``im2col_*`` the same with a convolution's column matrices moved as GEMM
    operands (what a chip without on-chip im2col and col2im would have to move at the least)."""

    layer: str
    phase: str
    unit: str
    note: str = ""
    M: int = 0
    N: int = 0
    K: int = 0
    groups: int = 0
    macs: int = 0
    folds: int = 0
    tiles: int = 0
    compute_cycles: int = 0
    total_cycles: int = 0
    memory_stall_cycles: int = 0
    scaling_stall_cycles: int = 0
    vector_pass_cycles: int = 0
    peak_macs_per_cycle: int = 0
    dram_read_bytes: float = 0.0
    dram_write_bytes: float = 0.0
    compulsory_read_bytes: float = 0.0
    compulsory_write_bytes: float = 0.0
    im2col_read_bytes: float = 0.0
    im2col_write_bytes: float = 0.0
    vector_read_bytes: float = 0.0
    vector_write_bytes: float = 0.0
    sram_read_bytes: float = 0.0
    sram_write_bytes: float = 0.0
    energy_mac_pj: float = 0.0
    energy_acc_pj: float = 0.0
    energy_reg_pj: float = 0.0
    energy_sram_pj: float = 0.0
    energy_dram_pj: float = 0.0
    energy_scaling_pj: float = 0.0
    energy_leakage_pj: float = 0.0

    @classmethod
    def vector(cls, layer: str, phase: str, cycles: int, read: float, write: float, pj: float,
               leakage_pj: float) -> GemmResult:
        """A standalone vector pass: ``cycles``, DRAM bytes ``read``/``write`` (all compulsory: the
        pass's own), its operations' energy ``pj`` and the chip's leakage over its cycles."""
        return cls(layer, phase, "vector", total_cycles=int(cycles), scaling_stall_cycles=int(cycles),
                   vector_pass_cycles=int(cycles), dram_read_bytes=read, dram_write_bytes=write,
                   compulsory_read_bytes=read, compulsory_write_bytes=write, im2col_read_bytes=read,
                   im2col_write_bytes=write, vector_read_bytes=read, vector_write_bytes=write, energy_scaling_pj=pj,
                   energy_leakage_pj=leakage_pj)


@dataclass
class SimReport:
    """The result of `fourbit.hwsim.simulate`: the chip, one `GemmResult` per trace GEMM (in execution
    order), the trace's metadata and how the simulation ran (``run_info``: simpy events,
    steady-state batches, whether folds overlapped fill and drain)."""

    chip: object
    results: list[GemmResult] = field(default_factory=list)
    trace_meta: dict = field(default_factory=dict)
    run_info: dict = field(default_factory=dict)  # events, steady-state batches, options used

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, phase) GEMM, in execution order, with every counter and the
        derived columns ``stall_cycles``, ``utilization``, ``datapath_energy_pj``, ``energy_pj``."""
        df = pd.DataFrame([asdict(r) for r in self.results])
        if df.empty:
            return df
        df.insert(df.columns.get_loc("total_cycles"), "stall_cycles", df["total_cycles"] - df["compute_cycles"])
        denom = (df["total_cycles"] * df["peak_macs_per_cycle"]).where(lambda s: s > 0)  # all cores
        df["utilization"] = (df["macs"] / denom).fillna(0.0)
        df["datapath_energy_pj"] = df[DATAPATH].sum(axis=1)
        df["energy_pj"] = df[_ENERGY].sum(axis=1)
        return df

    def totals(self) -> pd.Series:
        """Per training step: summed counters, time (s), samples/s, TOPS/W (2 ops per MAC)."""
        df = self.to_frame()
        keys = ["macs", "compute_cycles", "stall_cycles", "memory_stall_cycles", "scaling_stall_cycles",
                "total_cycles", "dram_read_bytes", "dram_write_bytes", "compulsory_read_bytes",
                "compulsory_write_bytes", "im2col_read_bytes", "im2col_write_bytes", "vector_read_bytes",
                "vector_write_bytes", "sram_read_bytes", "sram_write_bytes", *_ENERGY,
                "datapath_energy_pj", "energy_pj"]
        s = df[keys].sum()
        clock = self.chip.array.clock_hz
        s["time_s"] = s["total_cycles"] / clock
        batch = self.trace_meta.get("batch_size")
        s["samples_per_s"] = (batch / s["time_s"]) if batch and s["time_s"] else float("nan")
        s["tops_per_w"] = (2 * s["macs"] / s["energy_pj"]) if s["energy_pj"] else float("nan")
        s["utilization"] = s["macs"] / max(1, (df["total_cycles"] * df["peak_macs_per_cycle"]).sum())
        return s

    def area(self) -> pd.DataFrame:
        """Chip area per block (mm^2) with sources (`fourbit.hwsim.area.chip_area`)."""
        from fourbit.hwsim.area import chip_area

        return chip_area(self.chip)

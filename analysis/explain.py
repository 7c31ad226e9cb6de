"""Why a chip's speed-up over a baseline is what it is: the gap from the ratio of peak compute
densities to the measured step time, term by term, and the energy ratio by component.

``explain(trace, chip, baseline_trace, baseline) -> Explanation`` and ``fourbit explain``.

Speed-up. Each chip runs a training step at seven levels of realism. Level 0 is its peak: every
MAC of the step on the chip's fastest unit at full rate. Each next level adds one effect back,
in this fixed order, and the last level is the full simulation:

1. ``16-bit GEMMs``: every GEMM on the unit its formats need (the FP16 GEMMs of the first and
   last layers, or any GEMM whose formats only an FP16 unit computes, run at 1 product per PE per
   cycle, not the 4-bit unit's p), still at full rate:
   sum over GEMMs of MACs / (cores * rows * cols * p of its unit).
2. ``partial folds and padding``: whole folds (`fourbit.hwsim.mapping`): a fold whose K, N (or M)
   does not fill the array, and a GEMM split unevenly over the cores, take as long as a full
   one; no fill or drain: folds * the streamed length (``ws``: M, ``is``: N, ``os``: ceil(K/p)).
3. ``fill and drain``: each fold's fill and drain as the fold model counts them. Measured by a
   simulation with memory and vector work off (below), which then runs exactly the folds'
   compute cycles (tested).
4. ``memory``: a simulation with the chip's DRAM, DMA and SRAM, vector work and the weight
   update still off. Off means: DRAM bandwidth unlimited, latency 0 cycles, DMA setup 0 cycles.
5. ``vector work``: the ops of the trace on the scaling unit (fused output-path ops and separate
   passes: BatchNorm, activations, quantization, statistics, col2im), with their traffic. Off
   means: the trace's ops removed (but the weight update's, when it is on) and
   ``scaling.lanes = inf``.
6. ``weight update``: the fused ops of the output path of each weight gradient (a ``bwd_weight``
   GEMM whose ``out_role`` is ``weight_gradient``: the optimizer step on FP32 master weights and
   momentum, the new weights' quantization and its statistics). Off means: those ops removed, so
   ``bwd_weight`` stores its gradient as its output format.

The speed-up at level k is the baseline's time over the chip's (seconds: the clocks may differ),
both at level k; term k's factor is speed-up(k) / speed-up(k - 1). Level 0's speed-up is split
into the ratio of peak compute densities (peak MACs per second per mm^2 of PE array), the ratio
of the PE-array areas and the ratio of the work (baseline MACs over the chip's: 1 when both run
the same GEMMs). The product of all factors is the measured speed-up, with no residual.

Energy. From the two full simulations: the start is the ratio of the step's MACs at each chip's
fastest unit's energy per MAC (MAC plus its share of the accumulator add); then the measured
datapath (the unit mix: 16-bit GEMMs, accumulators), registers, SRAM, DRAM, vector work and
leakage are added one by one: the ratio after term k is the chip's sum of the components so far
over the baseline's; factors are ratios of consecutive ones, and their product is the measured
energy ratio.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import pandas as pd

from fourbit.hwsim.area import chip_area
from fourbit.hwsim.config import ChipConfig, load_chip
from fourbit.hwsim.energy import energy_table
from fourbit.hwsim.engine import mapped_jobs, simulate
from fourbit.hwsim.mapping import fold_count
from fourbit.hwsim.units import add_energy_pj, mac_energy_pj
from fourbit.traces.errors import ConfigError
from fourbit.traces.io import Trace, read

__all__ = ["ENERGY_TERMS", "SPEED_TERMS", "Explanation", "explain", "explain_job"]

SPEED_TERMS = ("16-bit GEMMs", "partial folds and padding", "fill and drain", "memory", "vector work",
               "weight update")
"""The effects of the speed-up waterfall, in the order they are added back (module docstring)."""
ENERGY_TERMS = {"datapath": ("energy_mac_pj", "energy_acc_pj"), "registers": ("energy_reg_pj",),
                "SRAM": ("energy_sram_pj",), "DRAM": ("energy_dram_pj",), "vector work": ("energy_scaling_pj",),
                "leakage": ("energy_leakage_pj",)}
"""The energy components in the order the energy waterfall adds them, with their report columns."""

_MEMORY_OFF = {"dram.bandwidth_bytes_per_s": math.inf, "dram.latency_cycles": 0, "dma.setup_cycles": 0}


@dataclass
class Explanation:
    """The two waterfalls: ``speedup`` and ``energy`` (DataFrames: term, factor, ratio after the
    term, how the term is measured), the chips' names and the measured ratios."""

    chip: str
    baseline: str
    speedup: pd.DataFrame
    energy: pd.DataFrame

    @property
    def measured_speedup(self) -> float:
        return float(self.speedup["ratio"].iloc[-1])

    @property
    def measured_energy_ratio(self) -> float:
        return float(self.energy["ratio"].iloc[-1])

    def to_frame(self) -> pd.DataFrame:
        """Both waterfalls in one table, with a ``waterfall`` column (``speed-up``, ``energy``)."""
        return pd.concat([self.speedup.assign(waterfall="speed-up"), self.energy.assign(waterfall="energy")],
                         ignore_index=True)[["waterfall", "term", "factor", "ratio", "how"]]

    def figure(self):
        """A matplotlib figure: each waterfall as floating bars on a log axis, one per term, from
        the ratio before it to the ratio after it, labelled with its factor."""
        from fourbit.analysis.plots import waterfall_figure

        return waterfall_figure(self)


def _fastest(chip: ChipConfig) -> tuple[str, int]:
    """The unit with the most products per PE per cycle (the cheapest per MAC among equals)."""
    table = energy_table(chip.energy.table, chip.energy.overrides)
    best = max(chip.unit_macs_per_pe(k) for k in chip.units)
    kinds = [k for k in chip.units if chip.unit_macs_per_pe(k) == best]
    return min(kinds, key=lambda k: _pj_per_mac(chip, k, table)), best


def _pj_per_mac(chip: ChipConfig, kind: str, table: dict) -> float:
    p = chip.unit_macs_per_pe(kind)
    return mac_energy_pj(kind, chip, table) + add_energy_pj(kind, chip.units[kind].accumulator, table) / p


def _without_ops(trace: Trace, keep) -> Trace:
    return Trace(trace.meta, trace.gemms, trace.ops[keep(trace.ops)].reset_index(drop=True), trace.metrics)


def _streamed(g) -> int:
    """Cycles of a GEMM's whole folds without fill and drain (one core, all groups)."""
    length = {"ws": g.M, "is": g.N, "os": -(-g.K // g.p)}[g.dataflow]
    return g.groups * fold_count(g.M, g.N, g.K, g.rows, g.cols, g.p, g.dataflow) * length


def _levels(trace: Trace, chip: ChipConfig) -> tuple[list[float], int, object]:
    """Step time in seconds at levels 0..6 (module docstring), the step's MACs and the full
    simulation's report."""
    g = trace.gemms
    weight_grads = set(g.layer[(g.phase == "bwd_weight") & (g.out_role == "weight_gradient")])
    update = lambda ops: (ops.phase == "bwd_weight") & ops.fused.astype(bool) & ops.layer.isin(weight_grads)  # noqa: E731
    no_update = _without_ops(trace, lambda ops: ~update(ops))
    bare = _without_ops(trace, lambda ops: pd.Series(False, index=ops.index))
    vector_off = chip.with_overrides({"scaling.lanes": math.inf})
    ideal = vector_off.with_overrides(_MEMORY_OFF)
    jobs = mapped_jobs(bare, ideal)
    a, best_p = chip.array, _fastest(chip)[1]
    pes = a.rows * a.cols * chip.chip.cores
    macs = sum(int(j.row["M"]) * int(j.row["N"]) * int(j.row["K"]) * int(j.row["groups"]) for j in jobs)
    cycles = [macs / (pes * best_p),
              sum(int(j.row["M"]) * int(j.row["N"]) * int(j.row["K"]) * int(j.row["groups"]) / (pes * j.unit.macs_per_pe)
                  for j in jobs),
              sum(_streamed(j.gemm) for j in jobs)]
    for t, c in ((bare, ideal), (bare, vector_off), (no_update, chip)):
        cycles.append(float(simulate(t, c).totals()["total_cycles"]))
    full = simulate(trace, chip)
    cycles.append(float(full.totals()["total_cycles"]))
    return [c / a.clock_hz for c in cycles], macs, full


def _pe_array_mm2(chip: ChipConfig) -> float:
    area = chip_area(chip)
    return float(area[area.block == "pe_array"].area_mm2.iloc[0])


def _peak_macs_per_s(chip: ChipConfig) -> float:
    a = chip.array
    return a.rows * a.cols * chip.chip.cores * _fastest(chip)[1] * a.clock_hz


def _speedup(chip, base, levels_a, levels_b, macs_a, macs_b) -> pd.DataFrame:
    density = (_peak_macs_per_s(chip) / _pe_array_mm2(chip)) / (_peak_macs_per_s(base) / _pe_array_mm2(base))
    area = _pe_array_mm2(chip) / _pe_array_mm2(base)
    rows = [("peak compute density", density, "peak MACs/s per mm^2 of PE array, fastest unit"),
            ("PE-array area", area, "PE-array mm^2, chip over baseline"),
            ("work", macs_b / macs_a, "MACs of the step, baseline over chip")]
    how = ("each GEMM on the unit its formats need, at full rate",
           "whole folds, padding included; no fill or drain",
           "added: each fold's fill and drain (simulated, memory, vector work and update off)",
           "added: DRAM, DMA and SRAM stalls (simulated, vector work and update off)",
           "added: the trace's ops on the scaling unit (simulated, update off)",
           "added: optimizer update and weight requantization (the full step, measured)")
    ratios = [b / a for a, b in zip(levels_a, levels_b, strict=True)]
    rows += [(term, ratios[k + 1] / ratios[k], how[k]) for k, term in enumerate(SPEED_TERMS)]
    df = pd.DataFrame(rows, columns=["term", "factor", "how"])
    df.insert(2, "ratio", df["factor"].cumprod())
    return df


def _energy(chip, base, full_a, full_b, macs_a, macs_b) -> pd.DataFrame:
    ta, tb = (energy_table(c.energy.table, c.energy.overrides) for c in (chip, base))
    fa, fb = _fastest(chip)[0], _fastest(base)[0]
    start = macs_a * _pj_per_mac(chip, fa, ta) / (macs_b * _pj_per_mac(base, fb, tb))
    rows = [(f"datapath per MAC at the fastest units ({fa} / {fb})", start,
             "MACs x (MAC + its share of the accumulator add) pJ")]
    ea, eb = full_a.to_frame(), full_b.to_frame()
    sum_a = sum_b = 0.0
    before = start
    for term, cols in ENERGY_TERMS.items():
        sum_a += float(ea[list(cols)].sum().sum())
        sum_b += float(eb[list(cols)].sum().sum())
        after = sum_a / sum_b
        what = ("measured: every GEMM on its unit, with its accumulator" if term == "datapath"
                else f"added: the {term} energy of the measured runs")
        rows.append((term, after / before, what))
        before = after
    df = pd.DataFrame(rows, columns=["term", "factor", "how"])
    df.insert(2, "ratio", df["factor"].cumprod())
    return df


_SHAPE = ["layer", "phase", "M", "N", "K", "groups"]


def _check_same_workload(trace: Trace, baseline_trace: Trace) -> None:
    """ConfigError naming the first GEMM where the two steps differ in layer, phase or shape."""
    a, b = (t.gemms[_SHAPE].astype(str).agg(" ".join, axis=1).tolist() for t in (trace, baseline_trace))
    if a == b:
        return
    i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    show = lambda rows: rows[i] if i < len(rows) else "no GEMM"  # noqa: E731
    raise ConfigError(f"the two traces are not the same workload: GEMM {i} is {show(a)!r} in the chip's "
                      f"trace and {show(b)!r} in the baseline's (layer phase M N K groups)")


def explain(trace: Trace | str | os.PathLike, chip: ChipConfig | str, baseline_trace: Trace | str | os.PathLike,
            baseline: ChipConfig | str) -> Explanation:
    """Explain ``chip``'s speed-up and energy ratio against ``baseline`` on one training step:
    ``trace`` is the step as the chip's recipe records it, ``baseline_trace`` as the baseline's
    (the same workload; each a `Trace` or a run directory; the last recorded step). Chips are
    `ChipConfig` objects or preset names. Simulates each chip five times (module docstring).

    Returns an `Explanation`; the product of each waterfall's factors is the measured ratio.

    Raises ConfigError when the two steps are not the same workload (their GEMMs differ in layer,
    phase, shape or order), and ConfigError or TraceError as `fourbit.hwsim.engine.simulate` does.
    """
    chip, base = (c if isinstance(c, ChipConfig) else load_chip(c) for c in (chip, baseline))
    ta, tb = ((t if isinstance(t, Trace) else read(t)).step() for t in (trace, baseline_trace))
    _check_same_workload(ta, tb)
    levels_a, macs_a, full_a = _levels(ta, chip)
    levels_b, macs_b, full_b = _levels(tb, base)
    return Explanation(chip.chip.name, base.chip.name, _speedup(chip, base, levels_a, levels_b, macs_a, macs_b),
                       _energy(chip, base, full_a, full_b, macs_a, macs_b))


def _check_units(chip: ChipConfig, recipe: str, trace: Trace) -> None:
    """ConfigError, before any work, when no unit of ``chip`` computes a GEMM ``recipe`` gives a
    layer role the workload has (first, hidden, last; depthwise where it has depthwise layers)."""
    from fourbit.hwsim.units import select_unit
    from fourbit.models.recipes import get_recipe

    described = get_recipe(recipe).describe()
    roles = ["first", "hidden", "last"] + (["depthwise"] if (trace.gemms.layer_type == "dwconv2d").any() else [])
    for role in roles:
        for phase, (a, b, _, _) in described[role]["gemm_formats"].items():
            try:
                select_unit(chip, a, b)
            except ConfigError as exc:
                raise ConfigError(f"recipe {recipe!r} ({role} layers, {phase}) on chip {chip.chip.name!r}: "
                                  f"{exc}") from None


def explain_job(workload: str | os.PathLike, chip: str = "fourbit", baseline: str = "fp16", *,
                chip_set: dict | None = None, baseline_set: dict | None = None, recipe: str | None = None,
                baseline_recipe: str | None = None, out: str | os.PathLike = "explain-out",
                overwrite: bool = False) -> Explanation:
    """`explain` on a trace directory, as ``fourbit explain`` runs it: each chip (a preset or a
    TOML file, with ``*_set`` overrides) runs its own recipe's trace of ``workload`` (the
    recipe `fourbit.analysis.compare.CHIP_RECIPES` pairs with a preset, unless given), made the
    way a comparison makes it (the trace itself, a SCALE-Sim topology imported again, or the
    model trained again, cached under ``out``). Writes ``out/explain.csv`` and
    ``out/explain.png`` (and ``.svg``) in a job directory (`fourbit.analysis.jobdir`).

    Raises ConfigError: a chip without a recipe of its own and none given, bad overrides, a
    recipe with a GEMM no unit of its chip computes, ``out`` refused; before any work.
    """
    from fourbit.analysis.compare import CHIP_RECIPES
    from fourbit.analysis.jobdir import job_dir
    from fourbit.analysis.plots import save_figure
    from fourbit.analysis.workloads import Source, materialize
    from fourbit.traces.files import atomic_write

    given = read(workload)
    chips, recipes = {}, {}
    for side, name, over, given_recipe in (("chip", chip, chip_set, recipe),
                                           ("baseline", baseline, baseline_set, baseline_recipe)):
        cfg = load_chip(name, over or {})
        own = given_recipe or CHIP_RECIPES.get(str(name))
        if own is None:
            flag = "--recipe" if side == "chip" else "--baseline-recipe"
            raise ConfigError(f"chip {str(name)!r} has no recipe of its own ({', '.join(CHIP_RECIPES)} do); "
                              f"give one ({flag})")
        _check_units(cfg, own, given)
        chips[side], recipes[side] = cfg, own
    source = Source(trace=str(workload))
    identity = {"workload": source.identity(), **{side: {"chip": cfg.model_dump(mode="json"), "recipe": recipes[side]}
                                                  for side, cfg in chips.items()}}
    with job_dir(out, "explain", identity, overwrite=overwrite) as path:
        loads = source.workloads(sorted(set(recipes.values())), path)
        for w in loads.values():
            materialize(w)
        result = explain(loads[recipes["chip"]].path, chips["chip"], loads[recipes["baseline"]].path,
                         chips["baseline"])
        with atomic_write(path / "explain.csv") as tmp:
            result.to_frame().to_csv(tmp, index=False)
        save_figure(result.figure(), path, "explain")
    return result

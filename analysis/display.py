"""How fourbit shows numbers: one place for units, scaling and column names, used by every
printed table and by the HTML report (``fourbit report``).

Result files keep raw numbers in base units named in their columns (``time_s``, ``energy_pj``,
``dram_read_bytes``); what a person reads is scaled to a readable unit per value (``15.32 ms``,
``32.67 mJ``, ``399.1 MB``), integers carry no decimals and thousands separators
(``2,881,844,268``), fractions read as percentages. Decimal prefixes throughout (1 kB = 1000 B,
1 MB = 10^6 B), as DRAM bandwidths and SRAM sizes are quoted in the hardware references.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

__all__ = ["Column", "column", "format_value", "readable_frame", "scaled", "show", "show_bytes", "show_count",
           "show_energy_pj", "show_time_s", "unit_for"]

SIGNIFICANT = 4
"""Significant digits of a scaled value (``15.32 ms``): enough to tell apart the points of a
sweep, few enough to read."""

_TIME = (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9))
_ENERGY_J = (("J", 1.0), ("mJ", 1e-3), ("uJ", 1e-6), ("nJ", 1e-9), ("pJ", 1e-12))
_BYTES = (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3), ("B", 1.0))


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _sig(value: float) -> str:
    """``value`` with `SIGNIFICANT` digits, never in exponent notation (it is already scaled)."""
    if value == 0:
        return "0"
    digits = max(0, SIGNIFICANT - 1 - int(math.floor(math.log10(abs(value)))))
    return f"{value:.{digits}f}"


def scaled(value: float, units: tuple[tuple[str, float], ...]) -> str:
    """``value`` (in the base unit, factor 1) in the largest of ``units`` (name, factor; largest
    first) that keeps it at or above 1, e.g. ``scaled(0.0153, _TIME)`` = ``15.3 ms``; the smallest
    unit below that. Zero in the base unit; empty for a missing value."""
    if _missing(value):
        return ""
    v = float(value)
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return f"0 {next(name for name, f in units if f == 1.0)}"
    for name, factor in units:
        if abs(v) >= factor:
            return f"{_sig(v / factor)} {name}"
    name, factor = units[-1]
    return f"{_sig(v / factor)} {name}"


def unit_for(largest: float, kind: str) -> tuple[str, float]:
    """(unit name, factor from the base unit) that shows values up to ``largest`` (in the base
    unit of ``kind``: ``energy_pj``, ``time_s`` or ``bytes``) as numbers of at least 1: one unit
    for a whole axis of a figure."""
    if kind == "energy_pj":
        return next(((n, f * 1e12) for n, f in _ENERGY_J if abs(largest) * 1e-12 >= f), ("pJ", 1.0))
    units = {"time_s": _TIME, "bytes": _BYTES}[kind]
    return next(((n, f) for n, f in units if abs(largest) >= f), units[-1])


def show_time_s(seconds: float) -> str:
    """Seconds as s, ms, us or ns."""
    return scaled(seconds, _TIME)


def show_energy_pj(pj: float) -> str:
    """Picojoules as J, mJ, uJ, nJ or pJ."""
    return "" if _missing(pj) else scaled(float(pj) * 1e-12, _ENERGY_J)


def show_bytes(n: float) -> str:
    """Bytes as TB, GB, MB, kB or B (decimal)."""
    return scaled(n, _BYTES)


def show_count(n: float) -> str:
    """A count (cycles, MACs, tiles) as a whole number with thousands separators."""
    return "" if _missing(n) else f"{int(round(float(n))):,}"


def _fixed(fmt: str) -> Callable[[float], str]:
    return lambda v: "" if _missing(v) else fmt.format(float(v))


def _plain(v) -> str:
    if _missing(v):
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return show_count(v) if v.is_integer() and abs(v) < 1e15 else _sig(v)
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


_KINDS: dict[str, Callable[[float], str]] = {
    "time_s": show_time_s,
    "time_us": lambda v: "" if _missing(v) else show_time_s(float(v) * 1e-6),
    "energy_pj": show_energy_pj,
    "energy_uj": lambda v: "" if _missing(v) else show_energy_pj(float(v) * 1e6),
    "bytes": show_bytes,
    "count": show_count,
    "percent": _fixed("{:.2f} %"),
    "fraction": lambda v: "" if _missing(v) else f"{100 * float(v):.1f} %",
    "ratio": _fixed("{:.2f}x"),
    "points": _fixed("{:+.2f} pts"),  # a difference, signed
    "spread_points": _fixed("{:.2f} pts"),  # a spread (a standard deviation), never negative
    "plain": _plain,
}


@dataclass(frozen=True)
class Column:
    """How a result column is shown: its header and the kind of its values (a key of the
    formatters: time_s, time_us, energy_pj, energy_uj, bytes, count, percent, fraction, ratio,
    points, plain)."""

    label: str
    kind: str


_NAMED = {
    "array.rows": Column("array rows", "plain"), "array.cols": Column("array cols", "plain"),
    "array.dataflow": Column("dataflow", "plain"), "log_path.radix": Column("log path radix", "plain"),
    "recipe_name": Column("recipe", "plain"), "tpr": Column("TPR", "plain"),
    "total_cycles": Column("cycles", "count"), "compute_cycles": Column("compute cycles", "count"),
    "stall_cycles": Column("stall cycles", "count"), "time_s": Column("time", "time_s"),
    "utilization": Column("PE utilization", "fraction"), "tops_per_w": Column("TOPS/W", "plain"),
    "samples_per_s": Column("samples/s", "plain"), "energy_pj": Column("energy", "energy_pj"),
    "test_accuracy_pct": Column("test accuracy", "percent"), "test_accuracy_std": Column("accuracy std", "spread_points"),
    "test_accuracy_min": Column("accuracy min", "percent"), "test_accuracy_max": Column("accuracy max", "percent"),
    "pe_array_mm2": Column("PE array area (mm²)", "plain"), "shapes_tried": Column("shapes tried", "count"),
    "macs": Column("MACs", "count"), "M": Column("M", "count"), "N": Column("N", "count"),
    "K": Column("K", "count"), "tiles": Column("tiles", "count"),
    "dram_bytes_per_step": Column("DRAM traffic per step", "bytes"),
}
"""Columns whose header is not their name with spaces (or whose kind the suffix rules below do
not tell)."""

_RULES: tuple[tuple[str, str, str], ...] = (
    (r"^speedup_vs_(.+)$", r"speed-up vs \1", "ratio"),
    (r"^energy_ratio_vs_(.+)$", r"energy vs \1", "ratio"),
    (r"^accuracy_delta_vs_(.+)_pts$", r"accuracy vs \1", "points"),
    (r"^(.*)_accuracy_pct(_.*)?$", r"\1 accuracy\2", "percent"),
    (r"^(.*)_pct$", r"\1", "percent"),
    (r"^(.*)_uj$", r"\1", "energy_uj"),
    (r"^(.*)_pj$", r"\1", "energy_pj"),
    (r"^(.*)_us$", r"\1", "time_us"),
    (r"^(.*)_seconds$", r"\1", "time_s"),
    (r"^(.*)_s$", r"\1", "time_s"),
    (r"^(.*)_bytes(.*)$", r"\1\2", "bytes"),
    (r"^(.*cycles.*)$", r"\1", "count"),
)
"""(pattern, header, kind) by column name: the unit suffix becomes the kind and leaves the header."""


def column(name: str) -> Column:
    """How the result column ``name`` is shown (`Column`): a named one, else by its unit suffix,
    else its name with spaces for underscores and plain values."""
    if name in _NAMED:
        return _NAMED[name]
    for pattern, label, kind in _RULES:
        if re.match(pattern, name):
            text = re.sub(pattern, label, name).replace("_", " ").strip()
            return Column(re.sub(r"\bdram\b", "DRAM", re.sub(r"\bsram\b", "SRAM", text)) or name, kind)
    return Column(name.replace("_", " "), "plain")


def show(kind: str, value) -> str:
    """``value`` formatted as ``kind`` (a `Column` kind: time_s, energy_pj, ratio, points, ...)."""
    return _KINDS[kind](value)


def format_value(name: str, value) -> str:
    """``value`` of column ``name`` as a person reads it."""
    return _KINDS[column(name).kind](value)


def readable_frame(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with every value formatted by its column (`format_value`) and readable headers: for
    printing (``to_string``) and the report. Headers that two columns would share keep their
    names."""
    labels = [column(c).label for c in df.columns]
    headers = [lab if labels.count(lab) == 1 else c for c, lab in zip(df.columns, labels, strict=True)]
    out = pd.DataFrame({h: [format_value(c, v) for v in df[c].tolist()] for c, h in zip(df.columns, headers, strict=True)})
    return out

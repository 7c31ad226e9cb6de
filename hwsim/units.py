"""PE units: which unit runs a GEMM (its operand formats decide), and what one MAC costs.

Design.md section 5: each GEMM row runs on the cheapest unit of the chip that supports its
operand formats (INT4 x INT4 -> ``int4``; log-FP4 x INT4 -> ``fp4xint4``; ...). FP32 operands run
on FP16 units, the mixed-precision convention of FP16 training hardware, and are moved as FP16.
A row no unit supports is a `ConfigError` naming both formats and the chip's units.
"""

from __future__ import annotations

from dataclasses import dataclass

from fourbit.hwsim.blocks.log_path import LogPath
from fourbit.hwsim.config import UNIT_KINDS, ChipConfig
from fourbit.traces.errors import ConfigError
from fourbit.traces.formats import FloatFormat, Format, IntFormat, LogFormat, get_format

__all__ = ["UnitChoice", "select_unit"]

_INT4 = {"int4", "uint4"}
_FP8 = {"fp8_e4m3", "fp8_e5m2"}


@dataclass(frozen=True)
class UnitChoice:
    """The unit a GEMM runs on and how its operands are stored and moved."""

    kind: str
    macs_per_pe: int
    accumulator: str
    a_bits: int
    b_bits: int
    note: str = ""


def _fits_fp16(fmt: Format) -> bool:
    """Whether every value of ``fmt`` is an FP16 value (so an FP16 unit computes it exactly)."""
    if isinstance(fmt, IntFormat):
        return fmt.bits <= 8
    if isinstance(fmt, LogFormat):
        exps = fmt.level_exponents()
        return bool(exps.min() >= -24 and exps.max() <= 15)
    return isinstance(fmt, FloatFormat) and fmt.name in ("fp16", *_FP8)


def _supports(kind: str, a: Format, b: Format, chip: ChipConfig) -> tuple[bool, str]:
    names = {a.name, b.name}
    if kind == "int4":
        return names <= _INT4, ""
    if kind == "fp4xint4":
        logs = [f for f in (a, b) if isinstance(f, LogFormat)]
        ints = [f for f in (a, b) if f.name in _INT4]
        if len(logs) == 1 and len(ints) == 1:
            lf = logs[0]
            ok = lf.radix == chip.log_path.radix and lf.exponent_bits == chip.log_path.exponent_bits
            return ok, "" if ok else (f"its log path is radix {chip.log_path.radix}, "
                                      f"{chip.log_path.exponent_bits} exponent bits")
        return False, ""
    if kind == "int8":
        return names <= _INT4 | {"int8"}, ""
    if kind == "fp8":
        return bool(names & _FP8) and names <= _FP8 | _INT4, ""
    if kind == "fp16":
        if "fp32" in names:
            rest = [f for f in (a, b) if f.name != "fp32"]
            return all(_fits_fp16(f) for f in rest), "fp32 operands run as fp16"
        return _fits_fp16(a) and _fits_fp16(b), ""
    return False, ""


def _bits(fmt: Format, kind: str) -> int:
    if fmt.name == "fp32" and kind == "fp16":
        return 16
    return fmt.bits


def select_unit(chip: ChipConfig, a_format: str, b_format: str) -> UnitChoice:
    """The cheapest unit of ``chip`` that computes a_format x b_format.

    Raises
    ------
    ConfigError
        No unit of the chip supports the pair (the message names both formats and the units).
    """
    a, b = get_format(a_format), get_format(b_format)
    hints = []
    for kind in UNIT_KINDS:
        if kind not in chip.units:
            continue
        ok, note = _supports(kind, a, b, chip)
        if ok:
            return UnitChoice(kind, chip.unit_macs_per_pe(kind), chip.units[kind].accumulator,
                              _bits(a, kind), _bits(b, kind), note)
        if note:
            hints.append(f"{kind}: {note}")
    extra = f" ({'; '.join(hints)})" if hints else ""
    raise ConfigError(
        f"no unit of chip {chip.chip.name!r} computes {a_format} x {b_format}; its units: "
        f"{', '.join(chip.units)}{extra}"
    )


def mac_energy_pj(kind: str, chip: ChipConfig, table: dict[str, float]) -> float:
    """Energy of one product (multiply or shift, plus its share of the adder tree) in pJ; the
    accumulator add is separate (`add_energy_pj`) except for FMA units, whose entry includes it."""
    if kind == "fp4xint4":
        return LogPath(chip.log_path).mac_energy_pj(table)
    return table[f"mac.{kind}"]


def add_energy_pj(kind: str, accumulator: str, table: dict[str, float]) -> float:
    """Energy of one accumulator add of a unit (0 where the table's MAC entry includes the add:
    the INT8 MAC and the FP8/FP16 FMAs)."""
    if kind in ("fp16", "fp8", "int8"):
        return 0.0
    return table[f"add.{accumulator}"]

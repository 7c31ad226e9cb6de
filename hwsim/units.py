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

_FP16 = get_format("fp16")
_FP8S = (get_format("fp8_e4m3"), get_format("fp8_e5m2"))


@dataclass(frozen=True)
class UnitChoice:
    """The unit a GEMM runs on and how its operands are stored and moved."""

    kind: str
    macs_per_pe: int
    accumulator: str
    a_bits: float
    b_bits: float
    note: str = ""


def _small_int(fmt: Format, bits: int) -> bool:
    return isinstance(fmt, IntFormat) and fmt.bits <= bits


def _wide_float(fmt: Format) -> bool:
    """A float format wider than FP16 (FP32): FP16 units run it as FP16, the mixed-precision
    convention of FP16 training hardware."""
    return isinstance(fmt, FloatFormat) and fmt.bits > 16


def _supports(kind: str, a: Format, b: Format, chip: ChipConfig) -> tuple[bool, str]:
    """Whether a unit of ``kind`` computes a x b exactly, from the formats' properties: INT4 MACs
    take integers of at most 4 bits; the shift-add unit a log format of the chip's radix and
    exponent bits times such an integer; INT8 MACs integers of at most 8 bits; FP8 FMAs at least
    one float of at most 8 bits, every operand's values being values of E4M3 or E5M2; FP16 FMAs
    operands whose values are FP16 values (wider floats run as FP16)."""
    pair = (a, b)
    if kind == "int4":
        return all(_small_int(f, 4) for f in pair), ""
    if kind == "fp4xint4":
        logs = [f for f in pair if isinstance(f, LogFormat)]
        ints = [f for f in pair if _small_int(f, 4)]
        if len(logs) == 1 and len(ints) == 1:
            lf = logs[0]
            ok = lf.radix == chip.log_path.radix and lf.exponent_bits == chip.log_path.exponent_bits
            return ok, "" if ok else (f"its log path is radix {chip.log_path.radix}, "
                                      f"{chip.log_path.exponent_bits} exponent bits")
        return False, ""
    if kind == "int8":
        return all(_small_int(f, 8) for f in pair), ""
    if kind == "fp8":
        narrow_float = any(isinstance(f, FloatFormat) and f.bits <= 8 for f in pair)
        return narrow_float and all(any(f.representable_in(e) for e in _FP8S) for f in pair), ""
    if kind == "fp16":
        if any(_wide_float(f) for f in pair):
            rest = [f for f in pair if not _wide_float(f)]
            return all(f.representable_in(_FP16) for f in rest), "fp32 operands run as fp16"
        return a.representable_in(_FP16) and b.representable_in(_FP16), ""
    return False, ""


def _bits(fmt: Format, kind: str, given: float | None) -> float:
    """Bits moved per element: ``given`` (the trace's, scales included) or the format's own; a
    wide float on an FP16 unit moves as FP16."""
    if _wide_float(fmt) and kind == "fp16":
        return 16
    bits = fmt.bits_per_element if given is None else given
    return int(bits) if float(bits).is_integer() else bits


def select_unit(chip: ChipConfig, a_format: str, b_format: str, a_bits: float | None = None,
                b_bits: float | None = None) -> UnitChoice:
    """The cheapest unit of ``chip`` that computes a_format x b_format; ``a_bits``, ``b_bits``:
    the operands' bits per element with their scales (the trace's; default the formats' own).

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
                              _bits(a, kind, a_bits), _bits(b, kind, b_bits), note)
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

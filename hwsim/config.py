"""`ChipConfig`: the accelerator being modelled, typed, frozen and closed.

A chip is read from TOML (``load_chip``: a preset name from ``hwsim/configs/`` or a path) and
written back (`ChipConfig.to_toml`); dotted overrides (``{"array.rows": 64}``, the CLI's
``--set array.rows=64``) replace single fields. Every field carries its unit in its name; an
unknown key, a wrong type or a value out of range is a `ConfigError` naming the dotted field and
the allowed range (style.md rules 7, 8, 10). The upper bounds (65,536 PEs per array side, 1 TiB
per buffer, 10^9 cycles of latency) are sanity limits of ours, far beyond any chip, so that a typo
cannot ask for a simulation whose counters overflow.
"""

from __future__ import annotations

import math
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import tomli_w
from pydantic import Field, model_validator

from fourbit.traces.config import IntChoice, StrictModel, set_dotted
from fourbit.traces.errors import ConfigError
from fourbit.traces.formats import ACCUMULATOR_FORMATS, LogFormat

__all__ = ["ChipConfig", "MAX_ASPECT", "UNIT_KINDS", "iso_area", "iso_area_shapes", "load_chip", "preset_names"]

DATAFLOWS = ("ws", "os", "is")
UNIT_KINDS = ("int4", "fp4xint4", "int8", "fp8", "fp16")
"""PE units, cheapest first: INT4 MAC, INT4 x log-FP4 shift-add, INT8 MAC, FP8 FMA, FP16 FMA."""
DRAM_KINDS = ("hbm2e", "lpddr4", "ddr4")
ENERGY_TABLES = ("7nm", "45nm")
CHIP_ACCUMULATORS = tuple(f for f in ACCUMULATOR_FORMATS if f != "exact")

UnitKind = Literal[UNIT_KINDS]  # type: ignore[valid-type]
_Finite = Annotated[float, Field(allow_inf_nan=False)]


class ChipInfo(StrictModel):
    """Name and description of the design (free text), and the number of identical ``cores``:
    each has the array, SRAM and scaling unit described below; they share the DRAM channel and
    split each GEMM's output rows (or columns, when there are more) evenly."""

    PATH = "chip"
    name: str = Field("chip", min_length=1, description="the design's name")
    description: str = Field("", description="free text")
    cores: int = Field(1, ge=1, le=1 << 12, description="identical cores sharing the DRAM channel")


class ArrayConfig(StrictModel):
    """The systolic PE array.

    ``macs_per_pe`` is p, the products a PE reduces per cycle in the units that do not set their
    own (on the 4-bit chip its 4-bit modes: 4 for the 4-way INT4 x FP4 inner-product unit of Sun et
    al. 2020, section 6); a PE loads its p stationary values in one cycle. ``overlap_fill_drain``
    lets each fold start while its predecessor drains (off by default). ``fp16_mode`` says how a
    PE with lower-precision units builds its FP16 mode (``separate``: an FP16 FMA of its own;
    ``shared``: on the other units' datapath at no area; `fourbit.hwsim.area` gives the sources).
    ``pe_area_um2`` overrides the PE area that `fourbit.hwsim.area.pe_parts` sums from its units
    (unset: the sum).
    """

    PATH = "array"
    rows: int = Field(32, ge=1, le=1 << 16, description="PE rows")
    cols: int = Field(32, ge=1, le=1 << 16, description="PE columns")
    dataflow: Literal[DATAFLOWS] = Field("ws", description="weight, output or input stationary")  # type: ignore[valid-type]
    clock_hz: float = Field(1.0e9, ge=1e3, le=1e12, description="clock frequency (Hz)")
    macs_per_pe: int = Field(4, ge=1, le=1 << 10, description="products per PE per cycle of the units that do not set their own")
    overlap_fill_drain: bool = Field(False, description="each fold starts while its predecessor drains")
    fp16_mode: Literal["separate", "shared"] = Field(
        "separate", description="the FP16 mode of a PE with lower-precision units: an FP16 FMA of its own, or "
                                "run on the other units' datapath")
    pe_area_um2: float | None = Field(None, gt=0, allow_inf_nan=False,
                                      description="area of one PE (unset: the sum of its parts, fourbit.hwsim.area)")


class UnitConfig(StrictModel):
    """One PE unit: products per PE per cycle (unset: ``array.macs_per_pe``) and the format its
    accumulator adds round to."""

    PATH = "units.<kind>"
    macs_per_pe: int | None = Field(None, ge=1, le=1 << 10, description="products per PE per cycle (unset: array.macs_per_pe)")
    accumulator: Literal[CHIP_ACCUMULATORS] = Field("fp16", description="the format accumulator adds round to")  # type: ignore[valid-type]


class LogPathConfig(StrictModel):
    """The log-domain gradient path: radix r = 2^b and exponent bits e of its FP4 operands; the
    shift-add product is 4 + b*(2^e - 2) bits wide (design.md section 5)."""

    PATH = "log_path"
    radix: IntChoice(LogFormat.RADIXES) = Field(4, description="log base of the FP4 operands")
    exponent_bits: IntChoice(LogFormat.EXPONENT_BITS) = Field(3, description="exponent bits of the FP4 operands")

    @property
    def product_bits(self) -> int:
        b = self.radix.bit_length() - 1
        return 4 + b * (2**self.exponent_bits - 2)

    @property
    def shifter_stages(self) -> int:
        """Stages of the barrel shifter: shift amounts 0..2^e-2 (in units of b bits)."""
        return max(1, math.ceil(math.log2(2**self.exponent_bits - 1)))


class SramConfig(StrictModel):
    """On-chip buffers for ifmap (operand a), filter (operand b) and ofmap (accumulators and
    results). With ``double_buffered`` each buffer is split in two halves, one filled by the DMA
    while the array works on the other."""

    PATH = "sram"
    ifmap_bytes: int = Field(65536, ge=1, le=1 << 40, description="ifmap (operand a) buffer")
    filter_bytes: int = Field(65536, ge=1, le=1 << 40, description="filter (operand b) buffer")
    ofmap_bytes: int = Field(65536, ge=1, le=1 << 40, description="ofmap (accumulator and result) buffer")
    double_buffered: bool = Field(True, description="each buffer split in halves, one filled while the other is used")


class DramConfig(StrictModel):
    """Off-chip memory: one shared channel of ``bandwidth_bytes_per_s`` (``inf``: unlimited) and
    a fixed ``latency_cycles`` per transfer (pipelined: it does not hold the channel); ``kind``
    picks the energy per bit."""

    PATH = "dram"
    bandwidth_bytes_per_s: float = Field(6.4e10, ge=1.0, description="channel bandwidth (inf: unlimited)",
                                         json_schema_extra={"allowed": "a number >= 1 (bytes/s; inf: unlimited)"})
    latency_cycles: int = Field(100, ge=0, le=10**9, description="latency of a transfer")
    kind: Literal[DRAM_KINDS] = Field("lpddr4", description="the energy per bit")  # type: ignore[valid-type]


class DmaConfig(StrictModel):
    """The DMA engine: ``setup_cycles`` per transfer (descriptor handling)."""

    PATH = "dma"
    setup_cycles: int = Field(0, ge=0, le=10**9, description="descriptor handling per transfer")


MAPPING_OBJECTIVES = ("cycles", "dram_bytes")


class MappingConfig(StrictModel):
    """What the mapper (`fourbit.hwsim.mapper`) minimises first when it picks each GEMM's
    mapping: ``cycles`` (simulated time, then DRAM bytes; a larger buffer never costs cycles) or
    ``dram_bytes`` (DRAM bytes, then simulated time; a larger buffer never adds bytes)."""

    PATH = "mapping"
    objective: Literal[MAPPING_OBJECTIVES] = Field("cycles", description="what the mapper minimises first")  # type: ignore[valid-type]


class ScalingConfig(StrictModel):
    """The scaling/vector unit on the array's output path: ``lanes`` elementary ops per cycle
    (``inf``: free), ``area_um2_per_lane``."""

    PATH = "scaling"
    lanes: float = Field(32.0, ge=1, description="elementary ops per cycle (inf: free)",
                         json_schema_extra={"allowed": "a number >= 1 (ops per cycle; inf: free)"})
    area_um2_per_lane: float = Field(500.0, ge=0, allow_inf_nan=False, description="area of one lane")


class EnergyConfig(StrictModel):
    """Energy model: ``table`` (``7nm``: reference/hardware.md section 6, default; ``45nm``:
    Horowitz ISSCC 2014), ``leakage`` (count every block's leakage power from its area or bits), ``gate_zeros`` (a product
    with a zero operand costs no MAC energy), and ``overrides`` of single table entries (pJ; from
    the command line ``--set energy.overrides.mac.int4=0.02``; the event names are those of
    `fourbit.hwsim.energy.energy_table`)."""

    PATH = "energy"
    table: Literal[ENERGY_TABLES] = Field("7nm", description="the energy table")  # type: ignore[valid-type]
    leakage: bool = Field(True, description="count the leakage power of every block, from its area or bits "
                                            "(fourbit.hwsim.energy.leakage_by_block)")
    gate_zeros: bool = Field(False, description="a product with a zero operand costs no MAC energy")
    overrides: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(
        default_factory=dict, description="energy of single events (pJ)")

    @model_validator(mode="after")
    def _known_events(self) -> EnergyConfig:
        if self.overrides:
            from fourbit.hwsim.energy import energy_table

            energy_table(self.table, self.overrides)  # names an unknown event
        return self


class ChipConfig(StrictModel):
    """A complete accelerator: see each section's class for its fields and units.

    A field that another field shadows is an error when set: ``array.macs_per_pe`` is the
    products per PE per cycle of the units that do not set their own, so setting it on a chip
    whose every unit sets its own would change nothing.
    """

    chip: ChipInfo = Field(default_factory=ChipInfo)
    array: ArrayConfig = Field(default_factory=ArrayConfig)
    units: dict[UnitKind, UnitConfig] = Field(
        default_factory=lambda: {"fp16": UnitConfig(macs_per_pe=1, accumulator="fp32")}, min_length=1,
        description="the PE units, by kind",
        json_schema_extra={"allowed": "one or more units: " + ", ".join(f"[units.{k}]" for k in UNIT_KINDS)})
    log_path: LogPathConfig = Field(default_factory=LogPathConfig)
    sram: SramConfig = Field(default_factory=SramConfig)
    dram: DramConfig = Field(default_factory=DramConfig)
    dma: DmaConfig = Field(default_factory=DmaConfig)
    mapping: MappingConfig = Field(default_factory=MappingConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    energy: EnergyConfig = Field(default_factory=EnergyConfig)

    @model_validator(mode="after")
    def _no_shadowed_field(self) -> ChipConfig:
        if "macs_per_pe" in self.array.model_fields_set and self._array_macs_unused():
            own = ", ".join(f"units.{k}.macs_per_pe = {u.macs_per_pe}" for k, u in self.units.items())
            raise ValueError(f"array.macs_per_pe = {self.array.macs_per_pe} has no effect: every unit of this "
                             f"chip sets its own ({own}); set those instead")
        return self

    def _array_macs_unused(self) -> bool:
        return all(u.macs_per_pe is not None for u in self.units.values())

    def unit_macs_per_pe(self, kind: str) -> int:
        """Products per PE per cycle of unit ``kind``."""
        own = self.units[kind].macs_per_pe
        return self.array.macs_per_pe if own is None else own

    @property
    def bytes_per_cycle(self) -> float:
        """DRAM bandwidth in bytes per clock cycle (inf when unlimited)."""
        return self.dram.bandwidth_bytes_per_s / self.array.clock_hz

    # ---- TOML ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Every field (unset unit ``macs_per_pe`` left out, and ``array.macs_per_pe`` where no
        unit uses it), as nested dicts that `from_dict` reads back to an equal chip."""
        out = self.model_dump(exclude_none=True)
        if self._array_macs_unused():
            del out["array"]["macs_per_pe"]
        return out

    def to_toml(self) -> str:
        """The chip as TOML text (``inf`` is written as the TOML float ``inf``)."""
        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> ChipConfig:
        """Build from nested dicts (as read from TOML): strict types, unknown keys are errors.

        Raises ConfigError naming ``source``, the dotted field, the value and what is allowed."""
        return cls.parse(data, source)

    def with_overrides(self, overrides: dict | None) -> ChipConfig:
        """A copy with dotted fields replaced, e.g. ``{"array.rows": 64, "units.fp16.macs_per_pe": 2}``.

        Values must have the field's type (`fourbit.traces.config.parse_text` converts command-line
        text first). Raises ConfigError naming the field."""
        if not overrides:
            return self
        data = self.model_dump(exclude_unset=True)
        for dotted, value in overrides.items():
            set_dotted(data, ChipConfig, str(dotted), value)
        units = data.get("units") or {k: u.model_dump(exclude_unset=True) for k, u in self.units.items()}
        if "array.macs_per_pe" not in overrides and all(u.get("macs_per_pe") is not None for u in units.values()):
            data.get("array", {}).pop("macs_per_pe", None)  # the overrides shadow the base chip's value
        return ChipConfig.parse(data, "overrides")


def preset_names() -> list[str]:
    """Names of the presets shipped in ``hwsim/configs``."""
    return sorted(p.name[:-5] for p in resources.files("fourbit.hwsim").joinpath("configs").iterdir()
                  if p.name.endswith(".toml"))


def load_chip(preset_or_path: str | Path, overrides: dict | None = None) -> ChipConfig:
    """Load a chip: a preset name (see `preset_names`) or a TOML file path, then ``overrides``.

    Raises
    ------
    ConfigError
        Unknown preset (the message lists them), unreadable TOML, unknown or invalid fields, a
        file without ``[chip] name`` or without a ``[units.<format>]`` table (the defaults alone
        would make an FP16-only chip, which a partial file never meant).
    """
    if overrides is not None and not isinstance(overrides, dict):
        raise ConfigError(f"chip overrides are a mapping of dotted fields to values, e.g. {{'array.rows': 64}}; "
                          f"got {overrides!r}")
    name = str(preset_or_path)
    path = Path(name)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"chip file {path} is not a file" if path.exists() else f"chip file {path} does not exist")
        try:
            text, source = path.read_text(encoding="utf-8"), str(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"chip file {path}: unreadable ({exc})") from None
    else:
        res = resources.files("fourbit.hwsim").joinpath("configs", f"{name}.toml")
        if not res.is_file():
            raise ConfigError(f"unknown chip preset {name!r}; presets: {', '.join(preset_names())} (or a .toml path)")
        text, source = res.read_text(encoding="utf-8"), f"preset {name}"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from exc
    chip = ChipConfig.from_dict(data, source)
    missing = [part for part, there in (("[chip] name", isinstance(data.get("chip"), dict) and "name" in data["chip"]),
                                        ("[units.<format>]", bool(data.get("units")))) if not there]
    if missing:  # the defaults alone make an FP16-only chip named "chip": never what a partial file meant
        raise ConfigError(f"{source}: a chip file names the chip and its units; it has no {' and no '.join(missing)} "
                          f"(start from a preset: fourbit chip fourbit > {Path(name).name}, then edit it)")
    return chip.with_overrides(overrides)


MAX_ASPECT = 4
"""Largest rows : cols (or cols : rows) of an iso-area array shape (`iso_area_shapes`)."""


def _iso_area_pes(chip: ChipConfig, reference: ChipConfig) -> int:
    """PEs of ``chip`` in the PE-array area of ``reference`` (PE areas from
    `fourbit.hwsim.area.pe_area_um2`)."""
    from fourbit.hwsim.area import pe_area_um2

    area = pe_area_um2(reference) * reference.array.rows * reference.array.cols
    n = int(area // pe_area_um2(chip))
    if n < 1:
        raise ConfigError(f"iso-area: one PE of {chip.chip.name!r} is larger than the whole array of {reference.chip.name!r}")
    return n


def iso_area(chip: ChipConfig, reference: ChipConfig, shape: tuple[int, int] | None = None) -> ChipConfig:
    """``chip`` with the PE-array area of ``reference`` (design.md section 5): floor(area / PE area)
    PEs of ``chip``, arranged as ``shape`` (rows, cols; one of `iso_area_shapes`) or, by default,
    as square as possible (rows = floor(sqrt(n)), cols = floor(n / rows)); everything else of
    ``chip`` unchanged.

    Raises ConfigError when one PE is larger than the area, or ``shape`` does not fit it."""
    n = _iso_area_pes(chip, reference)
    if shape is None:
        rows = math.isqrt(n)
        shape = (rows, n // rows)
    elif shape[0] * shape[1] > n:
        raise ConfigError(f"iso-area: {shape[0]}x{shape[1]} PEs of {chip.chip.name!r} exceed the PE-array area of "
                          f"{reference.chip.name!r} ({n} PEs)")
    return chip.with_overrides({"array.rows": shape[0], "array.cols": shape[1],
                                "chip.name": f"{chip.chip.name}_iso_area_{reference.chip.name}"})


def iso_area_shapes(chip: ChipConfig, reference: ChipConfig, max_aspect: int = MAX_ASPECT) -> list[tuple[int, int]]:
    """The array shapes (rows, cols) of ``chip`` that fit the PE-array area of ``reference`` with
    an aspect ratio of at most ``max_aspect``, in increasing rows, left out any shape that another
    of them contains (no fewer rows and no fewer columns: all its PEs and more). Raises
    ConfigError as `iso_area`."""
    n = _iso_area_pes(chip, reference)
    shapes = []
    for rows in range(1, n + 1):
        cols = min(n // rows, max_aspect * rows)
        if cols >= 1 and rows <= max_aspect * cols:
            shapes.append((rows, cols))
    return [(r, c) for r, c in shapes if not any(r2 >= r and c2 >= c and (r2, c2) != (r, c) for r2, c2 in shapes)]

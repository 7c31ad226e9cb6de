"""`ChipConfig`: the accelerator being modelled, typed, frozen and closed.

A chip is read from TOML (``load_chip``: a preset name from ``hwsim/configs/`` or a path) and
written back (`ChipConfig.to_toml`); dotted overrides (``{"array.rows": 64}``, the CLI's
``--set array.rows=64``) replace single fields. Every field carries its unit in its name; an
unknown key, a wrong type or a value out of range is a `ConfigError` naming the dotted field and
the allowed range (style.md rules 7, 8, 10).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import tomli_w

from fourbit.traces.errors import ConfigError
from fourbit.traces.formats import ACCUMULATOR_FORMATS, LogFormat

__all__ = ["ChipConfig", "UNIT_KINDS", "iso_area", "load_chip", "preset_names"]

DATAFLOWS = ("ws", "os", "is")
UNIT_KINDS = ("int4", "fp4xint4", "int8", "fp8", "fp16")
"""PE units, cheapest first: INT4 MAC, INT4 x log-FP4 shift-add, INT8 MAC, FP8 FMA, FP16 FMA."""
DRAM_KINDS = ("hbm2e", "lpddr4", "ddr4")
ENERGY_TABLES = ("7nm", "45nm")


def _range(path: str, value, ok: bool, allowed: str) -> None:
    if not ok:
        shown = value.item() if hasattr(value, "item") else value
        raise ConfigError(f"{path} = {shown!r} is out of range: allowed {allowed}")


class _Section:
    """Type checks of a config section's fields (ints are not bools; floats accept ints)."""

    PATH: typing.ClassVar[str] = "config"

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, typ = getattr(self, f.name), hints[f.name]
            ok = {
                int: isinstance(value, int) and not isinstance(value, bool),
                float: isinstance(value, int | float) and not isinstance(value, bool),
                bool: isinstance(value, bool),
                str: isinstance(value, str),
                dict: isinstance(value, dict),
            }.get(typing.get_origin(typ) or typ, True)
            if not ok:
                raise ConfigError(f"{self.PATH}.{f.name} = {value!r}: expected {getattr(typ, '__name__', typ)}")
            if typ is float:
                object.__setattr__(self, f.name, float(value))


@dataclass(frozen=True)
class ChipInfo(_Section):
    """Name and description of the design (free text), and the number of identical ``cores``:
    each has the array, SRAM and scaling unit described below; they share the DRAM channel and
    split each GEMM's output rows (or columns, when there are more) evenly."""

    PATH = "chip"
    name: str = "chip"
    description: str = ""
    cores: int = 1

    def check(self, p: str) -> None:
        _range(f"{p}.cores", self.cores, self.cores >= 1, "an integer >= 1")


@dataclass(frozen=True)
class ArrayConfig(_Section):
    """The systolic PE array.

    ``macs_per_pe`` is p, the products a PE reduces per cycle in its 4-bit modes (4 for the
    4-way INT4 x FP4 inner-product unit of Sun et al. 2020, section 6); a PE loads its p
    stationary values in one cycle. ``overlap_fill_drain`` lets each fold start while its
    predecessor drains (off by default). ``pe_area_um2`` is the area of one PE with all its units
    (the source of each preset's value is in its TOML file).
    """

    PATH = "array"
    rows: int = 32
    cols: int = 32
    dataflow: str = "ws"
    clock_hz: float = 1.0e9
    macs_per_pe: int = 4
    overlap_fill_drain: bool = False
    pe_area_um2: float = 485.0

    def check(self, p: str) -> None:
        _range(f"{p}.rows", self.rows, self.rows >= 1, "an integer >= 1")
        _range(f"{p}.cols", self.cols, self.cols >= 1, "an integer >= 1")
        _range(f"{p}.dataflow", self.dataflow, self.dataflow in DATAFLOWS, f"one of {DATAFLOWS}")
        _range(f"{p}.clock_hz", self.clock_hz, 1e3 <= self.clock_hz <= 1e12, "1e3 to 1e12 (Hz)")
        _range(f"{p}.macs_per_pe", self.macs_per_pe, self.macs_per_pe >= 1, "an integer >= 1")
        _range(f"{p}.pe_area_um2", self.pe_area_um2, 0 < self.pe_area_um2 < math.inf, "a finite number > 0 (um^2)")


@dataclass(frozen=True)
class UnitConfig(_Section):
    """One PE unit: products per PE per cycle (0: ``array.macs_per_pe``) and the format its
    accumulator adds round to."""

    PATH = "units.<kind>"
    macs_per_pe: int = 0
    accumulator: str = "fp16"

    def check(self, p: str) -> None:
        _range(f"{p}.macs_per_pe", self.macs_per_pe, self.macs_per_pe >= 0, ">= 0 (0: array.macs_per_pe)")
        _range(f"{p}.accumulator", self.accumulator,
               self.accumulator in ACCUMULATOR_FORMATS and self.accumulator != "exact",
               f"one of {[f for f in ACCUMULATOR_FORMATS if f != 'exact']}")


@dataclass(frozen=True)
class LogPathConfig(_Section):
    """The log-domain gradient path: radix r = 2^b and exponent bits e of its FP4 operands; the
    shift-add product is 4 + b*(2^e - 2) bits wide (design.md section 5)."""

    PATH = "log_path"
    radix: int = 4
    exponent_bits: int = 3

    def check(self, p: str) -> None:
        _range(f"{p}.radix", self.radix, self.radix in LogFormat.RADIXES, f"one of {LogFormat.RADIXES}")
        _range(f"{p}.exponent_bits", self.exponent_bits, self.exponent_bits in LogFormat.EXPONENT_BITS,
               f"one of {LogFormat.EXPONENT_BITS}")

    @property
    def product_bits(self) -> int:
        b = self.radix.bit_length() - 1
        return 4 + b * (2**self.exponent_bits - 2)

    @property
    def shifter_stages(self) -> int:
        """Stages of the barrel shifter: shift amounts 0..2^e-2 (in units of b bits)."""
        return max(1, math.ceil(math.log2(2**self.exponent_bits - 1)))


@dataclass(frozen=True)
class SramConfig(_Section):
    """On-chip buffers for ifmap (operand a), filter (operand b) and ofmap (accumulators and
    results). With ``double_buffered`` each buffer is split in two halves, one filled by the DMA
    while the array works on the other."""

    PATH = "sram"
    ifmap_bytes: int = 65536
    filter_bytes: int = 65536
    ofmap_bytes: int = 65536
    double_buffered: bool = True

    def check(self, p: str) -> None:
        for name in ("ifmap_bytes", "filter_bytes", "ofmap_bytes"):
            v = getattr(self, name)
            _range(f"{p}.{name}", v, v >= 1, "an integer >= 1")


@dataclass(frozen=True)
class DramConfig(_Section):
    """Off-chip memory: one shared channel of ``bandwidth_bytes_per_s`` (``inf``: unlimited) and
    a fixed ``latency_cycles`` per transfer (pipelined: it does not hold the channel); ``kind``
    picks the energy per bit."""

    PATH = "dram"
    bandwidth_bytes_per_s: float = 6.4e10
    latency_cycles: int = 100
    kind: str = "lpddr4"

    def check(self, p: str) -> None:
        bw = self.bandwidth_bytes_per_s
        _range(f"{p}.bandwidth_bytes_per_s", bw, bw >= 1.0, ">= 1 (bytes/s; inf: unlimited)")
        _range(f"{p}.latency_cycles", self.latency_cycles, self.latency_cycles >= 0, "an integer >= 0")
        _range(f"{p}.kind", self.kind, self.kind in DRAM_KINDS, f"one of {DRAM_KINDS}")


@dataclass(frozen=True)
class DmaConfig(_Section):
    """The DMA engine: ``setup_cycles`` per transfer (descriptor handling)."""

    PATH = "dma"
    setup_cycles: int = 0

    def check(self, p: str) -> None:
        _range(f"{p}.setup_cycles", self.setup_cycles, self.setup_cycles >= 0, "an integer >= 0")


@dataclass(frozen=True)
class ScalingConfig(_Section):
    """The scaling/vector unit on the array's output path: ``lanes`` elementary ops per cycle
    (``inf``: free), ``area_um2_per_lane``."""

    PATH = "scaling"
    lanes: float = 32.0
    area_um2_per_lane: float = 500.0

    def check(self, p: str) -> None:
        _range(f"{p}.lanes", self.lanes, self.lanes >= 1, ">= 1 (ops per cycle; inf: free)")
        _range(f"{p}.area_um2_per_lane", self.area_um2_per_lane, 0 <= self.area_um2_per_lane < math.inf,
               "a finite number >= 0 (um^2)")


@dataclass(frozen=True)
class EnergyConfig(_Section):
    """Energy model: ``table`` (``7nm``: reference/hardware.md section 6, default; ``45nm``:
    Horowitz ISSCC 2014), ``leakage_fraction`` of peak dynamic power, ``gate_zeros`` (a product
    with a zero operand costs no MAC energy), and ``overrides`` of single table entries (pJ; from
    the command line ``--set energy.overrides.mac.int4=0.02``)."""

    PATH = "energy"
    table: str = "7nm"
    leakage_fraction: float = 0.1
    gate_zeros: bool = False
    overrides: dict = field(default_factory=dict)

    def check(self, p: str) -> None:
        _range(f"{p}.table", self.table, self.table in ENERGY_TABLES, f"one of {ENERGY_TABLES}")
        _range(f"{p}.leakage_fraction", self.leakage_fraction, 0 <= self.leakage_fraction <= 1, "in [0, 1]")
        for k, v in self.overrides.items():
            if isinstance(v, str):
                try:
                    v = float(v)
                except ValueError:
                    pass
                self.overrides[k] = v
            _range(f"{p}.overrides.{k}", v, isinstance(v, int | float) and not isinstance(v, bool)
                   and 0 <= v < math.inf, "a finite number >= 0 (pJ)")


@dataclass(frozen=True)
class ChipConfig:
    """A complete accelerator: see each section's class for its fields and units."""

    chip: ChipInfo = field(default_factory=ChipInfo)
    array: ArrayConfig = field(default_factory=ArrayConfig)
    units: dict = field(default_factory=lambda: {"fp16": UnitConfig(1, "fp32")})
    log_path: LogPathConfig = field(default_factory=LogPathConfig)
    sram: SramConfig = field(default_factory=SramConfig)
    dram: DramConfig = field(default_factory=DramConfig)
    dma: DmaConfig = field(default_factory=DmaConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    energy: EnergyConfig = field(default_factory=EnergyConfig)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name != "units":
                getattr(self, f.name).check(f.name)
        if not self.units:
            raise ConfigError("units: a chip needs at least one PE unit, allowed kinds " + str(UNIT_KINDS))
        for kind, unit in self.units.items():
            _range("units", kind, kind in UNIT_KINDS, f"unit kinds {UNIT_KINDS}")
            unit.check(f"units.{kind}")

    def unit_macs_per_pe(self, kind: str) -> int:
        """Products per PE per cycle of unit ``kind``."""
        return self.units[kind].macs_per_pe or self.array.macs_per_pe

    @property
    def bytes_per_cycle(self) -> float:
        """DRAM bandwidth in bytes per clock cycle (inf when unlimited)."""
        return self.dram.bandwidth_bytes_per_s / self.array.clock_hz

    # ---- TOML ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "units":
                out["units"] = {k: dataclasses.asdict(u) for k, u in v.items()}
            else:
                out[f.name] = dataclasses.asdict(v)
        return out

    def to_toml(self) -> str:
        """The chip as TOML text (``inf`` is written as the TOML float ``inf``)."""
        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> ChipConfig:
        """Build from nested dicts (as read from TOML); unknown keys are errors."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a table of sections")
        sections = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for name, value in data.items():
            if name not in sections:
                raise ConfigError(f"{source}: unknown section {name!r}; sections: {', '.join(sections)}")
            if name == "units":
                if not isinstance(value, dict):
                    raise ConfigError(f"{source}: units must be a table of unit tables")
                kwargs["units"] = {k: _build(UnitConfig, v, f"units.{k}") for k, v in value.items()}
            else:
                kwargs[name] = _build(_section_type(name), value, name)
        return cls(**kwargs)

    def with_overrides(self, overrides: dict | None) -> ChipConfig:
        """A copy with dotted fields replaced, e.g. ``{"array.rows": 64, "units.fp16.macs_per_pe": 2}``.

        String values (from the command line) are converted to the field's type.
        """
        if not overrides:
            return self
        data = self.to_dict()
        for dotted, value in overrides.items():
            if str(dotted).startswith("energy.overrides."):  # event names contain dots
                data.setdefault("energy", {}).setdefault("overrides", {})[str(dotted)[17:]] = value
                continue
            *parents, leaf = str(dotted).split(".")
            node = data
            for part in parents:  # unknown names are reported by from_dict, with the fields
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"unknown field {dotted!r}: {part!r} is not a table")
            node[leaf] = value
        return ChipConfig.from_dict(data, "overrides")


def _section_type(name: str) -> type:
    hints = typing.get_type_hints(ChipConfig)
    return hints[name]


def _convert(value, typ, path: str):
    """Check (and for strings from the command line, convert) a value to a field type."""
    origin = typing.get_origin(typ)
    if typ is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                try:
                    f = float(value)
                except ValueError:
                    f = math.nan
                if math.isfinite(f) and f.is_integer():
                    return int(f)
        elif isinstance(value, int) and not isinstance(value, bool):
            return value
        elif isinstance(value, float) and value.is_integer():
            return int(value)
    elif typ is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        elif isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif typ is str:
        if isinstance(value, str):
            return value
    elif typ is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
    raise ConfigError(f"{path} = {value!r}: expected {getattr(typ, '__name__', typ)}")


def _build(cls: type, data, path: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown field {path}.{key}; fields of [{path}]: {', '.join(names)}")
        kwargs[key] = _convert(value, hints[key], f"{path}.{key}")
    return cls(**kwargs)


def preset_names() -> list[str]:
    """Names of the presets shipped in ``hwsim/configs``."""
    return sorted(p.name[:-5] for p in resources.files("fourbit.hwsim").joinpath("configs").iterdir()
                  if p.name.endswith(".toml"))


def load_chip(preset_or_path: str | Path, overrides: dict | None = None) -> ChipConfig:
    """Load a chip: a preset name (see `preset_names`) or a TOML file path, then ``overrides``.

    Raises
    ------
    ConfigError
        Unknown preset (the message lists them), unreadable TOML, unknown or invalid fields.
    """
    name = str(preset_or_path)
    path = Path(name)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"chip file {path} is not a file" if path.exists() else f"chip file {path} does not exist")
        text, source = path.read_text(encoding="utf-8"), str(path)
    else:
        res = resources.files("fourbit.hwsim").joinpath("configs", f"{name}.toml")
        if not res.is_file():
            raise ConfigError(f"unknown chip preset {name!r}; presets: {', '.join(preset_names())} (or a .toml path)")
        text, source = res.read_text(encoding="utf-8"), f"preset {name}"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from exc
    return ChipConfig.from_dict(data, source).with_overrides(overrides)


def iso_area(chip: ChipConfig, reference: ChipConfig) -> ChipConfig:
    """``chip`` with the PE-array area of ``reference`` (design.md section 5): floor(area / PE area)
    PEs of ``chip``, arranged as square as possible (rows = floor(sqrt(n)), cols = floor(n / rows));
    everything else of ``chip`` unchanged. The PE areas are the effective ones of
    `fourbit.hwsim.energy.chip_area` (the shift-add share scales with radix)."""
    from fourbit.hwsim.energy import chip_area

    def pe_area(c: ChipConfig) -> float:
        return float(chip_area(c).area_mm2[0]) * 1e6 / (c.array.rows * c.array.cols * c.chip.cores)

    area = pe_area(reference) * reference.array.rows * reference.array.cols
    n = int(area // pe_area(chip))
    if n < 1:
        raise ConfigError(f"iso-area: one PE of {chip.chip.name!r} is larger than the whole array of {reference.chip.name!r}")
    rows = math.isqrt(n)
    return chip.with_overrides({"array.rows": rows, "array.cols": n // rows,
                                "chip.name": f"{chip.chip.name}_iso_area_{reference.chip.name}"})

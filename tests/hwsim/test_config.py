"""Strict chip configs: wrong types, unknown keys, shadowed fields and values out of range are
one-line errors naming the dotted field, the value and what is allowed; TOML round trips."""

from __future__ import annotations

import re

import pytest

from fourbit.hwsim.config import ArrayConfig, ChipConfig, load_chip, preset_names
from fourbit.traces.errors import ConfigError


def _toml(tmp_path, text: str):
    path = tmp_path / "chip.toml"
    path.write_text(load_chip("fourbit").to_toml() + text if text.startswith("\n") else text)
    return path


@pytest.mark.parametrize("text, message", [
    ('[array]\nrows = "32"\n', r"chip.toml: array.rows = '32' has the wrong type: allowed an integer >= 1 and <= 65536$"),
    ("[array]\nrows = 32.0\n", r"chip.toml: array.rows = 32.0 has the wrong type: allowed an integer >= 1 and <= 65536$"),
    ('[energy]\ngate_zeros = "yes"\n', r"energy.gate_zeros = 'yes' has the wrong type: allowed true or false$"),
    ("[arrey]\nrows = 3\n", r"chip.toml: unknown field arrey; fields of \[the top level\]: chip, array, units"),
    ("[array]\nrowz = 3\n", r"chip.toml: unknown field array.rowz; fields of \[array\]: rows, cols, dataflow"),
    ("[units.int9]\naccumulator = 'fp16'\n", r"units: unknown key 'int9'; allowed one of 'int4', 'fp4xint4'"),
    ("[array]\ncols = 0\n", r"chip.toml: array.cols = 0 is out of range: allowed an integer >= 1 and <= 65536$"),
    ('[energy.overrides]\n"mac.int4" = -1\n', r"energy.overrides.mac.int4 = -1 is out of range: allowed a finite "
                                                r"number >= 0$"),
    ("[energy]\nleakage_fraction = 0.1\n", r"unknown field energy.leakage_fraction; fields of \[energy\]: table, "
                                           r"leakage, gate_zeros"),
    ("[array]\nmacs_per_pe = 8\n[units.int4]\nmacs_per_pe = 4\n",
     r"chip.toml: array.macs_per_pe = 8 has no effect: every unit of this chip sets its own \(units.int4.macs_per_pe "
     r"= 4\); set those instead$"),
])
def test_a_bad_toml_file_is_one_line_naming_field_value_and_range(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_chip(_toml(tmp_path, text))
    assert "\n" not in str(info.value)


def test_a_shadowed_field_is_an_error_when_set_not_when_it_is_used():
    # fourbit's int4 and fp4xint4 units take array.macs_per_pe: setting it changes them
    chip = load_chip("fourbit", {"array.macs_per_pe": 8})
    assert [chip.unit_macs_per_pe(k) for k in ("int4", "fp4xint4", "fp16")] == [8, 8, 1]
    own = {"units.int4.macs_per_pe": 4, "units.fp4xint4.macs_per_pe": 4}
    with pytest.raises(ConfigError, match=r"^overrides: array.macs_per_pe = 8 has no effect: every unit of this chip "
                                          r"sets its own \(units.int4.macs_per_pe = 4, units.fp4xint4.macs_per_pe = 4, "
                                          r"units.fp16.macs_per_pe = 1\); set those instead$"):
        load_chip("fourbit", {**own, "array.macs_per_pe": 8})
    chip = load_chip("fourbit", own)  # the default array value stays unset: no error, and no effect
    assert "macs_per_pe" not in chip.to_dict()["array"]
    assert load_chip("fourbit", own).with_overrides({"array.rows": 8}).array.rows == 8


def test_overrides_in_python_must_have_the_field_type():
    """The API takes values; text from the command line is parsed by `fourbit.traces.config.parse_text`."""
    with pytest.raises(ConfigError, match=r"^overrides: array.rows = '32' has the wrong type"):
        load_chip("fourbit", {"array.rows": "32"})
    with pytest.raises(ConfigError, match=r"^overrides: energy.overrides.mac.int4 = -1.0 is out of range: allowed a "
                                          r"finite number >= 0$"):
        load_chip("fourbit", {"energy.overrides.mac.int4": -1.0})
    with pytest.raises(ConfigError, match=r"^overrides: energy.overrides.bogus: unknown event; events: mac.int4"):
        load_chip("fourbit", {"energy.overrides.bogus": 1.0})
    with pytest.raises(ConfigError, match=r"^unknown field array.rowz; fields of \[array\]: rows"):
        load_chip("fourbit", {"array.rowz": 3})
    with pytest.raises(ConfigError, match=r"^overrides: scaling.lanes = 0.5 is out of range: allowed a number >= 1 "
                                          r"\(ops per cycle; inf: free\)$"):
        load_chip("fourbit", {"scaling.lanes": 0.5})
    assert load_chip("fourbit", {"dram.bandwidth_bytes_per_s": float("inf")}).bytes_per_cycle == float("inf")


def test_sections_built_alone_name_their_dotted_field():
    with pytest.raises(ConfigError, match=r"^array.rows = 2.5 has the wrong type: allowed an integer >= 1 and <= 65536$"):
        ArrayConfig(rows=2.5)
    with pytest.raises(ConfigError, match=r"^array.rows = 0 is out of range"):
        ChipConfig(array={"rows": 0})
    with pytest.raises(ConfigError, match=r"^units = \{\} is out of range: allowed one or more units: \[units.int4\]"):
        ChipConfig(units={})


def test_chip_toml_round_trip(tmp_path):
    for name in preset_names():
        chip = load_chip(name, {"array.rows": 48, "dram.bandwidth_bytes_per_s": float("inf"),
                                "energy.overrides.mac.int4": 0.01})
        path = tmp_path / f"{name}.toml"
        path.write_text(chip.to_toml())
        assert load_chip(str(path)) == chip


@pytest.mark.parametrize("text, missing", [("", "[chip] name and no [units.<format>]"),
                                           ("[array]\nrows = 16\n", "[chip] name and no [units.<format>]"),
                                           ('[chip]\nname = "x"\n', "[units.<format>]")])
def test_a_partial_chip_file_is_refused_not_completed_by_defaults(tmp_path, text, missing):
    """The defaults alone make an FP16-only chip named "chip": a file that does not name its chip
    and its units is refused, with the way to start one."""
    path = tmp_path / "partial.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(f"partial.toml: a chip file names the chip and its units; it has "
                                                    f"no {missing} (start from a preset: fourbit chip fourbit > "
                                                    "partial.toml, then edit it)")):
        load_chip(path)

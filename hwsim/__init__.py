"""The accelerator, cycle-approximate and discrete-event (simpy).

Public API: `hwsim.simulate(trace, chip) -> SimReport`, `hwsim.load_chip(preset_or_toml,
overrides=None) -> ChipConfig`.
"""

from hwsim.config import ChipConfig, load_chip, preset_names
from hwsim.engine import simulate
from hwsim.report import SimReport

__all__ = ["ChipConfig", "SimReport", "load_chip", "preset_names", "simulate"]

"""The accelerator, cycle-approximate and discrete-event (simpy).

Modules: `fourbit.hwsim.config` (`ChipConfig`, ``load_chip``, the presets in ``configs/``),
`fourbit.hwsim.engine` (``simulate(trace, chip) -> SimReport``), `fourbit.hwsim.mapping`,
`fourbit.hwsim.units`, `fourbit.hwsim.blocks` (one module per hardware block),
`fourbit.hwsim.energy`, `fourbit.hwsim.report`, `fourbit.hwsim.anchors`. The public API is
`fourbit`'s.
"""

"""fourbit: a bit-exact emulator of 4-bit DNN training and a discrete-event simulator of the
accelerator that would run it.

The subpackages (each a folder at the top level of the repository, installed under this name):

``fourbit.traces``    number formats, the versioned trace format, importers (the shared base)
``fourbit.models``    the bit-exact training emulator: kernels, quantizers, recipes, layers, zoo
``fourbit.hwsim``     the simpy model of the accelerator: chips, mapping, blocks, energy, report
``fourbit.analysis``  the ``fourbit`` command line, sweeps, comparisons, tables, plots

The public API is offered here and loaded on first use (PEP 562), so ``import fourbit`` loads no
numpy, numba or pandas:

``train(model, dataset, recipe, ...) -> Run``          `fourbit.models.trainer.train`
``read(path) -> Trace``                                 `fourbit.traces.io.read`
``simulate(trace_or_run_dir, chip) -> SimReport``       `fourbit.hwsim.engine.simulate`
``load_chip(preset_or_toml, overrides) -> ChipConfig``  `fourbit.hwsim.config.load_chip`
``sweep(spec) -> DataFrame``                            `fourbit.analysis.sweep.sweep`
``compare(source, ...) -> DataFrame``                   `fourbit.analysis.compare.compare`
``explain(trace, chip, baseline_trace, baseline)``      `fourbit.analysis.explain.explain`
``main_job(job) -> DataFrame``                          `fourbit.analysis.run.main_job`
"""

import os as _os

# The one import-time side effect of fourbit, before any subpackage (and so before Numba's
# OpenMP runtime) loads: OpenMP workers sleep after a parallel kernel instead of spinning, which
# would take the cores from the BLAS threads of the next matmul (measured: a float32 matmul took
# 1.8 ms alone and 4.8 ms right after a Numba kernel). OpenBLAS's own workers are left spinning:
# a training step makes many small BLAS calls, and a lenet5 int4 step took 40 ms instead of 30 ms
# with OPENBLAS_THREAD_TIMEOUT=4 (`fourbit.analysis.bench` times kernels so that the spinning
# does not fall on them).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_API = {
    "train": ("fourbit.models.trainer", "train"),
    "TrainConfig": ("fourbit.models.trainer", "TrainConfig"),
    "Run": ("fourbit.models.trainer", "Run"),
    "get_recipe": ("fourbit.models.recipes", "get_recipe"),
    "read": ("fourbit.traces.io", "read"),
    "Trace": ("fourbit.traces.io", "Trace"),
    "import_topology": ("fourbit.traces.scalesim", "import_topology"),
    "simulate": ("fourbit.hwsim.engine", "simulate"),
    "SimReport": ("fourbit.hwsim.report", "SimReport"),
    "load_chip": ("fourbit.hwsim.config", "load_chip"),
    "ChipConfig": ("fourbit.hwsim.config", "ChipConfig"),
    "sweep": ("fourbit.analysis.sweep", "sweep"),
    "SweepSpec": ("fourbit.analysis.sweep", "SweepSpec"),
    "load_spec": ("fourbit.analysis.sweep", "load_spec"),
    "Source": ("fourbit.analysis.workloads", "Source"),
    "compare": ("fourbit.analysis.compare", "compare"),
    "explain": ("fourbit.analysis.explain", "explain"),
    "Explanation": ("fourbit.analysis.explain", "Explanation"),
    "ablation": ("fourbit.analysis.ablation", "ablation"),
    "Ablation": ("fourbit.analysis.ablation", "Ablation"),
    "main_job": ("fourbit.analysis.run", "main_job"),
    "MainJob": ("fourbit.analysis.run", "MainJob"),
    "FourbitError": ("fourbit.traces.errors", "FourbitError"),
    "ConfigError": ("fourbit.traces.errors", "ConfigError"),
}

__all__ = sorted(_API)


def __getattr__(name: str):
    """Load a public name of `_API` on first use (PEP 562)."""
    try:
        module, attr = _API[name]
    except KeyError:
        raise AttributeError(f"module 'fourbit' has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])

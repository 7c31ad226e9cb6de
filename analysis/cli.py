"""The ``fourbit`` command line: 4-bit training emulation and accelerator simulation.

Each verb parses its arguments into the objects the Python API takes and calls the same function;
the options of a job are derived from its configuration model (`fourbit.analysis.options`), so
each default and help text lives once, in the model:

``fourbit run``       `fourbit.main_job` (`MainJob`)
``fourbit train``     `fourbit.train` (`TrainConfig`)
``fourbit simulate``  `fourbit.simulate`
``fourbit import-scalesim``  `fourbit.import_topology`
``fourbit chip``      `fourbit.load_chip` (prints the resolved chip as TOML)
``fourbit ablation``  `fourbit.ablation` (`Ablation`)
``fourbit sweep``     `fourbit.sweep` (`SweepSpec`)
``fourbit compare``   `fourbit.compare` (`Comparison`)
``fourbit explain``   `fourbit.explain` (`fourbit.analysis.explain.explain_job`)
``fourbit report``    `fourbit.analysis.report.write_report`
``fourbit bench``     `fourbit.analysis.bench.run_benchmarks`

Only the chosen verb's options are built (building them imports the verb's modules).

Bad input (an unknown name, a value out of range, an unwritable directory) prints one line,
``fourbit: error: ...``, and exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from fourbit.analysis.options import LazyChoices, add_options, build, given

__all__ = ["main"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _overrides(pairs: list[str] | None) -> dict:
    """``--set FIELD=VALUE`` pairs, each value parsed by its chip field's type."""
    from fourbit.hwsim.config import ChipConfig
    from fourbit.traces.config import allowed_text, field_info, parse_text
    from fourbit.traces.errors import ConfigError

    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise argparse.ArgumentTypeError(f"--set takes FIELD=VALUE, got {pair!r}")
        key, value = (part.strip() for part in pair.split("=", 1))
        if not key:
            raise argparse.ArgumentTypeError(f"--set takes FIELD=VALUE with a field name, got {pair!r}")
        if key in out:
            raise argparse.ArgumentTypeError(f"--set {key} is given twice; give each field once")
        try:  # worded like the checks of `ChipConfig.with_overrides`
            info, annotation = field_info(ChipConfig, key)
            out[key] = parse_text(annotation, value, key)
        except ConfigError as exc:
            allowed = "" if "allowed" in str(exc) or "unknown field" in str(exc) else \
                f"; allowed {allowed_text(info, annotation)}"
            raise ConfigError(f"overrides: {exc}{allowed}") from None
    return out


def _print_table(df) -> None:
    """A result table as a person reads it: headers and scaled units of `fourbit.analysis.display`
    (the CSV keeps the raw numbers)."""
    import pandas as pd

    from fourbit.analysis.display import readable_frame

    with pd.option_context("display.width", 250, "display.max_columns", 60):
        print(readable_frame(df).to_string(index=False))


# ---- the valid names, loaded only for help or a given value -------------------------------------
def _models() -> list[str]:
    from fourbit.models.zoo import MODELS

    return list(MODELS)


def _datasets() -> list[str]:
    from fourbit.models.data import DATASETS

    return list(DATASETS)


def _recipes() -> list[str]:
    from fourbit.models.recipes import RECIPES

    return list(RECIPES)


def _presets() -> list[str]:
    from fourbit.hwsim.config import preset_names

    return preset_names()


def _recipe_spec(text: str) -> bool:
    """A recipe name with parameters (``int4:radix=2``): its parameters are checked later."""
    return ":" in text and text.partition(":")[0].strip() in _recipes()


def _chip_file(text: str) -> bool:
    return text.endswith(".toml") or os.path.isfile(text)


RECIPE_CHOICES = LazyChoices(_recipes, _recipe_spec)
CHIP_CHOICES = LazyChoices(_presets, _chip_file)
_CHOICES = {"model": LazyChoices(_models), "dataset": LazyChoices(_datasets), "recipe": RECIPE_CHOICES,
            "baseline": RECIPE_CHOICES, "chip": CHIP_CHOICES, "baseline_chip": CHIP_CHOICES}
_NOTES = {"recipe": "parameters may follow a colon: int4:radix=2,tpr=off", "baseline": "a recipe spec",
          "chip": "or a TOML path", "baseline_chip": "or a TOML path",
          "chips": "presets with a recipe: fourbit, fp16, int8, hfp8"}


# ---- verbs ----------------------------------------------------------------------------------------
def _cmd_run(args: argparse.Namespace) -> int:
    from fourbit.analysis.run import MainJob, main_job

    job = build(MainJob(), given(args))
    table = main_job(job, progress=not args.quiet, overwrite=args.overwrite)
    _print_table(table)
    print(f"\nwrote {job.out}/main_job.csv, {job.out}/main_job.png and the run directories in {job.out}/runs")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from fourbit.models.trainer import TrainConfig, train

    run = train(args.model, args.dataset, args.recipe, config=build(TrainConfig(), given(args, "train.")),
                data_dir=args.data_dir, out=args.out, progress=not args.quiet, resume=args.resume,
                overwrite=args.overwrite, checkpoint_every=args.checkpoint_every)
    print(f"test accuracy: {100 * run.final['test_accuracy']:.2f} %")
    print(f"test loss: {run.final['test_loss']:.4f}  train loss: {run.final['train_loss']:.4f}")
    print(f"wrote {run.path}")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from fourbit.analysis.display import show, show_bytes, show_count, show_energy_pj, show_time_s
    from fourbit.hwsim.config import load_chip
    from fourbit.hwsim.engine import simulate
    from fourbit.traces.files import atomic_write, created_dir

    chip = load_chip(args.chip, _overrides(args.set))
    report = simulate(args.run_dir, chip, step=args.step, input_grad=args.input_grad, extrapolate=args.extrapolate)
    df = report.to_frame()
    cols = ["layer", "phase", "unit", "macs", "compute_cycles", "stall_cycles", "total_cycles",
            "utilization", "dram_read_bytes", "dram_write_bytes", "energy_pj"]
    _print_table(df[cols])
    t = report.totals()
    info, a = report.run_info, chip.array
    print(f"\n{chip.chip.name}: {a.rows}x{a.cols} {a.dataflow}, fill/drain overlap "
          f"{'on' if info['overlap_fill_drain'] else 'off'}, "
          + (f"{info['extrapolated_gemms']} GEMMs extrapolated" if info["extrapolate"] else "exact (not extrapolated)"))
    print(f"per step: {show_count(t['total_cycles'])} cycles, {show_time_s(t['time_s'])}, "
          f"{show_energy_pj(t['energy_pj'])}, {t['tops_per_w']:.3f} TOPS/W, DRAM traffic "
          f"{show_bytes(t['dram_read_bytes'] + t['dram_write_bytes'])}, PE utilization {show('fraction', t['utilization'])}")
    if args.out:
        with created_dir(args.out) as out, atomic_write(out / "simulation.csv") as tmp:
            df.to_csv(tmp, index=False)
        print(f"wrote {out / 'simulation.csv'}")
    return 0


def _cmd_import_scalesim(args: argparse.Namespace) -> int:
    from fourbit.models.recipes import get_recipe
    from fourbit.traces.files import created_dir
    from fourbit.traces.scalesim import import_topology

    recipe = get_recipe(args.recipe)
    trace = import_topology(args.topology, args.batch, recipe.describe(), batchnorm=not args.no_batchnorm)
    with created_dir(args.out) as out:
        trace.write(out, overwrite=args.overwrite)
    g = trace.gemms
    fwd = g[g.phase == "fwd"]
    macs = int((fwd.M * fwd.N * fwd.K * fwd.groups).sum())
    print(f"{trace.meta['model']}: {fwd.shape[0]} layers, {len(g)} GEMM rows, {len(trace.ops)} ops rows; "
          f"forward {macs / args.batch / 1e9:.4f} GMAC per sample")
    print(f"wrote {out}")
    return 0


def _cmd_chip(args: argparse.Namespace) -> int:
    from fourbit.hwsim.config import load_chip, preset_names
    from fourbit.traces.errors import ConfigError

    if args.preset is None:
        if args.set or args.peak:
            raise ConfigError("--set and --peak need a chip: fourbit chip PRESET_OR_TOML --set ...")
        print("presets: " + ", ".join(preset_names()))
        return 0
    chip = load_chip(args.preset, _overrides(args.set))
    if args.peak:
        from fourbit.hwsim.anchors import anchor_table
        from fourbit.hwsim.area import chip_area

        _print_table(anchor_table(chip))
        print()
        _print_table(chip_area(chip))
        return 0
    print(chip.to_toml(), end="")
    return 0


def _cmd_ablation(args: argparse.Namespace) -> int:
    from fourbit.analysis.ablation import VARIANT_SETS, Ablation, ablation
    from fourbit.traces.errors import ConfigError

    job = build(Ablation(), given(args))
    if args.variants and args.recipe:
        raise ConfigError(f"--variants {args.variants} and --recipe exclude each other: give a named set of "
                          "variants or the recipes themselves")
    if args.variants:
        job = job.replace(variants=VARIANT_SETS[args.variants])
    if args.recipe:
        job = job.replace(variants=tuple((spec, spec) for spec in args.recipe))
    table = ablation(job, progress=not args.quiet, overwrite=args.overwrite)
    _print_table(table)
    print(f"\nwrote {job.out}/ablation.csv, {job.out}/ablation_runs.csv, {job.out}/figures/ablation.png (and .svg) "
          f"and the run directories in {job.out}/runs")
    return 0


def _source(base, args: argparse.Namespace):
    """The trace source: ``base`` (a spec's, or the default) with the source flags given; a flag of
    the other kind of source (``--trace`` against a spec's model, or ``--model``) replaces it."""
    from fourbit.analysis.workloads import Source

    flags = given(args, "source.")
    if "trace" in flags and base.trace is None:
        base = Source(trace=flags["trace"])
    elif "model" in flags and base.trace is not None:
        base = Source(model=flags["model"], dataset=flags.get("dataset"), train=base.train)
    return build(base, flags)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from fourbit.analysis.plots import sweep_figures
    from fourbit.analysis.sweep import SweepSpec, load_spec, parse_grid, sweep
    from fourbit.analysis.workloads import Source

    top = {k: v for k, v in given(args).items() if k != "source"}
    axes = parse_grid(args.grid or [])
    if args.spec:  # flags given on the command line override the spec's
        spec = load_spec(args.spec)
        fields = {f for ax in axes for f in ax.fields}  # an axis given replaces the spec's sharing a field
        grid = tuple(ax for ax in spec.grid if not fields & set(ax.fields)) + axes
        spec = spec.replace(**top, grid=grid, source=_source(spec.source, args))
    else:
        spec = SweepSpec(source=_source(Source.model_construct(), args), grid=axes, **top)
    table = sweep(spec, progress=not args.quiet, overwrite=args.overwrite)
    figures = sweep_figures(table, spec.out)
    failed = table[table.status != "ok"]
    shown = [c for c in table.columns if c in {f for ax in spec.grid for f in ax.fields}] + [
        c for c in ("recipe_name", "tpr", "status", "total_cycles", "energy_pj", f"speedup_vs_{spec.baseline}",
                  f"energy_ratio_vs_{spec.baseline}", "utilization", "test_accuracy_pct")
        if c in table.columns]
    _print_table(table[shown].dropna(axis=1, how="all"))  # a column no point filled (accuracy of a trace)
    print(f"\n{len(table)} points ({len(failed)} failed); wrote {spec.out}/results.parquet, {spec.out}/results.csv"
          f" and {sum(p.suffix == '.png' for p in figures)} figures (PNG and SVG); `fourbit report {shlex.quote(spec.out)}` makes an HTML page")
    if len(failed):
        for row in failed.itertuples():
            print(f"point {row.point_id} failed: {row.error}", file=sys.stderr)
        print("run the same command again to retry the failed points (one failed for a reason in its "
              "configuration fails again: change the grid or the chip)", file=sys.stderr)
        return 1
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from fourbit.analysis.compare import Comparison, compare
    from fourbit.analysis.workloads import Source

    top = {k: v for k, v in given(args).items() if k != "source"}
    job = Comparison(source=_source(Source.model_construct(), args), **top)
    table = compare(job, progress=not args.quiet, overwrite=args.overwrite)
    _print_table(table)
    print(f"\nwrote {job.out}/compare.csv")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    import pandas as pd

    from fourbit.analysis.explain import explain_job

    result = explain_job(args.workload, args.chip, args.baseline, chip_set=_overrides(args.set),
                         baseline_set=_overrides(args.baseline_set), recipe=args.recipe,
                         baseline_recipe=args.baseline_recipe, out=args.out, overwrite=args.overwrite)
    for title, df in (("speed-up", result.speedup), ("energy ratio", result.energy)):
        print(f"\n{title} of {result.chip} over {result.baseline}, term by term:")
        with pd.option_context("display.width", 200, "display.max_colwidth", 80, "display.float_format", "{:.3f}".format):
            print(df.to_string(index=False))
    print(f"\nwrote {args.out}/explain.csv and {args.out}/explain.png (and .svg)")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from fourbit.analysis.report import write_report

    print(f"wrote {write_report(args.directory)}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from fourbit.analysis.bench import format_records, run_benchmarks

    records = run_benchmarks(args.names, quick=args.quick, data_dir=args.data_dir)
    print(format_records(records, args.json))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with bad arguments reported on one line (exit status 2), pointing at --help."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _flags(p: argparse.ArgumentParser, *names: str) -> None:
    """The flags every job command shares: ``overwrite`` (the API's policy) and ``quiet``."""
    if "overwrite" in names:
        p.add_argument("--overwrite", action="store_true",
                       help="replace the results already at --out (another job's, or foreign files)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _verb(sub, name: str, description: str | None = None) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=_SUMMARY[name], description=description)


def _source_options(p: argparse.ArgumentParser) -> None:
    """The options of a job's `fourbit.analysis.workloads.Source` (a trace, or a model to train)."""
    from fourbit.analysis.workloads import Source

    add_options(p, Source, prefix="source.", exclude=("model_params",), choices=_CHOICES, notes=_NOTES)


def _add_run(sub) -> None:
    from fourbit.analysis.run import MainJob

    r = _verb(sub, "run", "The main job: train the 4-bit recipe and the baseline, simulate a training step of "
                          "each on its chip, compare (fourbit.main_job).")
    add_options(r, MainJob, choices=_CHOICES, notes=_NOTES)
    _flags(r, "overwrite")
    r.set_defaults(func=_cmd_run)


def _add_train(sub) -> None:
    from fourbit.models.trainer import TrainConfig

    t = _verb(sub, "train", "Train a model with a recipe and write its run directory (fourbit.train).")
    t.add_argument("--model", required=True, choices=_CHOICES["model"], help="the model: one of %(choices)s")
    t.add_argument("--dataset", required=True, choices=_CHOICES["dataset"], help="the data set: one of %(choices)s")
    t.add_argument("--recipe", required=True, choices=RECIPE_CHOICES,
                   help=f"the recipe: one of %(choices)s ({_NOTES['recipe']})")
    t.add_argument("--data-dir", default=None, help="where the data set's files are (default $FOURBIT_DATA_DIR)")
    t.add_argument("--out", required=True, help="the run directory")
    add_options(t, TrainConfig, prefix="train.")
    t.add_argument("--resume", action="store_true",
                   help="continue the run at --out from its last checkpoint (same arguments): the same result "
                        "as an uninterrupted run")
    t.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                   help="also checkpoint every that many steps inside an epoch (default 0: at the end of every "
                        "epoch only)")
    _flags(t, "overwrite")
    t.set_defaults(func=_cmd_train)


def _add_simulate(sub) -> None:
    s = _verb(sub, "simulate", "Simulate one training step of a run directory on a chip (fourbit.simulate).")
    s.add_argument("run_dir", help="a run or imported trace directory")
    s.add_argument("--chip", required=True, choices=CHIP_CHOICES, metavar="CHIP",
                   help="a chip preset, one of %(choices)s, or a TOML path")
    s.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a chip field, e.g. array.rows=64 (`fourbit chip PRESET` shows all fields)")
    s.add_argument("--step", type=_nonneg_int, default=None, help="recorded step (default: the last)")
    s.add_argument("--input-grad", action="store_true", help="also simulate bwd_data of the input layer")
    s.add_argument("--extrapolate", action="store_true",
                   help="measure long GEMMs on short probes and extend them by their steady-state increments "
                        "(an approximation, seldom faster than the exact default)")
    s.add_argument("--out", default=None, help="write simulation.csv there (default: print only)")
    s.set_defaults(func=_cmd_simulate)


def _add_import(sub) -> None:
    im = _verb(sub, "import-scalesim", "A SCALE-Sim topology as a training trace, shapes only (fourbit.import_topology).")
    im.add_argument("topology", help="a SCALE-Sim conv or GEMM topology CSV, a transformer description "
                    "(.toml with a [transformer] table: width, heads, layers, context, vocab, mlp_ratio "
                    "(default 4)), or a shipped name (resnet18, resnet50, mobilenet_v1, gpt2_small)")
    im.add_argument("--batch", type=_positive_int, required=True, help="samples per training step")
    im.add_argument("--recipe", default="int4", choices=RECIPE_CHOICES, metavar="RECIPE",
                    help="the recipe whose per-layer formats the trace takes: one of %(choices)s (default: int4)")
    im.add_argument("--no-batchnorm", action="store_true", help="conv topologies without BatchNorm ops")
    im.add_argument("--out", required=True, help="the trace directory")
    im.add_argument("--overwrite", action="store_true", help="replace a run directory already at --out")
    im.set_defaults(func=_cmd_import_scalesim)


def _add_chip(sub) -> None:
    c = _verb(sub, "chip")
    c.add_argument("preset", nargs="?", default=None, help="a preset name or TOML path (none: list the presets)")
    c.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override a chip field, e.g. array.rows=64")
    c.add_argument("--peak", action="store_true",
                   help="peak TOPS and modelled TOPS/W per unit (with published figures for rapid) and area per block")
    c.set_defaults(func=_cmd_chip)


def _add_ablation(sub) -> None:
    from fourbit.analysis.ablation import Ablation

    a = _verb(sub, "ablation", "The FP4 ablation: every variant trained with every seed (fourbit.ablation).")
    add_options(a, Ablation, exclude=("variants", "model_params", "train.seed"), choices=_CHOICES, notes=_NOTES)
    a.add_argument("--recipe", action="append", metavar="SPEC", choices=RECIPE_CHOICES,
                   help="a recipe spec to compare, e.g. int4:radix=2,tpr=off (repeatable; default: the paper's "
                        "variants: fp32; radix 2 and 8 single phase; radix 4 with and without TPR; radix 16 with "
                        "TPR; radix 4 with one global loss scale)")
    a.add_argument("--variants", choices=("fp4", "nvfp4"), default=None,
                   help="a named set of variants: fp4 (the default: the paper's FP4 ablation) or nvfp4 (the NVFP4 "
                        "recipe with one part changed at a time: no Hadamard, no stochastic rounding, 1-D weight "
                        "blocks, blocks of 32, E8M0 scales, the last layer in NVFP4)")
    _flags(a, "overwrite")
    a.set_defaults(func=_cmd_ablation)


def _add_sweep(sub) -> None:
    from fourbit.analysis.sweep import SweepSpec

    w = _verb(sub, "sweep", "A grid over chip fields and recipe parameters (fourbit.sweep). Either --trace or "
                            "--model with --dataset names the workload.")
    _source_options(w)
    from fourbit.analysis.sweep import CHIP_RECIPES

    # a sweep's baseline is a chip preset with its own recipe (the main job's is a recipe)
    add_options(w, SweepSpec, exclude=("source", "grid"), choices={**_CHOICES, "baseline": (*CHIP_RECIPES, "none")},
                notes={**_NOTES, "baseline": "a chip preset, or none"})
    w.add_argument("--grid", action="append", metavar="FIELD[,FIELD]=V1,V2,...",
                   help="an axis: chip fields (array.rows, array.dataflow, log_path.radix, ...), chip, recipe, "
                        "recipe.<param> (radix, exponent_bits, tpr, grad_scaling, tie, bwd_acc); repeatable")
    w.add_argument("--spec", default=None, help="a TOML sweep spec (README: the format); flags given override it")
    _flags(w, "overwrite")
    w.set_defaults(func=_cmd_sweep)


def _add_compare(sub) -> None:
    from fourbit.analysis.compare import Comparison

    cm = _verb(sub, "compare", "Each chip with its own recipe, iso-array and iso-area (fourbit.compare). Either "
                               "--trace or --model with --dataset names the workload.")
    from fourbit.analysis.compare import CHIP_RECIPES

    _source_options(cm)
    add_options(cm, Comparison, exclude=("source",), choices={"baseline": tuple(CHIP_RECIPES)},
                notes={**_NOTES, "baseline": "one of the chips"})
    _flags(cm, "overwrite")
    cm.set_defaults(func=_cmd_compare)


def _add_explain(sub) -> None:
    e = _verb(sub, "explain", "The gap from the ratio of peak compute densities to the measured speed-up, term "
                              "by term, and the energy ratio by component (fourbit.explain; the terms and how each "
                              "is switched off: `python -m pydoc fourbit.analysis.explain`).")
    e.add_argument("workload", help="a run or imported trace directory (each chip runs its own recipe's trace of it)")
    e.add_argument("--chip", default="fourbit", choices=CHIP_CHOICES, metavar="CHIP",
                   help="the chip explained: a preset, one of %(choices)s, or a TOML path (default fourbit)")
    e.add_argument("--baseline", default="fp16", choices=CHIP_CHOICES, metavar="CHIP",
                   help="the chip it is compared with, as --chip (default fp16)")
    e.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override a field of --chip, e.g. array.rows=27")
    e.add_argument("--baseline-set", action="append", metavar="FIELD=VALUE", help="override a field of --baseline")
    e.add_argument("--recipe", default=None, help="the recipe of --chip (default: the preset's, as in compare)")
    e.add_argument("--baseline-recipe", default=None, help="the recipe of --baseline (default: the preset's)")
    e.add_argument("--out", default="explain-out", help="output directory (default explain-out)")
    e.add_argument("--overwrite", action="store_true",
                   help="replace the results already at --out (another job's, or foreign files)")
    e.set_defaults(func=_cmd_explain)


def _add_report(sub) -> None:
    rp = _verb(sub, "report")
    rp.add_argument("directory", help="a sweep, compare, ablation or main-job output directory")
    rp.set_defaults(func=_cmd_report)


def _add_bench(sub) -> None:
    b = _verb(sub, "bench")
    b.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all): numerics, sim, train, trace")
    b.add_argument("--data-dir", default=None, help="MNIST files for the train benchmark (default $FOURBIT_DATA_DIR; "
                   "without either, random MNIST-shaped images and no epoch time)")
    b.add_argument("--json", action="store_true", help="print a JSON list of records")
    b.add_argument("--quick", action="store_true", help="fewer repeats, skip the slowest kernels")
    b.set_defaults(func=_cmd_bench)


_VERBS = {"run": _add_run, "train": _add_train, "simulate": _add_simulate, "import-scalesim": _add_import,
          "chip": _add_chip, "ablation": _add_ablation, "sweep": _add_sweep, "compare": _add_compare, "explain": _add_explain,
          "report": _add_report, "bench": _add_bench}
_SUMMARY = {"run": "the main job: train int4 and fp32, simulate both chips, compare",
            "train": "train a model with a recipe and write its run directory",
            "simulate": "simulate one training step of a run directory on a chip",
            "import-scalesim": "a SCALE-Sim topology as a training trace (shapes only)",
            "chip": "list the chip presets, or print one (with --set overrides) as TOML",
            "ablation": "the FP4 ablation: log base, TPR, GradScale vs global scale, over seeds",
            "sweep": "a grid over chip fields and recipe parameters: simulate (and train) every point",
            "compare": "the 4-bit chip vs FP16, INT8 and HFP8 chips, iso-array and iso-area",
            "explain": "why a chip's speed-up and energy ratio are what they are, term by term",
            "report": "one static HTML page of a sweep's (or compare's) tables and figures",
            "bench": "the software's own speed, as ratios measured side by side"}


def _parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the options of the verb named in ``argv`` are built."""
    p = _Parser(prog="fourbit", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    verb = next((a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")), None)
    for name, add in _VERBS.items():
        if name == verb:
            add(sub)
        else:
            sub.add_parser(name, help=_SUMMARY[name])
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fourbit`` script; returns the exit status."""
    from fourbit.traces.errors import FourbitError

    try:
        args = _parser(argv).parse_args(argv)  # building a verb's options imports its modules
        return args.func(args)
    except (FourbitError, argparse.ArgumentTypeError) as exc:
        print(f"fourbit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fourbit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (e.g. `| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

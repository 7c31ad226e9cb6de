"""The ``fourbit`` command line: 4-bit training emulation and accelerator simulation.

Each verb parses its arguments into the objects the Python API takes and calls the same function:

``fourbit run``       `fourbit.analysis.run.main_job`
``fourbit train``     `fourbit.models.trainer.train`
``fourbit simulate``  `fourbit.hwsim.simulate`
``fourbit import-scalesim``  `fourbit.traces.scalesim.import_topology`
``fourbit chip``      `fourbit.hwsim.load_chip` (prints the resolved chip as TOML)
``fourbit bench``     `fourbit.analysis.bench.run_benchmarks`

Bad input (an unknown name, a value out of range, an unwritable directory) prints one line,
``fourbit: error: ...``, and exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import pandas as pd

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
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise argparse.ArgumentTypeError(f"--set takes FIELD=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _print_table(df: pd.DataFrame) -> None:
    with pd.option_context("display.width", 200, "display.max_columns", 50,
                           "display.float_format", "{:,.3f}".format):
        print(df.to_string(index=False))


@contextlib.contextmanager
def _removed_if_empty_on_failure(out: str):
    """Remove ``out`` (and empty directories in it) when the command fails before writing
    anything there and the directory did not exist before."""
    from pathlib import Path

    path = Path(out)
    existed = path.exists()
    try:
        yield
    except BaseException:
        if not existed and path.is_dir():
            for d in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    d.rmdir()
            with contextlib.suppress(OSError):
                path.rmdir()  # only if empty: anything written stays
        raise


def _cmd_run(args: argparse.Namespace) -> int:
    from fourbit.analysis.run import MainJob, main_job

    job = MainJob(model=args.model, dataset=args.dataset, data_dir=args.data_dir, recipe=args.recipe,
                  baseline=args.baseline, chip=args.chip, baseline_chip=args.baseline_chip,
                  epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, out=args.out)
    table = main_job(job, progress=not args.quiet)
    _print_table(table)
    print(f"\nwrote {args.out}/main_job.csv, {args.out}/main_job.png and the run directories in {args.out}/runs")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fourbit.analysis.run import check_writable
    from fourbit.models.recipes import get_recipe
    from fourbit.models.trainer import TrainConfig, train
    from fourbit.models.zoo import MODELS
    from fourbit.traces.errors import ConfigError

    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: one continues the run at --out, the other replaces it")
    get_recipe(args.recipe)  # a bad recipe or model is named before anything about --out
    if args.model not in MODELS:
        raise ConfigError(f"unknown model {args.model!r}; known models: {', '.join(MODELS)}")
    if Path(args.out, "meta.json").exists() and not (args.overwrite or args.resume):
        raise ConfigError(f"--out {args.out!r} already holds a run directory; pass --overwrite to replace it")
    if Path(args.out, "checkpoint").exists() and not (args.overwrite or args.resume):
        raise ConfigError(f"--out {args.out!r} holds the checkpoint of an unfinished run; pass --resume to "
                          "continue it or --overwrite to start again")
    with _removed_if_empty_on_failure(args.out):
        check_writable(args.out)
        cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                          trace_every=args.trace_every, clip_norm=args.clip_norm,
                          **({"lr": args.lr} if args.lr is not None else {}))
        run = train(args.model, args.dataset, args.recipe, config=cfg, data_dir=args.data_dir,
                    out=args.out, progress=not args.quiet, resume=args.resume)
    print(f"test accuracy: {100 * run.final['test_accuracy']:.2f} %")
    print(f"test loss: {run.final['test_loss']:.4f}  train loss: {run.final['train_loss']:.4f}")
    print(f"wrote {run.path}")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from fourbit.hwsim.config import load_chip
    from fourbit.hwsim.engine import simulate
    from fourbit.traces.io import read

    chip = load_chip(args.chip, _overrides(args.set))
    out = None
    if args.out:
        from fourbit.analysis.run import check_writable

        out = check_writable(args.out)
    report = simulate(read(args.run_dir), chip, step=args.step, input_grad=args.input_grad,
                      extrapolate=args.extrapolate)
    df = report.to_frame()
    cols = ["layer", "phase", "unit", "macs", "compute_cycles", "stall_cycles", "total_cycles",
            "utilization", "dram_read_bytes", "dram_write_bytes", "energy_pj"]
    _print_table(df[cols])
    t = report.totals()
    info, a = report.run_info, chip.array
    print(f"\n{chip.chip.name}: {a.rows}x{a.cols} {a.dataflow}, fill/drain overlap "
          f"{'on' if info['overlap_fill_drain'] else 'off'}, "
          + (f"{info['extrapolated_gemms']} GEMMs extrapolated" if info["extrapolate"] else "exact (every tile)"))
    print(f"per step: {int(t['total_cycles'])} cycles, {t['time_s'] * 1e6:.2f} us, "
          f"{t['energy_pj'] * 1e-6:.3f} uJ, {t['tops_per_w']:.3f} TOPS/W")
    if out is not None:
        df.to_csv(out / "simulation.csv", index=False)
        print(f"wrote {out / 'simulation.csv'}")
    return 0


def _cmd_import_scalesim(args: argparse.Namespace) -> int:
    from fourbit.analysis.run import check_writable
    from fourbit.models.recipes import get_recipe
    from fourbit.traces.scalesim import import_topology

    recipe = get_recipe(args.recipe)
    out = check_writable(args.out)
    trace = import_topology(args.topology, args.batch, recipe.describe(), batchnorm=not args.no_batchnorm)
    trace.write(out)
    g = trace.gemms
    fwd = g[g.phase == "fwd"]
    macs = int((fwd.M * fwd.N * fwd.K * fwd.groups).sum())
    print(f"{trace.meta['model']}: {fwd.shape[0]} layers, {len(g)} GEMM rows, {len(trace.ops)} ops rows; "
          f"forward {macs / args.batch / 1e9:.4f} GMAC per sample")
    print(f"wrote {out}")
    return 0


def _cmd_chip(args: argparse.Namespace) -> int:
    from fourbit.hwsim.config import load_chip, preset_names

    if args.preset is None:
        print("presets: " + ", ".join(preset_names()))
        return 0
    chip = load_chip(args.preset, _overrides(args.set))
    if args.peak:
        from fourbit.hwsim.anchors import anchor_table
        from fourbit.hwsim.energy import chip_area

        _print_table(anchor_table(chip))
        print()
        _print_table(chip_area(chip))
        return 0
    print(chip.to_toml(), end="")
    return 0


def _cmd_ablation(args: argparse.Namespace) -> int:
    from fourbit.analysis.ablation import DEFAULT_VARIANTS, Ablation, ablation

    variants = tuple((spec, spec) for spec in args.recipe) if args.recipe else DEFAULT_VARIANTS
    job = Ablation(model=args.model, dataset=args.dataset, data_dir=args.data_dir, variants=variants,
                   seeds=tuple(args.seeds), epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                   out=args.out)
    table = ablation(job, progress=not args.quiet)
    _print_table(table)
    print(f"\nwrote {args.out}/ablation.csv, {args.out}/ablation_runs.csv and the run directories in {args.out}/runs")
    return 0


def _source_flags(args: argparse.Namespace) -> dict:
    """The trace-source flags given on the command line (None: not given)."""
    names = ("trace", "model", "dataset", "data_dir", "epochs", "batch_size", "lr", "seed")
    return {k: getattr(args, k) for k in names if getattr(args, k) is not None}


def _cmd_sweep(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from fourbit.analysis.plots import sweep_figures
    from fourbit.analysis.sweep import Source, SweepSpec, load_spec, parse_grid, sweep

    given = {k: v for k, v in (("out", args.out), ("workers", args.workers), ("scheduler", args.scheduler),
                                ("chip", args.chip), ("recipe", args.recipe)) if v is not None}
    if args.exact:
        given["extrapolate"] = False
    flags = _source_flags(args)
    if args.spec:  # flags given on the command line override the spec's
        spec = load_spec(args.spec, **given)
        if args.grid:  # an axis given replaces the spec's axes that share a field with it
            axes = parse_grid(args.grid)
            fields = {f for ax in axes for f in ax.fields}
            spec = replace(spec, grid=tuple(ax for ax in spec.grid if not fields & set(ax.fields)) + axes)
        if "trace" in flags:  # another kind of source replaces the spec's
            spec = replace(spec, source=Source(**flags))
        elif flags:
            spec = replace(spec, source=replace(spec.source, trace=None if "model" in flags else spec.source.trace,
                                                **flags))
    else:
        spec = SweepSpec(source=Source(**flags), grid=parse_grid(args.grid or []), **given)
    table = sweep(spec, progress=not args.quiet)
    figures = sweep_figures(table, spec.out)
    failed = table[table.status != "ok"]
    shown = [c for c in table.columns if c in {f for ax in spec.grid for f in ax.fields}] + [
        c for c in ("recipe_name", "tpr", "status", "total_cycles", "energy_pj", "utilization", "test_accuracy_pct")
        if c in table.columns]
    _print_table(table[shown])
    print(f"\n{len(table)} points ({len(failed)} failed); wrote {spec.out}/results.parquet, {spec.out}/results.csv"
          f" and {len(figures)} figures (PNG and SVG); `fourbit report {spec.out}` makes an HTML page")
    if len(failed):
        for row in failed.itertuples():
            print(f"point {row.point_id} failed: {row.error}", file=sys.stderr)
        print("run the same command again to retry the failed points", file=sys.stderr)
        return 1
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from fourbit.analysis.compare import compare
    from fourbit.analysis.sweep import Source

    with _removed_if_empty_on_failure(args.out):
        table = compare(Source(**_source_flags(args)), chips=tuple(args.chips.split(",")), baseline=args.baseline, out=args.out,
                        workers=args.workers, scheduler=args.scheduler, progress=not args.quiet)
    _print_table(table)
    print(f"\nwrote {args.out}/compare.csv")
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


def _add_source_args(p: argparse.ArgumentParser, model_help: str) -> None:
    """The flags naming a sweep's (or compare's) traces: a trace directory, or a model to train
    (None: not given, `fourbit.analysis.sweep.Source`'s default applies)."""
    p.add_argument("--trace", default=None, help="a run or imported trace directory (chip-only)")
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("--dataset", default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--epochs", type=_positive_int, default=None, help="training epochs per recipe (default 1)")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="training batch size (default 64)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 0.1)")
    p.add_argument("--seed", type=_nonneg_int, default=None, help="training seed (default 0)")


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless it is None (the help text then says what None means)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse with bad arguments reported on one line (exit status 2), pointing at --help."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    fmt = _DefaultsFormatter
    p = _Parser(prog="fourbit", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    r = sub.add_parser("run", help="the main job: train int4 and fp32, simulate both chips, compare",
                       formatter_class=fmt)
    r.add_argument("--model", default="mlp")
    r.add_argument("--dataset", default="digits")
    r.add_argument("--data-dir", default=None)
    r.add_argument("--recipe", default="int4")
    r.add_argument("--baseline", default="fp32", help="baseline recipe (default fp32)")
    r.add_argument("--chip", default="fourbit", help="chip preset or TOML for the 4-bit recipe")
    r.add_argument("--baseline-chip", default="fp16", help="chip preset or TOML for the baseline")
    r.add_argument("--epochs", type=_positive_int, default=20)
    r.add_argument("--batch-size", type=_positive_int, default=64)
    r.add_argument("--seed", type=_nonneg_int, default=0)
    r.add_argument("--out", default="fourbit-out")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_cmd_run)

    t = sub.add_parser("train", help="train a model with a recipe and write its run directory",
                       formatter_class=fmt)
    t.add_argument("--model", required=True)
    t.add_argument("--dataset", required=True)
    t.add_argument("--recipe", required=True)
    t.add_argument("--epochs", type=_positive_int, default=20)
    t.add_argument("--batch-size", type=_positive_int, default=64)
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the trainer's 0.1)")
    t.add_argument("--clip-norm", type=float, default=0.0,
                   help="clip the global gradient norm to this value (LSTMs; 0: off)")
    t.add_argument("--seed", type=_nonneg_int, default=0)
    t.add_argument("--trace-every", type=_nonneg_int, default=0)
    t.add_argument("--data-dir", default=None)
    t.add_argument("--out", required=True)
    t.add_argument("--overwrite", action="store_true", help="replace a run directory already at --out")
    t.add_argument("--resume", action="store_true",
                   help="continue the run at --out from its last epoch checkpoint (same arguments)")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_cmd_train)

    s = sub.add_parser("simulate", help="simulate one training step of a run directory on a chip",
                       formatter_class=fmt)
    s.add_argument("run_dir")
    s.add_argument("--chip", required=True, help="preset name or TOML path (`fourbit chip` lists presets)")
    s.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a chip field, e.g. array.rows=64 (`fourbit chip PRESET` shows all fields)")
    s.add_argument("--step", type=_nonneg_int, default=None, help="recorded step (default: the last)")
    s.add_argument("--input-grad", action="store_true", help="also simulate bwd_data of the input layer")
    s.add_argument("--extrapolate", action="store_true",
                   help="measure long GEMMs on short probes and extend them by their steady-state increments "
                        "(fast; the stall's split between memory and scaling unit may differ)")
    s.add_argument("--out", default=None, help="write simulation.csv there (default: print only)")
    s.set_defaults(func=_cmd_simulate)

    im = sub.add_parser("import-scalesim", help="a SCALE-Sim topology as a training trace (shapes only)",
                        formatter_class=fmt)
    im.add_argument("topology", help="a SCALE-Sim conv or GEMM topology CSV, or a shipped name "
                    "(resnet18, resnet50, mobilenet_v1, gpt2_small)")
    im.add_argument("--batch", type=_positive_int, required=True, help="samples per training step")
    im.add_argument("--recipe", default="int4", help="the recipe whose per-layer formats the trace takes")
    im.add_argument("--no-batchnorm", action="store_true", help="conv topologies without BatchNorm ops")
    im.add_argument("--out", required=True)
    im.set_defaults(func=_cmd_import_scalesim)

    c = sub.add_parser("chip", help="list the chip presets, or print one (with --set overrides) as TOML")
    c.add_argument("preset", nargs="?", default=None)
    c.add_argument("--set", action="append", metavar="FIELD=VALUE")
    c.add_argument("--peak", action="store_true",
                   help="peak TOPS and modelled TOPS/W per unit (with published figures for rapid) and area per block")
    c.set_defaults(func=_cmd_chip)

    a = sub.add_parser("ablation", help="the FP4 ablation: log base, TPR, GradScale vs global scale, over seeds",
                       formatter_class=fmt)
    a.add_argument("--model", default="lenet5")
    a.add_argument("--dataset", default="mnist")
    a.add_argument("--data-dir", default=None)
    a.add_argument("--recipe", action="append", metavar="SPEC",
                   help="a recipe spec to compare, e.g. int4:radix=2,tpr=off (repeatable; default: the paper's variants)")
    a.add_argument("--seeds", type=_nonneg_int, nargs="+", default=[0, 1])
    a.add_argument("--epochs", type=_positive_int, default=1)
    a.add_argument("--batch-size", type=_positive_int, default=64)
    a.add_argument("--lr", type=float, default=0.1)
    a.add_argument("--out", default="ablation-out")
    a.add_argument("--quiet", action="store_true")
    a.set_defaults(func=_cmd_ablation)

    w = sub.add_parser("sweep", help="a grid over chip fields and recipe parameters: simulate (and train) every point",
                       formatter_class=fmt)
    _add_source_args(w, "train this model for every distinct recipe of the grid")
    w.add_argument("--grid", action="append", metavar="FIELD[,FIELD]=V1,V2,...",
                   help="an axis: chip fields (array.rows, array.dataflow, log_path.radix, ...), chip, recipe, "
                        "recipe.<param> (radix, exponent_bits, tpr, grad_scaling, tie, bwd_acc); repeatable")
    w.add_argument("--spec", default=None, help="a TOML sweep spec ([source], [[grid]], ...); flags given override it")
    w.add_argument("--chip", default=None, help="the base chip (preset or TOML; default fourbit)")
    w.add_argument("--recipe", default=None, help="the base recipe (default: the trace's, or int4)")
    w.add_argument("--out", default=None, help="output directory (default sweep-out)")
    w.add_argument("--workers", type=_positive_int, default=None, help="local worker processes (default 1)")
    w.add_argument("--scheduler", default=None, help="a dask.distributed scheduler address, tcp://HOST:PORT")
    w.add_argument("--exact", action="store_true",
                   help="simulate every GEMM in full, instead of extrapolating long GEMMs from probes")
    w.add_argument("--quiet", action="store_true")
    w.set_defaults(func=_cmd_sweep)

    cm = sub.add_parser("compare", help="the 4-bit chip vs FP16, INT8 and HFP8 chips, iso-array and iso-area",
                        formatter_class=fmt)
    _add_source_args(cm, "train this model with each chip's recipe")
    cm.add_argument("--chips", default="fourbit,fp16,int8,hfp8", help="chip presets, comma separated")
    cm.add_argument("--baseline", default="fp16")
    cm.add_argument("--out", default="compare-out")
    cm.add_argument("--workers", type=_positive_int, default=1)
    cm.add_argument("--scheduler", default=None)
    cm.add_argument("--quiet", action="store_true")
    cm.set_defaults(func=_cmd_compare)

    rp = sub.add_parser("report", help="one static HTML page of a sweep's (or compare's) tables and figures")
    rp.add_argument("directory")
    rp.set_defaults(func=_cmd_report)

    b = sub.add_parser("bench", help="the software's own speed, as ratios measured side by side")
    b.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all): numerics, sim, train, trace")
    b.add_argument("--data-dir", default=None, help="MNIST files for the train benchmark (default $FOURBIT_DATA_DIR)")
    b.add_argument("--json", action="store_true", help="print a JSON list of records")
    b.add_argument("--quick", action="store_true", help="fewer repeats, skip the slowest kernels")
    b.set_defaults(func=_cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fourbit`` script; returns the exit status."""
    from fourbit.traces.errors import FourbitError

    parser = _parser()
    args = parser.parse_args(argv)
    try:
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

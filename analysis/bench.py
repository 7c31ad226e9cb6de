"""``fourbit bench``: the software's own speed, as ratios measured side by side in one run.

Machines are noisy, so each benchmark times its subject and its reference alternately, several
times, and reports the ratio of medians (and the medians themselves). Records are
``{"benchmark", "metric", "value", "unit", "target"}``; ``--json`` prints them as a JSON list.
Targets come from the issues that set them; a target of ``null`` means "reported, no target".
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

import numpy as np

__all__ = ["BENCHMARKS", "in_blocks", "run_benchmarks", "side_by_side"]


def side_by_side(subject: Callable[[], object], reference: Callable[[], object], repeats: int = 9,
                 warmup: int = 2) -> tuple[float, float]:
    """Median seconds of ``subject`` and ``reference``, timed alternately (perf_counter)."""
    for _ in range(warmup):
        subject()
        reference()
    ts, tr = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subject()
        t1 = time.perf_counter()
        reference()
        t2 = time.perf_counter()
        ts.append(t1 - t0)
        tr.append(t2 - t1)
    return statistics.median(ts), statistics.median(tr)


def in_blocks(subject: Callable[[], object], reference: Callable[[], object], repeats: int = 9,
              rounds: int = 3, settle: float = 0.15) -> tuple[float, float]:
    """Median seconds of ``subject`` and ``reference`` over ``repeats`` timed calls each, in one
    run: ``rounds`` alternating blocks of ``ceil(repeats / rounds)`` timed calls of one, then of
    the other, each block after ``settle`` seconds of untimed calls of the same function.

    For a Numba kernel against a BLAS call. OpenBLAS's worker threads spin for 2^28 cycles
    (~0.1 s) after each call: timed call by call in turn on two cores (`side_by_side`), every
    kernel call ran while a spinning worker held one core, which doubled the kernel's time. The
    untimed calls keep the cores busy (an idle virtual CPU also wakes slowly) until the other
    side's threads sleep, so each side is measured in its own steady state, as in a loop.
    """
    per_block = max(1, -(-repeats // max(1, rounds)))
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(max(1, rounds)):
        for fn, ts in ((subject, times[0]), (reference, times[1])):
            t_end = time.perf_counter() + settle
            fn()
            while time.perf_counter() < t_end:
                fn()
            for _ in range(per_block):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def _record(benchmark: str, metric: str, value: float, unit: str, target: float | None) -> dict:
    return {"benchmark": benchmark, "metric": metric, "value": float(value), "unit": unit, "target": target}


def _gemm_ratios(m: int, n: int, k: int, quick: bool, rng: np.random.Generator) -> list[dict]:
    """The GEMM kernels on one shape, each against numpy's float32 matmul of that shape; the
    block-scaled GEMMs (MXFP4, NVFP4) on operands quantized beforehand (target <= 8, issue 17)."""
    from fourbit.models.numerics import gemm_block_with_stats, gemm_with_stats, quantize_block, quantize_fp4
    from fourbit.traces.formats import Accumulator

    tag = f"{m}x{n}x{k}"
    af = rng.standard_normal((m, k)).astype(np.float32)
    bf = rng.standard_normal((k, n)).astype(np.float32)
    act = rng.integers(0, 16, (m, k)).astype(np.uint8)      # uint4 PACT codes
    wgt = rng.integers(-7, 8, (k, n)).astype(np.int8)       # int4 SAWB codes
    grad = quantize_fp4(rng.standard_normal((m, k)) * 8)    # radix-4 FP4 values (even phase)
    grad16 = quantize_fp4(rng.standard_normal((m, k)) * 2.0**rng.integers(-12, 12, (m, k)), 16, 3)
    fp16 = Accumulator("fp16", 4, 64)
    def plain(a, b, acc, path=None):
        return lambda: gemm_with_stats(a, b, acc, path=path)

    def block(fmt, block_size):
        qa, qb = quantize_block(af, fmt), quantize_block(bf, fmt, axis=0)
        return lambda: gemm_block_with_stats(qa, qb, Accumulator("fp32", block_size, None))

    cases = [
        ("int4xint4_int32_exact", plain(act, wgt, Accumulator("int32")), 2.0),
        ("int4xint4_int32_int_kernel", plain(act, wgt, Accumulator("int32"), "int"), None),
        ("fp4xint4_fp16_g4_c64_shift_add", plain(grad, wgt, fp16), 8.0),
        ("fp4xint4_dlfloat16_g4_c64", plain(grad, wgt, Accumulator("dlfloat16", 4, 64)), None),
        ("fp4xint4_fp32_g4_c64", plain(grad, wgt, Accumulator("fp32", 4, 64)), None),
        ("fp4r16xint4_fp16_g4_c64_int_shift_kernel", plain(grad16, wgt, fp16, "shift_add"), None),
        ("mxfp4_block_gemm_fp32", block("mxfp4", 32), 8.0),
        ("nvfp4_block_gemm_fp32", block("nvfp4", 16), 8.0),
    ]
    if not quick:
        cases.append(("fp4xint4_fp16_g4_c64_general_kernel", plain(grad, wgt, fp16, "general"), None))
    out = []
    reference = None
    for name, fn, target in cases:
        ts, reference = in_blocks(fn, lambda: af @ bf, repeats=6 if quick else 12, rounds=2 if quick else 3)
        out.append(_record("numerics", f"{name} {tag} / float32 matmul", ts / reference, "ratio", target))
        out.append(_record("numerics", f"{name} {tag}", ts * 1e3, "ms", None))
    out.append(_record("numerics", f"float32 matmul {tag}", reference * 1e3, "ms", None))
    return out


def bench_numerics(quick: bool = False) -> list[dict]:
    """Each GEMM kernel / numpy float32 matmul of the same shape (M = N = K = 512, and the conv-like
    M = 3136, N = 64, K = 576), and the quantizers' throughput."""
    from fourbit.models.numerics import quantize_block, quantize_fp4, quantize_uint4_pact

    rng = np.random.default_rng(0)
    out = []
    for m, n, k in [(512, 512, 512), (3136, 64, 576)]:
        out += _gemm_ratios(m, n, k, quick, rng)
    x = rng.standard_normal(1 << 20)
    ts, _ = side_by_side(lambda: quantize_fp4(x, phase="odd"), lambda: np.abs(x), repeats=5)
    out.append(_record("numerics", "quantize_fp4 1M elements", (1 << 20) / ts / 1e6, "Melements/s", None))
    ts, _ = side_by_side(lambda: quantize_uint4_pact(x, 2.0), lambda: np.abs(x), repeats=5)
    out.append(_record("numerics", "quantize_uint4_pact 1M elements", (1 << 20) / ts / 1e6, "Melements/s", None))
    for fmt in ("mxfp4", "nvfp4"):
        ts, _ = side_by_side(lambda fmt=fmt: quantize_block(x, fmt), lambda: np.abs(x), repeats=5)
        out.append(_record("numerics", f"quantize_block {fmt} 1M elements", (1 << 20) / ts / 1e6, "Melements/s", None))
    return out


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench_sim(quick: bool = False) -> list[dict]:
    """Wall time to simulate one ResNet-18 training step (batch 32, all three phases; imported
    topology, ``int4`` recipe) on the 32 x 32 WS ``fourbit`` chip, simpy events per second, and
    wall time against the number of tiles walked one by one (batch 4 .. 16) and against simpy
    events (also with the steady-state batches, batch 4 .. 32): straight lines through them show
    the cost is linear in tiles."""
    from fourbit.hwsim.config import load_chip
    from fourbit.hwsim.engine import clear_timing_cache, simulate
    from fourbit.models.recipes import get_recipe
    from fourbit.traces.scalesim import import_topology

    chip = load_chip("fourbit")
    recipe = get_recipe("int4").describe()
    out = []
    points = []  # (events, tiles, wall, tile by tile)
    batches = [4, 8, 32] if quick else [4, 8, 16, 32]
    for batch in batches:
        trace = import_topology("resnet18", batch, recipe)
        for compress in (True, False):
            if not compress and batch > 16:
                continue
            clear_timing_cache()  # cold: every GEMM simulated, none taken from an earlier run
            wall, rep = _timed(lambda trace=trace, compress=compress: simulate(trace, chip, compress=compress))
            tiles = int(rep.to_frame().tiles.sum())
            points.append((rep.run_info["events"], tiles, wall, not compress))
            tag = f"batch {batch}{'' if compress else ', tile by tile'}"
            if batch == 32 and compress:
                out.append(_record("sim", "resnet18 batch 32 training step on fourbit 32x32 ws", wall, "s", 1.5))
                out.append(_record("sim", "resnet18 batch 32 simpy events per second",
                                   rep.run_info["events"] / wall, "events/s", None))
            out.append(_record("sim", f"resnet18 {tag}: tiles", tiles, "tiles", None))
            out.append(_record("sim", f"resnet18 {tag}: simpy events", rep.run_info["events"], "events", None))
            out.append(_record("sim", f"resnet18 {tag}: wall time", wall, "s", None))
    walked = np.array([(p[1], p[2]) for p in points if p[3]], float)
    slope, r2 = _linear_fit(walked[:, 0], walked[:, 1])
    out.append(_record("sim", "wall time per tile, tiles walked one by one (linear fit)", slope * 1e6, "us", None))
    out.append(_record("sim", "linearity of wall time in tiles walked one by one (R^2 of the fit)", r2, "R^2", None))
    every = np.array([(p[0], p[2]) for p in points], float)
    slope, r2 = _linear_fit(every[:, 0], every[:, 1])
    out.append(_record("sim", "wall time per simpy event (linear fit over all runs)", slope * 1e6, "us", None))
    out.append(_record("sim", "linearity of wall time in events (R^2 of the fit)", r2, "R^2", None))
    return out + _bench_gpt2_small(chip, recipe)


def _bench_gpt2_small(chip, recipe: dict) -> list[dict]:
    """Wall time to simulate one ``gpt2_small`` training step at batch 8 (``int4``, imported
    description) on the ``fourbit`` chip, cold (target under 2 s, issue 19), with its tiles
    against the simpy events the run took: the vocabulary projection (8192 x 50257 x 768) alone
    has about 600k tiles per phase, which the periodic jumps (`fourbit.hwsim.periodic`) cross
    in a few events."""
    from fourbit.hwsim.engine import clear_timing_cache, simulate
    from fourbit.traces.transformer import import_transformer

    trace = import_transformer("gpt2_small", 8, recipe)
    clear_timing_cache()
    wall, rep = _timed(lambda: simulate(trace, chip))
    frame = rep.to_frame()
    vocab = frame[frame.layer == frame[frame.phase == "fwd"].layer.iloc[-1]]  # the last forward GEMM
    return [_record("sim", "gpt2_small batch 8 training step on fourbit 32x32 ws", wall, "s", 2.0),
            _record("sim", "gpt2_small batch 8: tiles", int(frame.tiles.sum()), "tiles", None),
            _record("sim", "gpt2_small batch 8: vocabulary projection tiles (3 phases)", int(vocab.tiles.sum()),
                    "tiles", None),
            _record("sim", "gpt2_small batch 8: simpy events", rep.run_info["events"], "events", None)]


def _linear_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Slope of the least-squares line y = a x + b, and its R^2."""
    slope, intercept = np.polyfit(x, y, 1)
    r2 = 1 - np.sum((y - (slope * x + intercept)) ** 2) / max(np.sum((y - y.mean()) ** 2), 1e-30)
    return float(slope), float(r2)


def _step_fn(model: str, ds, recipe: str, batch: int, seed: int = 0) -> Callable[[], float]:
    """A closure running one training step of ``model`` on successive batches of ``ds``."""
    from fourbit.models.layers import Context
    from fourbit.models.recipes import get_recipe
    from fourbit.models.recorder import Recorder
    from fourbit.models.trainer import TrainConfig, grad_scales, train_step
    from fourbit.models.zoo import build_model, set_last_layers

    cfg = TrainConfig(batch_size=batch, seed=seed, lr=0.02)
    rec = get_recipe(recipe)
    net = set_last_layers(build_model(model, ds.input_shape, ds.n_classes, seed), rec.last_layers)
    scales = grad_scales(net, rec)
    ctx = Context(rec, Recorder(), seed=seed)
    velocity: dict = {}
    state = {"i": 0}
    batches = len(ds.x_train) // batch

    def step() -> float:
        i = state["i"] % batches
        state["i"] += 1
        sl = slice(i * batch, (i + 1) * batch)
        ctx.step = state["i"]
        return train_step(net, ctx, ds.x_train[sl], ds.y_train[sl], velocity, scales, cfg.lr, cfg, i)[0]

    return step


def _bench_data(data_dir):
    """MNIST from ``data_dir`` (or $FOURBIT_DATA_DIR); random 1 x 28 x 28 images when neither is
    given (the step-time ratio does not depend on pixel values; no epoch time then)."""
    import os

    from fourbit.models.data import Dataset, load_dataset

    if data_dir is not None or os.environ.get("FOURBIT_DATA_DIR"):
        return load_dataset("mnist", data_dir), True
    rng = np.random.default_rng(0)
    x = rng.random((1024, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 1024)
    return Dataset("random-mnist-shape", x, y, x[:256], y[:256], 10), False


def _token_data(data_dir):
    """tiny-shakespeare from ``data_dir`` (or $FOURBIT_DATA_DIR) when found there; else random
    ids over 65 characters in its shape (the step time does not depend on the characters)."""
    import os

    from fourbit.models.data import Dataset, load_dataset

    if data_dir is not None or os.environ.get("FOURBIT_DATA_DIR"):
        return load_dataset("shakespeare", data_dir)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 65, (512, 64))
    return Dataset("random-shakespeare-shape", x, np.roll(x, -1, axis=1), x[:64], x[:64], 65, None)


def bench_train(quick: bool = False, data_dir=None) -> list[dict]:
    """One training step of ``lenet5`` at batch 64 in ``int4`` (issue 4), ``nvfp4`` and ``luq``
    (issue 18), each / one ``fp32`` step (numpy float32 BLAS), timed in alternating blocks
    (`in_blocks`: training runs one recipe in a loop, and a step timed right after the other
    recipe's BLAS calls shares the cores with OpenBLAS's spinning threads; target <= 3), each
    with the fp32 step timed beside it (the ratio's denominator); and the wall time of one MNIST
    epoch at ``int4`` (all 937 steps and the test-set evaluation; with ``--quick``, 937 x the
    median step). Without MNIST (no ``data_dir``, no $FOURBIT_DATA_DIR) the steps run on random
    MNIST-shaped images and the epoch is left out. And one step of the character transformer
    ``gpt`` (4 blocks of width 128, sequences of 64) at batch 32 in ``int4`` / ``fp32`` (issue 19;
    target <= 3), on tiny-shakespeare or random characters."""
    from fourbit.models.trainer import TrainConfig, train

    ds, real = _bench_data(data_dir)
    fp32 = _step_fn("lenet5", ds, "fp32", 64)
    out = []
    for recipe in ("int4", "nvfp4", "luq"):
        ts, tr = in_blocks(_step_fn("lenet5", ds, recipe, 64), fp32, repeats=9 if quick else 24, rounds=3)
        out += [_record("train", f"lenet5 batch 64 step: {recipe} / fp32", ts / tr, "ratio", 3.0),
                _record("train", f"lenet5 batch 64 {recipe} step", ts * 1e3, "ms", None),
                _record("train", f"lenet5 batch 64 fp32 step (timed beside {recipe})", tr * 1e3, "ms", None)]
        if recipe == "int4":
            int4_step = ts
    tokens = _token_data(data_dir)  # the transformer (issue 19): gpt at batch 32, int4 / fp32
    ts, tr = in_blocks(_step_fn("gpt", tokens, "int4", 32), _step_fn("gpt", tokens, "fp32", 32),
                       repeats=6 if quick else 12, rounds=3)
    out += [_record("train", "gpt batch 32 step: int4 / fp32", ts / tr, "ratio", 3.0),
            _record("train", "gpt batch 32 int4 step", ts * 1e3, "ms", None),
            _record("train", "gpt batch 32 fp32 step (timed beside int4)", tr * 1e3, "ms", None)]
    ts = int4_step
    steps = len(ds.x_train) // 64
    if real and quick:
        out.append(_record("train", f"mnist epoch at int4 (estimate: {steps} x median step)", steps * ts, "s", None))
    elif real:
        t0 = time.perf_counter()
        run = train("lenet5", ds, "int4", config=TrainConfig(epochs=1, batch_size=64), progress=False)
        wall = time.perf_counter() - t0
        out.append(_record("train", f"mnist epoch at int4 ({steps} steps + test evaluation)", wall, "s", None))
        out.append(_record("train", "mnist test accuracy after that epoch", 100 * run.final["test_accuracy"], "%", None))
    return out


def _large_trace(rows: int, rng: np.random.Generator):
    """An imported ResNet-18 training step (batch 32, ``int4``) repeated over steps until the
    ``gemms`` table has ``rows`` rows, with every statistics column filled (fractions, code
    histograms, scales): the widest trace the trainer writes."""
    import pandas as pd

    from fourbit.models.recipes import get_recipe
    from fourbit.traces.io import Trace
    from fourbit.traces.scalesim import import_topology

    one = import_topology("resnet18", 32, get_recipe("int4").describe())
    reps = -(-rows // len(one.gemms))
    g = pd.concat([one.gemms.assign(step=s) for s in range(reps)], ignore_index=True).iloc[:rows].copy()
    for col in g.columns:
        if col.endswith("_frac"):
            g[col] = pd.array(rng.random(rows), dtype="Float64")
        elif col.startswith("grad_code_") or col in ("acc_overflows", "acc_underflows"):
            g[col] = pd.array(rng.integers(0, 10_000, rows), dtype="Int64")
        elif col.endswith("_scale") or col == "grad_scale_log2":
            g[col] = pd.array(rng.integers(-20, 20, rows).astype(float), dtype="Float64")
    o = pd.concat([one.ops.assign(step=s) for s in range(reps)], ignore_index=True)
    kept = pd.MultiIndex.from_frame(g[["step", "layer", "phase"]])
    o = o[pd.MultiIndex.from_frame(o[["step", "layer", "phase"]]).isin(kept)].reset_index(drop=True)
    return Trace(dict(one.meta), g, o, one.metrics)  # the ops of the GEMM rows kept


def bench_trace(quick: bool = False) -> list[dict]:
    """Wall time of `fourbit.traces.read` (checksums and full validation) on a run directory whose
    ``gemms`` table has 100,000 rows with every statistics column filled (target under 2 s,
    issue 5), side by side with pandas reading the same Parquet files without validation."""
    import tempfile
    from pathlib import Path

    import pandas as pd

    from fourbit.traces.io import read

    rows = 100_000
    trace = _large_trace(rows, np.random.default_rng(0))
    with tempfile.TemporaryDirectory() as tmp:
        path = trace.write(Path(tmp) / "run")
        parquet = sorted(path.glob("*.parquet"))
        back = read(path)
        if len(back.gemms) != rows:
            raise AssertionError(f"read {len(back.gemms)} gemms rows, wrote {rows}")
        ts, tr = side_by_side(lambda: read(path), lambda: [pd.read_parquet(f) for f in parquet],
                              repeats=3 if quick else 7, warmup=1)
        size = sum(f.stat().st_size for f in parquet)
    return [_record("trace", f"read a {rows:,}-row trace (validated)", ts, "s", 2.0),
            _record("trace", "pandas.read_parquet of the same tables (no validation)", tr, "s", None),
            _record("trace", "validated read / plain read", ts / tr, "ratio", None),
            _record("trace", "rows in ops table", len(trace.ops), "rows", None),
            _record("trace", "parquet bytes on disk", size, "bytes", None)]


BENCHMARKS: dict[str, Callable[..., list[dict]]] = {"numerics": bench_numerics, "sim": bench_sim,
                                                    "train": bench_train, "trace": bench_trace}


def run_benchmarks(names: list[str], quick: bool = False, data_dir=None) -> list[dict]:
    """Run the named benchmarks (all when ``names`` is empty); returns their records.
    ``data_dir`` holds the MNIST files for ``train``."""
    from fourbit.traces.errors import ConfigError

    names = names or list(BENCHMARKS)
    for n in names:
        if n not in BENCHMARKS:
            raise ConfigError(f"unknown benchmark {n!r}; benchmarks: {', '.join(BENCHMARKS)}")
    records = []
    for n in names:
        records += BENCHMARKS[n](quick=quick, **({"data_dir": data_dir} if n == "train" else {}))
    return records


def format_records(records: list[dict], as_json: bool) -> str:
    """The records as JSON (a list) or as an aligned table with the target and a verdict."""
    if as_json:
        return json.dumps(records, indent=1)
    lines = []
    for r in records:
        verdict = ""
        if r["target"] is not None:
            verdict = f"  target <= {r['target']:g}: {'met' if r['value'] <= r['target'] else 'NOT met'}"
            if r["benchmark"] == "train" and r["value"] < 1:  # a 4-bit step does all of fp32's work and more
                verdict += " (below 1: the machine was busy while it was timed; measure again)"
        lines.append(f"{r['benchmark']:>9}  {r['metric']:<70} {r['value']:>10.3f} {r['unit']}{verdict}")
    return "\n".join(lines)

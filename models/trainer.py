"""The trainer: SGD with momentum on FP32 master weights, a cosine learning-rate schedule,
evaluation, seeds, tqdm progress, and the trace of every GEMM of the recorded steps.

``fourbit.train(model, dataset, recipe, ...) -> Run`` (this module's `train`) is the public entry point; ``fourbit
train`` parses its command line into the same call.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import sys
import tokenize
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field
from tqdm.auto import tqdm

from fourbit.models._kernels import kernels_cached
from fourbit.models.data import Dataset, load_dataset
from fourbit.models.layers import Context, Sequential, softmax_xent
from fourbit.models.quantizers import GradScale
from fourbit.models.recipes import Recipe, get_recipe
from fourbit.models.recorder import Recorder
from fourbit.models.zoo import build_model, set_last_layers
from fourbit.traces import registry, schema
from fourbit.traces.config import StrictModel, first_difference
from fourbit.traces.errors import ConfigError, NumericsError, TraceError, TrainingError
from fourbit.traces.files import atomic_dir, created_dir
from fourbit.traces.io import Trace, read_table

__all__ = ["Run", "TrainConfig", "check_out", "evaluate", "grad_scales", "train", "train_step"]


class TrainConfig(StrictModel):
    """Training hyper-parameters (strict: a wrong type or a value out of range is a
    `ConfigError` naming the field).

    The cosine learning-rate schedule is Loshchilov and Hutter 2017; PACT's L2 on alpha is Choi et
    al. 2018; global gradient-norm clipping (the usual guard of LSTM training) is Pascanu et al.,
    ICML 2013: when the L2 norm of all parameter gradients exceeds ``clip_norm`` they are scaled
    down to it. The final partial batch of an epoch is dropped, so every step has the same shapes.
    """

    PATH = "train"
    epochs: int = Field(20, ge=1, description="passes over the training set")
    batch_size: int = Field(64, ge=1, description="samples per step")
    lr: float = Field(0.1, gt=0, allow_inf_nan=False, description="peak learning rate of the cosine schedule")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(1e-4, ge=0, allow_inf_nan=False,
                                description="L2 weight decay (not on biases and PACT clips)")
    pact_l2: float = Field(1e-4, ge=0, allow_inf_nan=False, description="L2 on PACT's clip alpha")
    clip_norm: float = Field(0.0, ge=0, allow_inf_nan=False,
                             description="clip the global gradient norm to this value (0: off)")
    trace_every: int = Field(0, ge=0, description="also record the trace every that many steps (0: the last step only)")
    seed: int = Field(0, ge=0, description="weights, shuffling and everything random")


@dataclass
class Run:
    """A finished training run: its trace (metadata, GEMMs, ops, metrics), the final metrics and
    the run directory it was written to (None if not written)."""

    trace: Trace
    final: dict
    net: Sequential = field(repr=False)
    path: Path | None = None


def grad_scales(net: Sequential, recipe: Recipe) -> list[GradScale]:
    """Attach GradScale objects to the layers whose gradient formats need one."""
    layers = [layer for layer in net.gemm_layers() if recipe.precision(layer.role).scaled_grads]
    if recipe.grad_scaling == "none" or not layers:
        return []
    if recipe.grad_scaling == "global":
        shared = GradScale(recipe.hidden.grad_target_max() if recipe.hidden.scaled_grads
                           else recipe.precision(layers[0].role).grad_target_max())
        for layer in layers:
            layer.grad_scale = shared
        return [shared]
    scales = []
    for layer in layers:
        layer.grad_scale = GradScale(recipe.precision(layer.role).grad_target_max())
        scales.append(layer.grad_scale)
    return scales


def _sgd(net: Sequential, velocity: dict[str, np.ndarray], lr: float, cfg: TrainConfig) -> None:
    """SGD with momentum on the FP32 master copies: v = m*v + g (+ decay); w -= lr*v."""
    lr32, m32 = np.float32(lr), np.float32(cfg.momentum)
    for p in net.params():
        g = p.grad
        if p.decay and cfg.weight_decay:
            g = g + np.float32(cfg.weight_decay) * p.value
        if p.name.endswith("pact_alpha") and cfg.pact_l2:
            g = g + np.float32(cfg.pact_l2) * p.value
        v = velocity.setdefault(p.name, np.zeros_like(p.value))
        v *= m32
        v += g
        p.value -= lr32 * v
        if p.name.endswith("pact_alpha"):
            np.maximum(p.value, np.float32(2.0**-10), out=p.value)  # PACT needs alpha > 0
        p.grad[...] = 0


def _clip_grads(net: Sequential, ctx: Context, clip_norm: float) -> None:
    """Scale all parameter gradients by clip_norm / ||g|| when their global L2 norm ||g|| exceeds
    ``clip_norm`` (squares summed in float64 by numpy's pairwise sum, parameter by parameter in
    order: the same bits whatever the thread count). The squares and the sum are recorded as a
    ``grad_norm`` op on each GEMM layer's update path (BatchNorm and embedding parameters, a
    small share, are not recorded)."""
    params = net.params()
    norm = math.sqrt(sum(float(np.sum(np.square(p.grad, dtype=np.float64))) for p in params))
    for layer in net.gemm_layers():
        for gemm, count in layer.param_gemms():
            registry.grad_norm(ctx.recorder, gemm, count)
    if norm > clip_norm:
        factor = np.float32(clip_norm / norm)
        for p in params:
            p.grad *= factor


def _step(net: Sequential, ctx: Context, x: np.ndarray, y: np.ndarray, step: int, epoch: int,
          cfg: TrainConfig) -> float:
    """Forward, loss and backward of one batch; returns the loss. Divergence is an error."""
    diverged = (f"at step {step} (epoch {epoch + 1}); training diverged (try a smaller lr than {cfg.lr})")
    with np.errstate(over="ignore", invalid="ignore"):
        try:
            logits = net.forward(x, ctx)
            loss, dlogits = softmax_xent(logits, y)
            registry.loss(ctx.recorder, logits.size)
            if not math.isfinite(loss):
                raise TrainingError(f"loss is {loss} {diverged}")
            net.backward(dlogits, ctx)
        except NumericsError as exc:  # NaN or inf reached a quantizer or a GEMM
            raise TrainingError(f"non-finite values {diverged}: {exc}") from exc
    return loss


def train_step(net: Sequential, ctx: Context, x: np.ndarray, y: np.ndarray, velocity: dict,
               scales: list[GradScale], lr: float, cfg: TrainConfig, step: int = 0,
               epoch: int = 0) -> tuple[float, bool]:
    """One training step: forward, loss, backward, SGD update of the FP32 master weights and
    the GradScale updates; returns (loss, skipped).

    A step in which a scaled backward GEMM overflowed its accumulator is skipped (no update;
    the overflowing layers' GradScale halves), as dynamic loss scaling does. Raises
    TrainingError on divergence (names the step)."""
    try:
        loss = _step(net, ctx, x, y, step, epoch, cfg)
    except TrainingError:
        if not any(s.overflowed for s in scales):
            raise
        loss = float("nan")  # the overflow's aftermath reached a quantizer
    if any(s.overflowed for s in scales):
        for p in net.params():
            p.grad[...] = 0
        update_scales(scales, ctx.recipe)
        return loss, True
    with np.errstate(over="ignore", invalid="ignore"):
        if cfg.clip_norm:
            _clip_grads(net, ctx, cfg.clip_norm)
        _sgd(net, velocity, lr, cfg)
    bad = [p.name for p in net.params() if not np.isfinite(p.value).all()]
    if bad:
        raise TrainingError(f"parameter {bad[0]} became non-finite at step {step} (epoch {epoch + 1}); "
                            f"training diverged (try a smaller lr than {cfg.lr})")
    update_scales(scales, ctx.recipe)
    return loss, False


def update_scales(scales: list[GradScale], recipe: Recipe) -> bool:
    """The GradScale updates after a step's backward pass: each overflowed layer backs off
    (`GradScale.back_off`; True: the step is to be skipped), else every scale takes its reports
    (one report on the largest gradient for one global scale; False)."""
    if any(s.overflowed for s in scales):
        for s in scales:
            s.back_off()
        return True
    for s in scales:
        s.update_global() if recipe.grad_scaling == "global" else s.update()
    return False


SEQUENCE_MODELS = ("lstm", "gpt")
"""Models of token sequences (a data set with a vocabulary); the others classify tensors."""


def check_model_data(model: str, ds) -> None:
    """Raise ConfigError when ``model`` cannot take data set ``ds``: a sequence model on
    feature tensors or a classifier on token sequences."""
    tokens = ds.vocab is not None
    if model in SEQUENCE_MODELS and not tokens:
        raise ConfigError(f"{model} models character sequences (data set shakespeare); data set {ds.name!r} "
                          f"holds feature tensors of shape {ds.input_shape}")
    if model not in SEQUENCE_MODELS and tokens:
        raise ConfigError(f"{model} classifies feature tensors; data set {ds.name!r} holds character sequences "
                          f"(models: {', '.join(SEQUENCE_MODELS)})")


def _lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * step / total))


def evaluate(net: Sequential, recipe: Recipe, x: np.ndarray, y: np.ndarray,
             batch_size: int = 256) -> tuple[float, float]:
    """(mean loss in nats per prediction, accuracy) of ``net`` on (x, y) with the recipe's forward
    numerics; for sequence targets y (N, T) every position is a prediction."""
    ctx = Context(recipe, Recorder(), training=False)
    losses, correct = [], 0
    for i in range(0, len(x), batch_size):
        logits = net.forward(x[i:i + batch_size], ctx)
        loss, _ = softmax_xent(logits, y[i:i + batch_size])
        losses.append(loss * len(logits))
        correct += int(np.count_nonzero(logits.argmax(axis=-1) == y[i:i + batch_size]))
    return float(np.sum(losses) / len(x)), correct / y.size


def _buffers(net: Sequential) -> dict[str, np.ndarray]:
    """Non-trainable state that a checkpoint must keep (BatchNorm running statistics)."""
    out = {}
    for layer in net.all_layers():
        if hasattr(layer, "buffers"):
            out.update(layer.buffers())
    return out


CHECKPOINT = "checkpoint"
MAX_SKIPS = 32  # consecutive overflow-skipped steps before the run is declared diverged


def _save_checkpoint(path: Path, net: Sequential, velocity: dict, scales: list[GradScale], shuffle_state: dict,
                     state: dict, recorder: Recorder, metrics: list[dict]) -> None:
    """Write ``path`` atomically (a temporary directory renamed into place): the parameters,
    momenta and buffers (npz), the scalar state and the shuffling generator's state (JSON), the
    trace rows recorded so far (Parquet)."""
    with atomic_dir(path, marker="state.json") as tmp:
        arrays = {f"param/{p.name}": p.value for p in net.params()}
        arrays.update({f"velocity/{k}": v for k, v in velocity.items()})
        arrays.update({f"buffer/{k}": v for k, v in _buffers(net).items()})
        np.savez(tmp / "arrays.npz", **arrays)
        full = {**state, "grad_scales": [{"exponent": g.exponent, "calibrated": g.calibrated, "held": g.held}
                                 for g in scales],
                "shuffle": shuffle_state, "metrics": metrics}
        (tmp / "state.json").write_text(json.dumps(full, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
        gemms, ops = recorder.tables()
        gemms.to_parquet(tmp / "gemms.parquet", index=False)
        ops.to_parquet(tmp / "ops.parquet", index=False)


def _load_checkpoint(path: Path, net: Sequential, velocity: dict, scales: list[GradScale], shuffle,
                     recorder: Recorder, expect: dict) -> dict:
    """Restore a checkpoint written by `_save_checkpoint`; returns its scalar state. Everything is
    read and checked (`_check_checkpoint`) before any state of the run is changed.

    Raises ConfigError when there is none, it belongs to another run (names the field), or it is
    damaged (unreadable files, missing or extra entries, wrong shapes, types or lengths: names the
    file and the entry)."""
    js = path / "state.json"
    if not js.is_file():
        raise ConfigError(f"--resume: no checkpoint in {path.parent} (runs write one at the end of every epoch, "
                          "and every --checkpoint-every steps)")
    f = js
    try:
        state = json.loads(js.read_text(encoding="utf-8"))
        f = path / "arrays.npz"
        with np.load(f, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError,
            tokenize.TokenError, MemoryError) as exc:  # numpy on a damaged array header: these two too
        raise ConfigError(f"--resume: the checkpoint in {path} is unreadable ({type(exc).__name__} in {f.name}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    try:
        gemms, ops = read_table(path / "gemms.parquet", "gemms"), read_table(path / "ops.parquet", "ops")
    except TraceError as exc:  # names the file
        raise ConfigError(f"--resume: the checkpoint in {path} is damaged: {exc}") from None
    if not isinstance(state, dict) or not isinstance(state.get("run"), dict):
        raise ConfigError(f"--resume: {js} is damaged: no 'run' mapping")
    for key, value in expect.items():
        if state["run"].get(key) != value:
            where, there, here = first_difference(key, state["run"].get(key), value)
            raise ConfigError(f"--resume: the checkpoint in {path.parent} is of another run: {where} is "
                              f"{there!r} in {js}, {here!r} here")
    _check_checkpoint(path, state, arrays, net, scales, shuffle)
    for p in net.params():
        p.value[...] = arrays[f"param/{p.name}"]
    for k in [k for k in arrays if k.startswith("velocity/")]:
        velocity[k[9:]] = arrays[k].copy()
    for k, v in _buffers(net).items():
        v[...] = arrays[f"buffer/{k}"]
    for g, saved in zip(scales, state["grad_scales"], strict=True):
        g.exponent, g.calibrated = int(saved["exponent"]), bool(saved["calibrated"])
        g.held = int(saved.get("held", 0))  # checkpoints from before the growth hold have none
    shuffle.bit_generator.state = state["shuffle"]
    recorder.gemm_rows = [{k: v for k, v in r.items() if not pd.isna(v)} for r in gemms.to_dict("records")]
    recorder.op_rows = ops.to_dict("records")
    return state


def _check_checkpoint(path: Path, state: dict, arrays: dict, net: Sequential, scales: list[GradScale],
                      shuffle) -> None:
    """ConfigError naming the file and the entry when the checkpoint's contents do not fit the
    run: every parameter and buffer present with its shape, momenta only of parameters and of
    their shapes, no foreign arrays, every array of floats and finite, one GradScale entry per
    scale with integer fields in their ranges, integer epoch and position >= 0, metrics rows of
    the metrics table (`fourbit.traces.schema`) and a generator state this generator takes."""
    npz, js = path / "arrays.npz", path / "state.json"

    def bad(where: Path, what: str) -> ConfigError:
        return ConfigError(f"--resume: {where} is damaged: {what}")

    params = {p.name: p.value for p in net.params()}
    want = {f"param/{n}": v.shape for n, v in params.items()} | {f"buffer/{k}": v.shape for k, v in _buffers(net).items()}
    for key, shape in want.items():
        if key not in arrays:
            raise bad(npz, f"no array {key!r}")
        if arrays[key].shape != shape or arrays[key].dtype.kind != "f":
            raise bad(npz, f"{key!r} has shape {arrays[key].shape} ({arrays[key].dtype}), the model's is {shape}")
    for key, value in arrays.items():
        name = key.removeprefix("velocity/")
        if key not in want and (name == key or name not in params or value.shape != params[name].shape):
            raise bad(npz, f"an array {key!r} of shape {value.shape} that belongs to no parameter of this model")
        if value.dtype.kind != "f" or not np.isfinite(value).all():  # a checkpoint is written after a good step
            raise bad(npz, f"{key!r} ({value.dtype}) is not all finite floats")
    for entry, kind, called in (("epoch", int, "an integer >= 0"), ("metrics", list, "a list"),
                                ("grad_scales", list, "a list"), ("shuffle", dict, "a mapping")):
        if not isinstance(state.get(entry), kind) or isinstance(state.get(entry), bool):
            raise bad(js, f"{entry!r} is {state.get(entry)!r}, not {called}")
    for entry in ("epoch", "position", "skipped", "run_of_skips"):
        if not isinstance(state.get(entry, 0), int) or state.get(entry, 0) < 0:
            raise bad(js, f"{entry!r} is {state.get(entry)!r}, not an integer >= 0")
    loss = state.get("epoch_loss", 0.0)
    if not isinstance(loss, int | float) or isinstance(loss, bool) or not math.isfinite(loss):
        raise bad(js, f"'epoch_loss' is {loss!r}, not a finite number")
    if len(state["grad_scales"]) != len(scales):
        raise bad(js, f"{len(state['grad_scales'])} GradScale entries for the model's {len(scales)}")
    for i, (g, scale) in enumerate(zip(state["grad_scales"], scales, strict=True)):
        if not (isinstance(g, dict) and isinstance(g.get("exponent"), int) and isinstance(g.get("calibrated"), bool)
                and isinstance(g.get("held", 0), int)
                and scale.MIN_EXPONENT <= g["exponent"] <= scale.MAX_EXPONENT
                and 0 <= g.get("held", 0) <= scale.growth_hold):
            raise bad(js, f"GradScale entry {i} is {g!r} (exponent: an integer from {scale.MIN_EXPONENT} to "
                          f"{scale.MAX_EXPONENT}, calibrated: true or false, held: an integer from 0 to {scale.growth_hold})")
    if not all(isinstance(m, dict) for m in state["metrics"]):
        raise bad(js, "'metrics' holds an entry that is not a mapping")
    try:
        schema.validate("metrics", schema.from_records("metrics", state["metrics"]))
    except TraceError as exc:
        raise bad(js, f"'metrics': {exc}") from None
    kind = shuffle.bit_generator.state["bit_generator"]
    if state["shuffle"].get("bit_generator") != kind:
        raise bad(js, f"the data order's generator state is not a {kind} state")
    try:
        type(shuffle.bit_generator)().state = state["shuffle"]  # tried on a generator of its own
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise bad(js, f"the data order's generator state is not a {kind} state ({type(exc).__name__}: {exc})") from None


def check_out(out: str | Path | None, *, resume: bool = False, overwrite: bool = False) -> Path | None:
    """The overwrite and resume policy of a run directory, checked before any work.

    A directory holding a finished run (``meta.json``) is replaced only with ``overwrite``; one
    holding the checkpoint of an unfinished run is continued with ``resume`` or started again
    with ``overwrite``; the two exclude each other. A directory holding anything else is never
    written into. Returns ``out`` as a Path (None: no run directory).

    Raises ConfigError naming ``out`` and the flag that would proceed.
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: one continues the run at --out, the other "
                          "replaces it")
    if out is None:
        if resume:
            raise ConfigError("--resume needs --out: the run directory that holds the checkpoint")
        return None
    if str(out) == "":
        raise ConfigError("--out '' names no directory; give the run directory")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file, not a run directory")
    entries = {p.name for p in path.iterdir()} if path.is_dir() else set()
    if entries and not entries & {"meta.json", CHECKPOINT}:
        raise ConfigError(f"--out {str(out)!r} is not empty and holds no fourbit run; choose another --out "
                          "(fourbit replaces only its own run directories)")
    if (path / "meta.json").exists() and not (overwrite or resume):
        raise ConfigError(f"--out {str(out)!r} already holds a run directory; pass --overwrite (overwrite=True) to "
                          "replace it")
    if (path / CHECKPOINT).exists() and not (overwrite or resume):
        raise ConfigError(f"--out {str(out)!r} holds the checkpoint of an unfinished run; pass --resume "
                          "(resume=True) to continue it or --overwrite (overwrite=True) to start again")
    return path


def train(model: str, dataset: str | Dataset, recipe: str | Recipe, *, config: TrainConfig | None = None,
          data_dir: str | None = None, out: str | Path | None = None, progress: bool = True,
          model_params: dict | None = None, resume: bool = False, overwrite: bool = False,
          checkpoint_every: int = 0, **overrides) -> Run:
    """Train ``model`` on ``dataset`` with ``recipe`` and record the trace.

    Parameters
    ----------
    model : str
        A name of `fourbit.models.zoo.MODELS`.
    dataset : str or Dataset
        A name of `fourbit.models.data.DATASETS` (files from ``data_dir``) or a loaded data set.
    recipe : str or Recipe
        A recipe spec of `fourbit.models.recipes.get_recipe` (``int4:radix=2``) or a recipe object.
    config : TrainConfig, optional
        Hyper-parameters; keyword ``overrides`` (epochs=..., seed=...) replace its fields.
    out : path, optional
        The run directory: the trace and metrics are written there at the end, atomically, and a
        checkpoint (``out/checkpoint``) at the end of every epoch.
    checkpoint_every : int
        Also checkpoint every that many steps inside an epoch (0: at the ends of epochs only);
        a run resumed from such a checkpoint is the uninterrupted run, bit for bit (the epoch's
        data order is drawn again from the saved generator state, and the run continues at the
        saved position).
    resume : bool
        Continue the run whose checkpoint is in ``out`` (same model, data, recipe and
        hyper-parameters): the result is the same as an uninterrupted run's.
    overwrite : bool
        Replace a run directory (or start again over a checkpoint) already at ``out``
        (`check_out`).
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    Run

    Raises
    ------
    ConfigError
        Unknown model, data set or recipe; bad hyper-parameters; a batch larger than the data set;
        ``out`` refused by `check_out` or not writable; ``resume`` without a matching checkpoint.
        All before any training; a failed run leaves no new empty directory.
    DataError
        Missing or malformed data files.
    TrainingError
        The loss or a parameter became NaN or infinite (the message names the step).
    """
    cfg = (config or TrainConfig()).replace(**overrides) if overrides else (config or TrainConfig())
    if not isinstance(checkpoint_every, int) or isinstance(checkpoint_every, bool) or checkpoint_every < 0:
        raise ConfigError(f"checkpoint_every = {checkpoint_every!r} is out of range: allowed an integer >= 0 "
                          "(0: at the ends of epochs only)")
    rec_obj = get_recipe(recipe) if isinstance(recipe, str) else recipe
    ds = load_dataset(dataset, data_dir) if isinstance(dataset, str) else dataset
    steps_per_epoch = len(ds.x_train) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size {cfg.batch_size} is larger than the training set ({len(ds.x_train)} samples)")
    check_model_data(model, ds)
    net = set_last_layers(build_model(model, ds.input_shape, ds.n_classes, cfg.seed, **(model_params or {})),
                          rec_obj.last_layers)
    path = check_out(out, resume=resume, overwrite=overwrite)  # after the arguments: their errors come first
    run_id = {"model": model, "dataset": ds.name, "recipe": rec_obj.describe(), "train_config": cfg.model_dump(),
              "model_params": model_params or {}}
    loop = _Loop(net, rec_obj, ds, cfg, run_id, None if path is None else path / CHECKPOINT, checkpoint_every)
    with contextlib.nullcontext() if path is None else created_dir(path):
        if resume:
            loop.restore()
        loop.run(progress, f"{model}/{ds.name}/{rec_obj.name}")
        gemms, ops = loop.recorder.tables()
        last = {m["metric"] + "_" + m["split"]: m["value"] for m in loop.metrics if m["epoch"] == cfg.epochs}
        final = {"test_accuracy": last["accuracy_test"], "test_loss": last["loss_test"],
                 "train_loss": last["loss_train"],
                 "skipped_steps": int(sum(m["value"] for m in loop.metrics if m["metric"] == "skipped_steps"))}
        data_layer = next((g.name for g in net.gemm_layers() if not getattr(g, "needs_input_grad", True)), None)
        meta = {**run_id, "seed": cfg.seed, "batch_size": cfg.batch_size, "epochs": cfg.epochs,
                "steps": cfg.epochs * steps_per_epoch, "final": final, "data_input_layer": data_layer}
        trace = Trace(meta, gemms, ops, schema.from_records("metrics", loop.metrics))
        written = None if path is None else trace.write(path, overwrite=True)  # the policy: check_out
    return Run(trace, final, net, written)


class _Loop:
    """The training loop's state (parameters live in ``net``; momenta, GradScales, the shuffling
    generator, the recorder and the metrics here), its epochs and its checkpoints."""

    def __init__(self, net: Sequential, recipe: Recipe, ds: Dataset, cfg: TrainConfig, run_id: dict,
                 checkpoint: Path | None, checkpoint_every: int = 0) -> None:
        self.net, self.recipe, self.ds, self.cfg, self.checkpoint = net, recipe, ds, cfg, checkpoint
        self.checkpoint_every = checkpoint_every
        self.run_id = json.loads(json.dumps(run_id))  # as the checkpoint's JSON holds it
        self.scales = grad_scales(net, recipe)
        self.recorder = Recorder()
        self.velocity: dict[str, np.ndarray] = {}
        self.shuffle = np.random.default_rng([cfg.seed, 1])
        self.metrics: list[dict] = []
        self.first_epoch = 0
        self.position = 0  # steps of ``first_epoch`` already done (a checkpoint inside an epoch)
        self.epoch_sums = (0.0, 0)  # (train loss summed, skipped steps) of those steps
        self.steps_per_epoch = len(ds.x_train) // cfg.batch_size
        self.run_of_skips = 0  # consecutive overflow-skipped steps
        self.ctx = Context(recipe, self.recorder, seed=cfg.seed)

    def restore(self) -> None:
        """Continue from the checkpoint (ConfigError when there is none, it is another run's, or it
        is damaged: names the file)."""
        state = _load_checkpoint(self.checkpoint, self.net, self.velocity, self.scales, self.shuffle,
                                 self.recorder, self.run_id)
        self.first_epoch, self.metrics = int(state["epoch"]), state["metrics"]
        self.position = int(state.get("position", 0))
        if self.first_epoch > self.cfg.epochs or (self.position and (self.first_epoch == self.cfg.epochs
                                                                    or self.position >= self.steps_per_epoch)):
            raise ConfigError(f"--resume: {self.checkpoint / 'state.json'} is damaged: epoch {self.first_epoch}, "
                              f"step {self.position} lies outside this run ({self.cfg.epochs} epochs of "
                              f"{self.steps_per_epoch} steps)")
        done = {(m["epoch"], m["split"], m["metric"]) for m in self.metrics}
        for epoch in range(1, self.first_epoch + 1):  # what the run reports of every epoch done
            for split, metric in (("train", "loss"), ("test", "loss"), ("test", "accuracy")):
                if (epoch, split, metric) not in done:
                    raise ConfigError(f"--resume: {self.checkpoint / 'state.json'} is damaged: 'metrics' has no "
                                      f"{split} {metric} of epoch {epoch}")
        self.epoch_sums = (float(state.get("epoch_loss", 0.0)), int(state.get("skipped", 0)))
        self.run_of_skips = int(state.get("run_of_skips", 0))

    def run(self, progress: bool, desc: str) -> None:
        """The remaining epochs, a checkpoint after each. With a progress bar on a machine whose
        kernels are not compiled yet, one line says so and `_warm_up` compiles them first, so
        that the bar's rate and ETA measure training steps."""
        if progress and not kernels_cached():
            tqdm.write("compiling kernels: first run on this machine only, about 30 s to a minute", file=sys.stderr)
            self._warm_up()
        total = self.cfg.epochs * self.steps_per_epoch
        with tqdm(total=total, initial=self.first_epoch * self.steps_per_epoch + self.position, desc=desc,
                  disable=not progress, unit="step") as bar:
            for epoch in range(self.first_epoch, self.cfg.epochs):
                self._epoch(epoch, total, bar)
                self._save(epoch + 1, self.shuffle.bit_generator.state)

    def _save(self, epoch: int, shuffle_state: dict, position: int = 0, epoch_loss: float = 0.0,
              skipped: int = 0) -> None:
        """A checkpoint at step ``position`` of epoch ``epoch`` (0-based; position 0: its start),
        with the shuffling generator's state that draws that epoch's data order."""
        if self.checkpoint is None:
            return
        _save_checkpoint(self.checkpoint, self.net, self.velocity, self.scales, shuffle_state,
                         {"run": self.run_id, "epoch": epoch, "position": position, "epoch_loss": epoch_loss,
                          "skipped": skipped, "run_of_skips": self.run_of_skips}, self.recorder, self.metrics)

    def _warm_up(self) -> None:
        """One step of a copy of the model (its own GradScales and momenta, no recorder) on the
        first batch, discarded: the same recipe and arrays compile the same kernels the run
        calls. The run itself is untouched."""
        net = copy.deepcopy(self.net)
        ctx = Context(self.recipe, Recorder(), seed=self.cfg.seed)  # a recorder never started records nothing
        batch = slice(0, self.cfg.batch_size)
        train_step(net, ctx, self.ds.x_train[batch], self.ds.y_train[batch], {}, grad_scales(net, self.recipe),
                   _lr_at(self.cfg, 0, self.cfg.epochs * self.steps_per_epoch), self.cfg)

    def _epoch(self, epoch: int, total: int, bar) -> None:
        cfg, ds, n = self.cfg, self.ds, self.steps_per_epoch
        drawn_from = self.shuffle.bit_generator.state  # what a checkpoint inside this epoch saves
        order = self.shuffle.permutation(len(ds.x_train))
        start, (epoch_loss, skipped) = (self.position, self.epoch_sums) if epoch == self.first_epoch else (0, (0.0, 0))
        for i in range(start, n):
            step = epoch * n + i
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            if step == total - 1 or (cfg.trace_every and step % cfg.trace_every == 0):
                self.recorder.start(step)
            self.ctx.step = step  # keys the step's stochastic roundings and Hadamard signs
            loss, skip = train_step(self.net, self.ctx, ds.x_train[idx], ds.y_train[idx], self.velocity, self.scales,
                                    _lr_at(cfg, step, total), cfg, step, epoch)
            self.recorder.stop()
            self.run_of_skips = self.run_of_skips + 1 if skip else 0
            if self.run_of_skips > MAX_SKIPS:
                raise TrainingError(f"the backward GEMMs overflowed their accumulators {self.run_of_skips} steps in a row "
                                    f"up to step {step} (epoch {epoch + 1}), at every gradient scale tried")
            skipped += skip
            epoch_loss += 0.0 if skip else loss
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", epoch=epoch + 1, refresh=False)
            if self.checkpoint_every and (step + 1) % self.checkpoint_every == 0 and i + 1 < n:
                self._save(epoch, drawn_from, i + 1, epoch_loss, skipped)
        test_loss, test_acc = evaluate(self.net, self.recipe, ds.x_test, ds.y_test)
        end = (epoch + 1) * n
        self.metrics += [
            {"step": end, "epoch": epoch + 1, "split": "train", "metric": "loss",
             "value": epoch_loss / max(n - skipped, 1)},
            {"step": end, "epoch": epoch + 1, "split": "train", "metric": "skipped_steps", "value": float(skipped)},
            {"step": end, "epoch": epoch + 1, "split": "test", "metric": "loss", "value": test_loss},
            {"step": end, "epoch": epoch + 1, "split": "test", "metric": "accuracy", "value": test_acc},
        ]

"""Gradient fidelity: how a recipe's weight gradients compare with a reference recipe's on the
same network, weights and batches.

A 4-bit backward pass changes training through its gradients. Comparing the weight gradients of
``int4`` with those of ``int4-fwd`` (the same INT4 forward pass, FP32 backward) isolates what the
FP4 backward GEMMs do, layer by layer: a cosine well below 1 with a norm ratio above 1 is noise
or bias, a norm ratio below 1 is shrinkage (flushing, rounding toward smaller magnitudes), and a
cosine of the gradients averaged over batches that is no better than the per-batch cosine is a
bias ([P] section 4.1, eq. 2), since independent noise would average out.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fourbit.models.data import Dataset, load_dataset
from fourbit.models.layers import Context, Sequential
from fourbit.models.recipes import Recipe, get_recipe
from fourbit.models.recorder import Recorder
from fourbit.models.trainer import TrainConfig, _buffers, _step, check_model_data, grad_scales, update_scales
from fourbit.models.zoo import build_model
from fourbit.traces.errors import ConfigError, TrainingError

__all__ = ["gradient_fidelity"]


def _weight_grads(net: Sequential, recipe: Recipe, batches: list[tuple[np.ndarray, np.ndarray]],
                  cfg: TrainConfig) -> dict[str, np.ndarray]:
    """Per GEMM layer, the weight gradients (all weight matrices of the layer, flattened and
    concatenated; float64) of every batch, stacked: (batches, weights). Fresh GradScales are
    calibrated on the first batch, which is then run again, and updated after every batch as in
    training; the caller restores the network's own state."""
    layers = net.gemm_layers()
    scales = grad_scales(net, recipe)
    ctx = Context(recipe, Recorder())
    weights = {layer.name: [p for p in layer.params() if p.decay] for layer in layers}
    out: dict[str, list[np.ndarray]] = {layer.name: [] for layer in layers}
    for i, (x, y) in enumerate(batches):
        for _ in range(2 if i == 0 else 1):  # the first pass calibrates the GradScales
            _gradients(net, ctx, x, y, scales, cfg)
        for name, params in weights.items():
            out[name].append(np.concatenate([p.grad.ravel().astype(np.float64) for p in params]))
    return {name: np.stack(g) for name, g in out.items()}


MAX_BACK_OFFS = 16
"""Times one batch is run again with the scales that overflowed halved before giving up."""


def _gradients(net: Sequential, ctx: Context, x: np.ndarray, y: np.ndarray, scales: list, cfg) -> None:
    """The gradients of one batch into the parameters' ``grad``, the GradScales updated as in
    training (`fourbit.models.trainer.update_scales`); a batch whose scaled GEMMs overflowed is
    run again with the backed-off scales, as the trainer's next step would.

    Raises TrainingError when it still overflows after `MAX_BACK_OFFS` tries, or diverges."""
    for _ in range(MAX_BACK_OFFS):
        for p in net.params():
            p.grad[...] = 0
        try:
            _step(net, ctx, x, y, 0, 0, cfg)
        except TrainingError:
            if not any(s.overflowed for s in scales):
                raise  # not the aftermath of an overflow
        if not update_scales(scales, ctx.recipe):
            return
    raise TrainingError(f"the backward GEMMs overflowed their accumulators {MAX_BACK_OFFS} times on one batch "
                        "with ever smaller gradient scales")


def _cosine(u: np.ndarray, v: np.ndarray) -> float:
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    return float(np.dot(u, v) / (nu * nv)) if nu and nv else float("nan")


def gradient_fidelity(model: str, dataset: str | Dataset, recipe: str | Recipe = "int4",
                      reference: str | Recipe = "int4-fwd", *, batches: int = 8, batch_size: int = 32,
                      seed: int = 0, data_dir: str | None = None, model_params: dict | None = None,
                      net: Sequential | None = None) -> pd.DataFrame:
    """Compare the weight gradients of ``recipe`` with those of ``reference``, per GEMM layer.

    The network is ``model`` built with ``seed`` (at initialisation) or ``net`` (e.g. a trained
    `Run.net`; its weights, BatchNorm statistics and GradScales are left as they were). ``batches`` training batches of ``batch_size``
    samples, drawn without replacement by ``numpy.random.default_rng(seed)``, go through both
    recipes.

    Returns a DataFrame with a row per GEMM layer: ``layer``, ``cosine`` (mean over batches of
    the cosine between the two gradients), ``norm_ratio`` (mean of |g_recipe| / |g_reference|),
    ``projection`` (mean of <g_recipe, g_reference> / |g_reference|^2: the part of the reference
    gradient that the recipe's update carries) and ``cosine_of_mean`` (cosine of the gradients
    averaged over the batches). Undefined values (a zero gradient) are NaN.

    Raises ConfigError for an unknown model or recipe, a model on the wrong kind of data, or
    ``batches * batch_size`` larger than the training set; DataError for missing data files.
    """
    ds = load_dataset(dataset, data_dir) if isinstance(dataset, str) else dataset
    if batches < 1 or batch_size < 1:
        raise ConfigError(f"batches and batch_size must be >= 1, got {batches} and {batch_size}")
    if batches * batch_size > len(ds.x_train):
        raise ConfigError(f"batches * batch_size = {batches * batch_size} is larger than the training set "
                          f"({len(ds.x_train)} samples)")
    rec, ref = (get_recipe(r) if isinstance(r, str) else r for r in (recipe, reference))
    if net is None:
        check_model_data(model, ds)
        net = build_model(model, ds.input_shape, ds.n_classes, seed, **(model_params or {}))
    idx = np.random.default_rng(seed).choice(len(ds.x_train), batches * batch_size, replace=False)
    data = [(ds.x_train[i], ds.y_train[i]) for i in idx.reshape(batches, batch_size)]
    cfg = TrainConfig(batch_size=batch_size, seed=seed)
    saved_buffers = {k: v.copy() for k, v in _buffers(net).items()}
    saved_scales = [(layer, layer.grad_scale) for layer in net.gemm_layers()]
    try:
        g_ref = _weight_grads(net, ref, data, cfg)
        g_rec = _weight_grads(net, rec, data, cfg)
    finally:  # the training-mode passes moved the BatchNorm statistics in place
        for k, v in _buffers(net).items():
            v[...] = saved_buffers[k]
        for layer, scale in saved_scales:
            layer.grad_scale = scale
        for p in net.params():
            p.grad[...] = 0
    rows = []
    for name, a in g_ref.items():
        b = g_rec[name]
        sq = np.einsum("ij,ij->i", a, a)
        rows.append({
            "layer": name,
            "cosine": float(np.mean([_cosine(u, v) for u, v in zip(a, b, strict=True)])),
            "norm_ratio": float(np.mean(np.linalg.norm(b, axis=1) / np.sqrt(sq))) if sq.all() else float("nan"),
            "projection": float(np.mean(np.einsum("ij,ij->i", a, b) / sq)) if sq.all() else float("nan"),
            "cosine_of_mean": _cosine(a.mean(axis=0), b.mean(axis=0)),
        })
    return pd.DataFrame(rows)

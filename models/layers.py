"""Quantized layers: forward and backward side by side, every GEMM through the active recipe's
numerics (`run_gemm`) and through the one trace recorder.

Tensors are float32 numpy arrays (batch first). Parameters are FP32 master copies (`Param`);
each step re-quantizes them as the recipe says. Backward returns the gradient of the layer's
input and accumulates parameter gradients into ``Param.grad``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from models import numerics
from models.quantizers import (
    GradScale,
    QTensor,
    pact_backward,
    quantize_act,
    quantize_grad,
    quantize_weight,
)
from models.recipes import LayerPrecision, Recipe
from models.recorder import Recorder
from traces.formats import Accumulator
from traces.lowering import GemmShape, linear

__all__ = ["Context", "Layer", "Linear", "Param", "ReLU", "Sequential", "run_gemm", "softmax_xent"]


@dataclass
class Param:
    """A trainable FP32 master tensor and its gradient (same shape, float32)."""

    name: str
    value: np.ndarray
    grad: np.ndarray = field(init=False)
    decay: bool = True  # weight decay applies (not to biases and clip values)

    def __post_init__(self) -> None:
        self.value = np.ascontiguousarray(self.value, dtype=np.float32)
        self.grad = np.zeros_like(self.value)


@dataclass
class Context:
    """What a layer needs besides its input: the recipe, the recorder, train or eval mode."""

    recipe: Recipe
    recorder: Recorder = field(default_factory=Recorder)
    training: bool = True


def run_gemm(ctx: Context, layer: Layer, phase: str, a: QTensor, b: QTensor,
             acc: Accumulator | None, out_format: str, shape: GemmShape, *,
             extra_scale: float = 1.0, geometry: dict | None = None,
             grad_scale: GradScale | None = None) -> np.ndarray:
    """One GEMM of a layer, as the chip computes it; returns the real-valued result (float32).

    The raw sum r = a.values @ b.values uses the accumulator model (`numerics.gemm_with_stats`;
    ``acc=None`` is the host's float32 BLAS of the FP32 baseline). The scale
    a.scale * b.scale * extra_scale is applied once, in FP32 (design.md section 3): an integer
    accumulator's result is scaled and then rounded to ``out_format`` (INT4 forward: int32 ->
    FP16); a float accumulator's result is rounded to ``out_format`` and then scaled, so that
    unscaled gradients (x 1/GradScale) stay in FP32 ([P] section 3.2; technique.md 6, item 13).
    """
    if a.values.shape != (shape.M, shape.K) or b.values.shape != (shape.K, shape.N):
        raise AssertionError(f"{layer.name} {phase}: operands {a.values.shape} x {b.values.shape} "
                             f"do not match the lowering {shape}")
    acc_stats = None
    if acc is None:
        raw = a.values.astype(np.float32) @ b.values.astype(np.float32)
        acc_name = "fp32/g1"
    else:
        raw, acc_stats = numerics.gemm_with_stats(a.values, b.values, acc)
        acc_name = acc.name
    scale = np.float32(a.scale) * np.float32(b.scale) * np.float32(extra_scale)
    integer_acc = acc is not None and acc.format in ("int32", "exact")
    if integer_acc:
        out = _round_to(raw.astype(np.float32) * scale, out_format)
    else:
        out = _round_to(raw, out_format).astype(np.float32) * scale
    ctx.recorder.gemm(layer.name, layer.layer_type, phase, shape, a, b, acc_name, out_format,
                      acc_stats=acc_stats, geometry=geometry,
                      grad_scale_log2=None if grad_scale is None else float(grad_scale.exponent))
    return out.astype(np.float32, copy=False)


def _round_to(x: np.ndarray, fmt: str) -> np.ndarray:
    if fmt == "fp32":
        return np.asarray(x, np.float32)
    return numerics.quantize_float(x, fmt)[0].astype(np.float32)


class Layer:
    """Base of every layer: ``forward(x, ctx)`` and ``backward(dy, ctx)``."""

    layer_type = "none"
    role = "hidden"

    def __init__(self, name: str) -> None:
        self.name = name

    def params(self) -> list[Param]:
        return []

    def forward(self, x: np.ndarray, ctx: Context) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def backward(self, dy: np.ndarray, ctx: Context) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


class Linear(Layer):
    """Fully connected layer y = x W^T + b (x: (B, I), W: (O, I), y: (B, O)).

    The input is quantized by the role's activation quantizer (PACT keeps a trained clip
    ``alpha`` per layer), the FP32 master weight by its weight quantizer (SAWB, every step); the
    three GEMMs are lowered as in `traces.lowering.linear`.
    """

    layer_type = "linear"

    def __init__(self, name: str, in_features: int, out_features: int, rng: np.random.Generator,
                 role: str = "hidden", pact_alpha: float = 8.0) -> None:
        super().__init__(name)
        self.role = role
        std = np.sqrt(2.0 / in_features)  # He et al. 2015 initialisation for ReLU networks
        self.weight = Param(f"{name}.weight", rng.standard_normal((out_features, in_features)) * std)
        self.bias = Param(f"{name}.bias", np.zeros(out_features), decay=False)
        self.alpha = Param(f"{name}.pact_alpha", np.array([pact_alpha]), decay=False)
        self.grad_scale: GradScale | None = None
        self._cache: tuple | None = None

    def params(self) -> list[Param]:
        return [self.weight, self.bias, self.alpha]

    def _prec(self, ctx: Context) -> LayerPrecision:
        return ctx.recipe.precision(self.role)

    def forward(self, x: np.ndarray, ctx: Context) -> np.ndarray:
        prec = self._prec(ctx)
        rec = ctx.recorder
        batch, in_f = x.shape
        alpha = float(self.alpha.value[0])
        xq = quantize_act(x, prec.act, alpha)
        if prec.act != "fp32":
            rec.op("quantize_uniform" if prec.act.startswith("uint4") else "cast", x.size, "fp32",
                   xq.format.name, default=(self.name, "fwd"))
        wq = quantize_weight(self.weight.value, prec.weight)
        shapes = linear(batch, in_f, self.weight.value.shape[0])
        y = run_gemm(ctx, self, "fwd", xq, wq.T, prec.acc_fwd, prec.out, shapes["fwd"])
        y += self.bias.value
        rec.op("bias_add", y.size, prec.out, "fp32")
        self._cache = (x, xq, wq, shapes)
        return y

    def backward(self, dy: np.ndarray, ctx: Context) -> np.ndarray:
        prec = self._prec(ctx)
        rec = ctx.recorder
        x, xq, wq, shapes = self._cache
        gs = self.grad_scale
        if gs is not None:
            gs.observe(float(np.max(np.abs(dy))) if dy.size else 0.0)
            rec.op("maxabs", dy.size, "fp32", "fp32", default=(self.name, "bwd_weight"))
        s = 1.0 if gs is None else gs.scale
        scaled = dy * np.float32(s)
        g_weight = quantize_grad(scaled, prec.grad_weight, ctx.recipe.tie)
        g_data = g_weight if prec.grad_data == prec.grad_weight else quantize_grad(scaled, prec.grad_data, ctx.recipe.tie)
        for g in {id(g_weight): g_weight, id(g_data): g_data}.values():
            if g.format.name != "fp32":
                rec.op("quantize_log" if g.codes is not None else "cast", dy.size, "fp32",
                       g.format.name, default=(self.name, "bwd_weight"))
        inv = 1.0 / s
        # bwd_weight first: the recorder attributes the next layer's ops to bwd_data's output path
        dw = run_gemm(ctx, self, "bwd_weight", g_weight.T, xq, prec.acc_bwd_weight, prec.out,
                      shapes["bwd_weight"], extra_scale=inv, grad_scale=gs)
        self.weight.grad += dw
        self.bias.grad += dy.sum(axis=0)
        rec.op("sgd_momentum", self.weight.value.size, prec.out, "fp32", layer=self.name,
               phase="bwd_weight")
        if prec.weight == "int4_sawb":
            rec.op("moments", self.weight.value.size, "fp32", "fp32", layer=self.name, phase="bwd_weight")
            rec.op("quantize_uniform", self.weight.value.size, "fp32", "int4", layer=self.name,
                   phase="bwd_weight")
        dx = run_gemm(ctx, self, "bwd_data", g_data, wq, prec.acc_bwd_data, prec.out,
                      shapes["bwd_data"], extra_scale=inv, grad_scale=gs)
        if prec.act == "uint4_pact":
            dx, dalpha = pact_backward(dx, x, float(self.alpha.value[0]))
            self.alpha.grad[0] += dalpha
            rec.op("pact_bwd", dx.size, "fp32", "fp32")
        return dx


class ReLU(Layer):
    """max(x, 0), in FP32 (activation functions stay in high precision, design.md section 3)."""

    layer_type = "relu"

    def forward(self, x: np.ndarray, ctx: Context) -> np.ndarray:
        self._mask = x > 0
        ctx.recorder.op("relu", x.size, "fp32", "fp32", default=(self.name, "fwd"))
        return np.where(self._mask, x, 0.0).astype(np.float32)

    def backward(self, dy: np.ndarray, ctx: Context) -> np.ndarray:
        ctx.recorder.op("relu_bwd", dy.size, "fp32", "fp32", default=(self.name, "bwd_data"))
        return np.where(self._mask, dy, 0.0).astype(np.float32)


class Sequential(Layer):
    """Layers applied in order; backward in reverse order."""

    def __init__(self, name: str, layers: list[Layer]) -> None:
        super().__init__(name)
        self.layers = layers

    def params(self) -> list[Param]:
        return [p for layer in self.layers for p in layer.params()]

    def gemm_layers(self) -> list[Layer]:
        return [layer for layer in self.layers if layer.layer_type in ("linear", "conv2d", "dwconv2d")]

    def forward(self, x: np.ndarray, ctx: Context) -> np.ndarray:
        for layer in self.layers:
            x = layer.forward(x, ctx)
        return x

    def backward(self, dy: np.ndarray, ctx: Context) -> np.ndarray:
        for layer in reversed(self.layers):
            dy = layer.backward(dy, ctx)
        return dy


def softmax_xent(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy (nats per sample) and its gradient wrt the logits.

    logits: (B, classes) float32; labels: (B,) int. Computed in float64; gradient float32.
    """
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    b = logits.shape[0]
    loss = float(-logp[np.arange(b), labels].mean())
    grad = np.exp(logp)
    grad[np.arange(b), labels] -= 1.0
    return loss, (grad / b).astype(np.float32)

"""Quantized layers: forward and backward side by side, every GEMM through the active recipe's
numerics (`run_gemm`) and through the one trace recorder.

Tensors are float32 numpy arrays, batch first (images NCHW, sequences B x T x features).
Parameters are FP32 master copies (`Param`); each step re-quantizes them as the recipe says.
``backward`` returns the gradient of the layer's input and accumulates parameter gradients into
``Param.grad``. GEMM layers (`Linear`, `Conv2d`, `LSTM`) share `QuantGemmLayer`: quantize the
input (PACT, or SAWB's signed range for signed inputs) and the weight (SAWB), and on the way back
scale the output gradient (GradScale), quantize it twice (TPR: the even phase for ``bwd_data``,
the odd phase for ``bwd_weight``) and unscale the GEMM results.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace

import numpy as np

from fourbit.models import numerics
from fourbit.models.quantizers import GradScale, QTensor
from fourbit.models.recipes import LayerPrecision, Recipe
from fourbit.models.recorder import Recorder
from fourbit.traces import registry, schema
from fourbit.traces.errors import ConfigError, NumericsError
from fourbit.traces.formats import Accumulator, FloatFormat, Format, get_format
from fourbit.traces.lowering import GemmShape, conv2d, conv_output_size, linear, operand_tensors

__all__ = [
    "GELU", "AvgPool2d", "BatchNorm2d", "Context", "Conv2d", "DepthwiseConv2d", "Embedding", "Flatten", "GemmLayer",
    "LSTM", "Layer", "LayerNorm", "Linear", "MaxPool2d", "Param", "QuantGemmLayer", "ReLU", "Residual",
    "SelfAttention", "Sequential", "TokenPositionEmbedding", "run_gemm", "softmax_xent",
]


@dataclass
class Param:
    """A trainable FP32 master tensor and its gradient (same shape, float32)."""

    name: str
    value: np.ndarray
    grad: np.ndarray = field(init=False)
    decay: bool = True  # weight decay applies (not to biases, BN and clip values)

    def __post_init__(self) -> None:
        self.value = np.ascontiguousarray(self.value, dtype=np.float32)
        self.grad = np.zeros_like(self.value)


@dataclass
class Context:
    """What a layer needs besides its input: the recipe, the recorder, train or eval mode, and
    the run's seed and current step (the keys of stochastic rounding and Hadamard signs)."""

    recipe: Recipe
    recorder: Recorder = field(default_factory=Recorder)
    training: bool = True
    seed: int = 0
    step: int = 0

    def key(self, *names: str | int) -> tuple[int, int, int]:
        """(seed, step, tensor id) of the tensor ``names`` (e.g. layer, "dy", copy): the tensor id
        is the CRC-32 of the dotted names, the same in every run and process."""
        return self.seed, self.step, zlib.crc32(".".join(map(str, names)).encode())


def run_gemm(ctx: Context, layer: Layer, phase: str, a: QTensor, b: QTensor,
             acc: Accumulator | None, out_format: Format | str, shape: GemmShape, *,
             extra_scale: float = 1.0, geometry: dict | None = None,
             grad_scale: GradScale | None = None, compute: bool = True,
             tensor_prefix: str | None = None, roles: tuple[str, str, str] | None = None,
             tensors: tuple[tuple[str, int], tuple[str, int]] | None = None) -> np.ndarray | None:
    """One GEMM of a layer, as the chip computes it; returns the real-valued result (float32).
    ``compute=False`` records the GEMM without computing it (the data gradient of the network's
    input layer, which training discards; no accumulator events are recorded) and returns None.

    The raw sum r = a.values @ b.values uses the accumulator model (`numerics.gemm_with_stats`;
    ``acc=None`` is the host's float32 BLAS of the FP32 baseline). Per-tensor scales
    a.scale * b.scale * extra_scale are applied once, in FP32 (design.md section 3): an integer
    accumulator's result is scaled and then rounded to ``out_format`` (INT4 forward: int32 ->
    FP16); a float accumulator's result is rounded to ``out_format`` and then scaled, so that
    unscaled gradients (x 1/GradScale) stay in FP32 ([P] section 3.2; technique.md 6, item 13).
    Two operands block-scaled along K alike run the block-scaled GEMM
    (`numerics.gemm_block_with_stats`: exact block sums times both block scales, one rounding per
    add, the tensor scales once at the end). Otherwise a block-scaled operand (next to a
    per-tensor scaled one, or blocked along another axis) enters the GEMM as values * scales
    (exact when the scales are powers of two, or when the products fit in FP32; `numerics.gemm`
    refuses operands that are not exact in FP32), so it needs a float or exact accumulator, not an
    integer one (a NumericsError otherwise); its tensor scale joins the result's scale.
    Grouped GEMMs (``shape.groups`` > 1) take a (G, M, K) and b (G, K, N) and return (G, M, N).
    The trace names the tensors the operands are copies of (``tensors``; default a weight
    layer's after ``tensor_prefix`` or the layer's name, `fourbit.traces.lowering.operand_tensors`)
    and their ``roles`` (default a weight layer's).
    """
    out_format = get_format(out_format)
    if tensors is None:
        prec = ctx.recipe.precision(layer.role)
        tensors = operand_tensors(tensor_prefix or layer.name, phase, prec.separate_grad_copies,
                                  prec.separate_act_copies, prec.separate_weight_copies)
    g = shape.groups
    a_shape = (shape.M, shape.K) if g == 1 else (g, shape.M, shape.K)
    b_shape = (shape.K, shape.N) if g == 1 else (g, shape.K, shape.N)
    if a.values.shape != a_shape or b.values.shape != b_shape:
        raise AssertionError(f"{layer.name} {phase}: operands {a.values.shape} x {b.values.shape} "
                             f"do not match the lowering {shape}")
    acc_stats = None
    if not compute:
        ctx.recorder.gemm(layer.name, layer.layer_type, phase, shape, a, b,
                          "fp32/g1" if acc is None else acc.name, out_format.name, geometry=geometry,
                          grad_scale_log2=None if grad_scale is None else float(grad_scale.exponent),
                          tensors=tensors, roles=roles)
        return None
    first = 0 if g > 1 else None
    if acc is not None and numerics.blocks_along_k(_group(a, first), _group(b, first)):
        raw, acc_stats = _per_group(g, lambda i: numerics.gemm_block_with_stats(_group(a, i), _group(b, i), acc))
        scale, acc_name = np.float32(1.0), acc.name
    else:
        av, bv, scale = _scaled_operands(a, b, acc)
        if acc is None:
            raw = np.matmul(av.astype(np.float32), bv.astype(np.float32))
            acc_name = "fp32/g1"
        elif g == 1:
            raw, acc_stats = numerics.gemm_with_stats(av, bv, acc)
            acc_name = acc.name
        else:  # one validation and plan for the G groups (attention: B x heads of them)
            raw, acc_stats = numerics.gemm_groups_with_stats(av, bv, acc)
            acc_name = acc.name
    scale = scale * np.float32(extra_scale)
    integer_acc = acc is not None and acc.sums_exactly
    if grad_scale is not None:  # the sums overflowed (inf, or inf - inf = NaN inside them)
        raw = _overflow_to_zero(raw, grad_scale)
    if integer_acc:
        out = _round_to(raw.astype(np.float32) * scale, out_format)
    elif acc is not None and acc.value_format == out_format:  # its sums are values of the output format already
        out = raw.astype(np.float32) * scale
    else:  # float accumulator values up to fp32 are exact in float32
        out = _round_to(raw.astype(np.float32), out_format) * scale
    if grad_scale is not None:  # or their output format did
        out = _overflow_to_zero(out, grad_scale)
    ctx.recorder.gemm(layer.name, layer.layer_type, phase, shape, a, b, acc_name, out_format.name,
                      acc_stats=acc_stats, geometry=geometry,
                      grad_scale_log2=None if grad_scale is None else float(grad_scale.exponent),
                      tensors=tensors, roles=roles)
    return out.astype(np.float32, copy=False)


def _per_group(g: int, gemm_of) -> tuple[np.ndarray, numerics.GemmStats]:
    """``gemm_of(None)`` for one GEMM, else the G results of ``gemm_of(i)`` stacked, their
    accumulator events summed."""
    if g == 1:
        return gemm_of(None)
    parts = [gemm_of(i) for i in range(g)]
    stats = numerics.GemmStats(sum(p[1].overflows for p in parts), sum(p[1].underflows for p in parts),
                               sum(p[1].nonfinite_outputs for p in parts), parts[0][1].path)
    return np.stack([p[0] for p in parts]), stats


def _group(q: QTensor, i: int | None) -> QTensor:
    """Group ``i`` of a grouped operand (values and block scales sliced alike); ``q`` for None."""
    if i is None:
        return q
    return q.with_values(q.values[i], scales=q.scales if q.scaling.kind == "tensor" else q.scales[i])


def _overflow_to_zero(x: np.ndarray, grad_scale: GradScale) -> np.ndarray:
    """``x`` with its non-finite values (an overflowed scaled gradient GEMM) set to zero, and
    ``grad_scale.overflowed`` set: the trainer skips the step and halves this scale. The rest of
    the skipped step runs on finite values, so its trace records every GEMM."""
    bad = ~np.isfinite(x)
    if not bad.any():
        return x
    grad_scale.overflowed = True
    return np.where(bad, np.zeros((), x.dtype), x)


def _scaled_operands(a: QTensor, b: QTensor, acc: Accumulator | None) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """The operand arrays a GEMM sums and the per-tensor scale left to apply to its result: a
    per-tensor scaled operand as its values (its scale joins the result's), a block-scaled one as
    values * scales (see `run_gemm`)."""
    scale = np.float32(1.0)
    arrays = []
    for q in (a, b):
        if q.scaling.kind == "tensor":
            arrays.append(q.values)
            scale = scale * np.float32(q.scale)
            continue
        if acc is not None and acc.is_integer:
            raise NumericsError(f"a {q.scaling.kind}-scaled {q.format.name} operand is summed with its block "
                                f"scales applied, which an integer accumulator ({acc.name}) cannot; use a float "
                                "or exact accumulator")
        arrays.append(q.values.astype(np.float64) * q.scaling.expand(q.scales, q.values.shape))
        scale = scale * np.float32(q.tensor_scale)
    return arrays[0], arrays[1], scale


def _round_to(x: np.ndarray, fmt: Format) -> np.ndarray:
    """Round ``x`` to ``fmt`` (a format that holds every float32 value keeps it)."""
    if isinstance(fmt, FloatFormat) and fmt.dtype == np.dtype(np.float32):
        return np.asarray(x, np.float32)
    return numerics.quantize_float(x, fmt, dtype=np.float32)[0]


class Layer(ABC):
    """Base of every layer: ``forward(x, ctx)`` and ``backward(dy, ctx)``."""

    layer_type = "none"
    role = "hidden"

    def __init__(self, name: str) -> None:
        self.name = name

    def params(self) -> list[Param]:
        return []

    def children(self) -> list[Layer]:
        return []

    @abstractmethod
    def forward(self, x: np.ndarray, ctx: Context) -> np.ndarray:
        """The layer's output for input ``x``; records its GEMMs and ops while a step is recorded."""

    @abstractmethod
    def backward(self, dy: np.ndarray, ctx: Context) -> np.ndarray:
        """The gradient of the input for the output gradient ``dy``; accumulates parameter
        gradients into ``Param.grad``."""


# ---------------------------------------------------------------------------------------------
# GEMM layers
# ---------------------------------------------------------------------------------------------
class GemmLayer(Layer):
    """What every layer with GEMMs shares: its role (which precision of the recipe it takes), its
    GradScale, and the scaling and quantization of its output gradients."""

    def __init__(self, name: str, role: str = "hidden") -> None:
        super().__init__(name)
        self.role = role
        self.grad_scale: GradScale | None = None

    def precision(self, ctx: Context) -> LayerPrecision:
        return ctx.recipe.precision(self.role)

    def param_gemms(self) -> list[tuple[str, int]]:
        """(GEMM layer name, parameters) for each GEMM whose bwd_weight output path updates
        parameters of this layer (none for a layer without weights)."""
        return []

    def quant_grads(self, dy: np.ndarray, ctx: Context, observe: bool = True,
                    gemm: str | None = None, part: tuple = ()) -> tuple[QTensor, QTensor, float]:
        """Scale the output gradient (rows x columns) by GradScale (observing its max), quantize
        it for ``bwd_weight`` (reducing along the rows; after the random Hadamard transform of the
        precision's ``rht``) and ``bwd_data`` (reducing along the columns; the two TPR phases);
        returns (weight grad operand, data grad operand, 1/scale). ``gemm`` names the GEMM the ops
        belong to and keys the random bits (default the layer); ``part`` (e.g. an LSTM's GEMM and
        time step) is added to the keys, so that each quantization of a layer's gradients draws
        its own bits."""
        prec = self.precision(ctx)
        name = gemm or self.name
        gs = self.grad_scale
        if gs is not None and observe:
            gs.observe(float(np.max(np.abs(dy))) if dy.size else 0.0)
        s = 1.0 if gs is None else gs.scale
        scaled = dy * np.float32(s)
        g_weight = _quantize(prec.grad_weight, _rht(scaled, prec.rht, ctx, name, part), ctx, name, "dy", 0, axis=0,
                             part=part)
        if prec.rht:  # the transform's factor: (H dY)(H X) = rht * dY X; 1/rht is exact (a power of two)
            g_weight = _divided(g_weight, prec.rht)
        g_data = _quantize(prec.grad_data, scaled, ctx, name, "dy", 1, axis=-1, part=part) if prec.separate_grad_copies \
            else g_weight
        copies = [(prec.grad_weight.op, g_weight.format.name)]
        if prec.separate_grad_copies:
            copies.append((prec.grad_data.op, g_data.format.name))
        registry.quantize_gradient(ctx.recorder, name, dy.size, gs is not None, copies, hadamard_block=prec.rht)
        return g_weight, g_data, 1.0 / s


def _divided(q: QTensor, factor: int) -> QTensor:
    """``q`` with its real value divided by ``factor`` (a power of two: exact), through its
    per-tensor scale (or the tensor scale above block scales)."""
    if q.scaling.kind == "tensor":
        return replace(q, scales=q.scales / factor)
    return replace(q, tensor_scale=q.tensor_scale / factor)


def _quantize(quantizer, x: np.ndarray, ctx: Context, layer: str, tensor: str, copy: int, *, axis: int = -1,
              alpha: float | None = None, part: tuple = ()) -> QTensor:
    """``quantizer(x)`` reducing along ``axis``, keyed by (layer, tensor, copy, *part) when it
    rounds stochastically."""
    return quantizer(x, alpha, axis=axis, key=ctx.key(layer, tensor, copy, *part) if quantizer.stochastic else None)


def _rht(x: np.ndarray, block: int, ctx: Context, layer: str, part: tuple = ()) -> np.ndarray:
    """``x`` after the random Hadamard transform along its rows (the K of ``bwd_weight``) in
    blocks of ``block``, with the signs of the key (layer, "rht", *part) (both inputs of the GEMM
    use the same); ``x`` itself for block 0.

    Raises ConfigError when the rows are not a multiple of the block."""
    if not block:
        return x
    if x.shape[0] % block:
        raise ConfigError(f"{layer}: bwd_weight reduces over {x.shape[0]} rows, not a multiple of the Hadamard block "
                          f"rht={block}; use a batch size that makes it one")
    return numerics.hadamard_transform(x, block, ctx.key(layer, "rht", *part), axis=0)


class QuantGemmLayer(GemmLayer):
    """What the GEMM layers with weights share: the FP32 master weight (and bias), PACT's trained
    clip, and the quantization of inputs and weights per the recipe's precision for the layer's
    role."""

    signed_input = False  # inputs can be negative: SAWB's signed range instead of PACT
    needs_input_grad = True  # False for the network's input layer: bwd_data is recorded, not run

    def __init__(self, name: str, weight: np.ndarray, bias: bool, role: str = "hidden",
                 pact_alpha: float = 8.0) -> None:
        super().__init__(name, role)
        self.weight = Param(f"{name}.weight", weight)
        self.bias = Param(f"{name}.bias", np.zeros(weight.shape[0]), decay=False) if bias else None
        self.alpha = Param(f"{name}.pact_alpha", np.array([pact_alpha]), decay=False)

    def params(self) -> list[Param]:
        return [p for p in (self.weight, self.bias, self.alpha) if p is not None]

    def input_quantizer(self, ctx: Context):
        prec = self.precision(ctx)
        return prec.signed_act if self.signed_input else prec.act

    def quant_input(self, x: np.ndarray, ctx: Context) -> QTensor:
        """The input as ``fwd`` reads it (reducing along its last axis)."""
        quantizer = self.input_quantizer(ctx)
        q = _quantize(quantizer, x, ctx, self.name, "x", 0, alpha=float(self.alpha.value[0]))
        if quantizer.op is not None:
            registry.quantize_input(ctx.recorder, self.name, x.size, quantizer.op, q.format.name)
        return q

    def input_for_weight_grad(self, x: np.ndarray, xq: QTensor, ctx: Context, part: tuple = ()) -> QTensor:
        """The input as ``bwd_weight`` reads it (reducing along its rows): ``fwd``'s copy, or its
        own (1-D blocks along the rows; the random Hadamard transform first, then a signed
        quantizer: the transform makes values of both signs). ``part`` keys it as `quant_grads`
        keys the gradient the GEMM pairs it with (the same Hadamard signs)."""
        prec = self.precision(ctx)
        if not prec.separate_act_copies:
            return xq
        quantizer = self.input_quantizer(ctx)
        if prec.rht:
            quantizer = quantizer.signed()
        q = _quantize(quantizer, _rht(x, prec.rht, ctx, self.name, part), ctx, self.name, "x", 1, axis=0,
                      alpha=float(self.alpha.value[0]), part=part)
        registry.quantize_copy(ctx.recorder, self.name, "bwd_weight", x.size, quantizer.op, q.format.name,
                               hadamard_block=prec.rht)
        return q

    def weight_for_data_grad(self, w2: np.ndarray, wq: QTensor, ctx: Context) -> QTensor:
        """The weight matrix (outputs x inputs) as ``bwd_data`` reads it (reducing along the
        outputs): ``fwd``'s copy, or its own (1-D blocks along the outputs)."""
        prec = self.precision(ctx)
        if not prec.separate_weight_copies:
            return wq
        return _quantize(prec.weight, w2, ctx, self.name, "w", 1, axis=0)

    def input_backward(self, dq: np.ndarray, x: np.ndarray, ctx: Context) -> np.ndarray:
        """The straight-through gradient of the input quantizer (PACT clips; the others pass)."""
        quantizer = self.input_quantizer(ctx)
        if not quantizer.trained_clip:
            return dq
        dx, dalpha = quantizer.backward(dq, x, float(self.alpha.value[0]))
        self.alpha.grad[0] += dalpha
        registry.clip_backward(ctx.recorder, dx.size)
        return dx

    def quant_weight(self, ctx: Context, w: np.ndarray | None = None) -> QTensor:
        """The weight as ``fwd`` reads it (reducing along its last axis)."""
        return _quantize(self.precision(ctx).weight, self.weight.value if w is None else w, ctx, self.name, "w", 0)

    def update_ops(self, ctx: Context, gemm: str, weights: int) -> None:
        """The optimizer update of ``weights`` weights on the bwd_weight output path of the GEMM
        ``gemm`` that computes their gradient (FP32 master weights and momentum read and
        written; the weight quantizer's statistics and the re-quantization for the next step)."""
        prec = self.precision(ctx)
        registry.weight_update(ctx.recorder, gemm, weights, prec.output("bwd_weight").name, prec.weight.update_ops,
                               (prec.weight.op, prec.weight.format.name), copies=2 if prec.separate_weight_copies else 1)

    def param_gemms(self) -> list[tuple[str, int]]:
        """(GEMM layer name, parameters) for each GEMM whose bwd_weight output path updates
        parameters of this layer (weights, bias and clip value ride with the weights)."""
        return [(self.name, sum(p.value.size for p in self.params()))]


class Linear(QuantGemmLayer):
    """Fully connected layer y = x W^T + b (x: (..., I), W: (O, I), y: (..., O)); leading
    dimensions are flattened into the batch. GEMMs lowered as in `fourbit.traces.lowering.linear`."""

    layer_type = "linear"

    def __init__(self, name: str, in_features: int, out_features: int, rng: np.random.Generator,
                 role: str = "hidden", bias: bool = True, pact_alpha: float = 8.0, signed_input: bool = False,
                 std: float | None = None) -> None:
        std = np.sqrt(2.0 / in_features) if std is None else std  # He et al. 2015 for ReLU networks
        super().__init__(name, rng.standard_normal((out_features, in_features)) * std, bias, role, pact_alpha)
        self.signed_input = signed_input  # inputs from LayerNorm, attention or GELU: SAWB's signed range

    def forward(self, x: np.ndarray, ctx: Context) -> np.ndarray:
        prec = self.precision(ctx)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        xq = self.quant_input(x2, ctx)
        wq = self.quant_weight(ctx)
        shapes = linear(x2.shape[0], x2.shape[1], self.weight.value.shape[0])
        y = run_gemm(ctx, self, "fwd", xq, wq.T, prec.acc_fwd, prec.out, shapes["fwd"])
        if self.bias is not None:
            y += self.bias.value
            registry.bias_add(ctx.recorder, y.size, prec.out.name)
        self._cache = (x2, xq, wq, shapes, lead)
        return y.reshape(*lead, -1)

    def backward(self, dy: np.ndarray, ctx: Context) -> np.ndarray:
        prec = self.precision(ctx)
        x2, xq, wq, shapes, lead = self._cache
        dy2 = dy.reshape(-1, dy.shape[-1])
        g_weight, g_data, inv = self.quant_grads(dy2, ctx)
        # bwd_weight first: the recorder attributes the next layer's ops to bwd_data's output path
        self.weight.grad += run_gemm(ctx, self, "bwd_weight", g_weight.T, self.input_for_weight_grad(x2, xq, ctx),
                                     prec.acc_bwd_weight, prec.output("bwd_weight"), shapes["bwd_weight"],
                                     extra_scale=inv, grad_scale=self.grad_scale)
        if self.bias is not None:
            self.bias.grad += dy2.sum(axis=0)
        self.update_ops(ctx, self.name, self.weight.value.size)
        wq = self.weight_for_data_grad(self.weight.value, wq, ctx)
        dx = run_gemm(ctx, self, "bwd_data", g_data, wq, prec.acc_bwd_data, prec.output("bwd_data"),
                      shapes["bwd_data"], extra_scale=inv, grad_scale=self.grad_scale,
                      compute=self.needs_input_grad)
        if dx is None:
            return None
        return self.input_backward(dx, x2, ctx).reshape(*lead, -1)


def _im2col(x: np.ndarray, kh: int, kw: int, stride: int, padding: int) -> tuple[np.ndarray, int, int]:
    """(B, C, H, W) -> columns (B*P*Q, C*kh*kw), rows in (b, p, q) order, columns in (c, r, s)."""
    b, c, h, w = x.shape
    if padding:
        x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    p = conv_output_size(h, kh, stride, padding)
    q = conv_output_size(w, kw, stride, padding)
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    win = win[:, :, :p, :q]  # (B, C, P, Q, kh, kw)
    return np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5)).reshape(b * p * q, c * kh * kw), p, q


def _col2im(cols: np.ndarray, shape: tuple, kh: int, kw: int, stride: int, padding: int,
            p: int, q: int) -> np.ndarray:
    """The adjoint of `_im2col`: scatter-add columns back into (B, C, H, W), one kernel offset at
    a time (a fixed summation order: deterministic)."""
    b, c, h, w = shape
    hp, wp = h + 2 * padding, w + 2 * padding
    out = np.zeros((b, c, hp, wp), np.float32)
    v = cols.reshape(b, p, q, c, kh, kw).transpose(0, 3, 1, 2, 4, 5)
    for r in range(kh):
        for s in range(kw):
            out[:, :, r:r + stride * p:stride, s:s + stride * q:stride] += v[..., r, s]
    return out[:, :, padding:padding + h, padding:padding + w]


class Conv2d(QuantGemmLayer):
    """2-D convolution (NCHW) lowered by im2col (`fourbit.traces.lowering.conv2d`); ``groups`` > 1 runs
    G independent GEMMs (depthwise: groups = in_channels = out_channels)."""

    layer_type = "conv2d"

    def __init__(self, name: str, in_channels: int, out_channels: int, kernel: int,
                 rng: np.random.Generator, stride: int = 1, padding: int = 0, groups: int = 1,
                 role: str = "hidden", bias: bool = False, pact_alpha: float = 8.0) -> None:
        fan_in = in_channels // groups * kernel * kernel
        w = rng.standard_normal((out_channels, in_channels // groups, kernel, kernel)) * np.sqrt(2.0 / fan_in)
        super().__init__(name, w, bias, role, pact_alpha)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel, self.stride, self.padding, self.groups = kernel, stride, padding, groups
        if groups > 1:
            self.layer_type = "dwconv2d" if groups == in_channels == out_channels else "conv2d"

    def _geometry(self, x_shape: tuple) -> tuple[dict, dict]:
        b, c, h, w = x_shape
        shapes = conv2d(b, c, h, w, self.out_channels, self.kernel, self.kernel, self.stride,
                        self.padding, self.groups)
        geometry = {"batch": b, "in_channels": c, "out_channels": self.out_channels, "in_h": h, "in_w": w,
                    "kernel_h": self.kernel, "kernel_w": self.kernel, "stride": self.stride,
                    "padding": self.padding}
        return shapes, geometry

    def _grouped(self, m: np.ndarray, rows: int) -> np.ndarray:
        """(rows, G * n) -> (G, rows, n) for the grouped GEMMs (no-op for one group)."""
        if self.groups == 1:
            return m
        return np.ascontiguousarray(m.reshape(rows, self.groups, -1).transpose(1, 0, 2))

    def forward(self, x: np.ndarray, ctx: Context) -> np.ndarray:
        prec = self.precision(ctx)
        g, f = self.groups, self.out_channels
        shapes, geometry = self._geometry(x.shape)
        if prec.quantize_as_read:
            # blocks run along the GEMM's K: the column matrix and the (F, C*R*S) weight matrix
            # are quantized as the GEMM reads them
            if g > 1:
                raise ConfigError(f"{self.name}: block-scaled operands of a grouped convolution are not modelled; "
                                  "keep grouped and depthwise convolutions per-tensor scaled")
            cols, p, q = _im2col(x, self.kernel, self.kernel, self.stride, self.padding)
            raw_cols = cols  # bwd_weight's own copy is quantized from them too
            a = self.quant_input(cols, ctx)
            wq = self.quant_weight(ctx, self.weight.value.reshape(f, -1))
            w2, bq = wq.values, wq.T
        else:
            raw_cols = None
            xq = self.quant_input(x, ctx)
            cols, p, q = _im2col(xq.values, self.kernel, self.kernel, self.stride, self.padding)
            wq = self.quant_weight(ctx)
            w2 = wq.values.reshape(f, -1)  # (F, C/G * R * S)
            a = xq.with_values(self._grouped(cols, cols.shape[0]))
            bmat = w2.T if g == 1 else np.ascontiguousarray(w2.reshape(g, f // g, -1).transpose(0, 2, 1))
            bq = wq.with_values(bmat)
        y = run_gemm(ctx, self, "fwd", a, bq, prec.acc_fwd, prec.out, shapes["fwd"], geometry=geometry)
        if g > 1:
            y = y.transpose(1, 0, 2).reshape(y.shape[1], f)
        b = x.shape[0]
        y = np.ascontiguousarray(y.reshape(b, p, q, f).transpose(0, 3, 1, 2))
        if self.bias is not None:
            y += self.bias.value[None, :, None, None]
            registry.bias_add(ctx.recorder, y.size, prec.out.name)
        self._cache = (x, raw_cols, a, w2, wq, shapes, geometry, p, q)
        return y

    def backward(self, dy: np.ndarray, ctx: Context) -> np.ndarray:
        prec = self.precision(ctx)
        x, raw_cols, a, w2, wq, shapes, geometry, p, q = self._cache
        g, f = self.groups, self.out_channels
        b = x.shape[0]
        dy2 = np.ascontiguousarray(dy.transpose(0, 2, 3, 1)).reshape(b * p * q, f)
        g_weight, g_data, inv = self.quant_grads(dy2, ctx)
        if g > 1:
            _per_tensor(self, g_weight, g_data)
        gw = g_weight.T if g == 1 else g_weight.with_values(
            self._grouped(g_weight.values, b * p * q).transpose(0, 2, 1),
            None if g_weight.codes is None else self._grouped(g_weight.codes, b * p * q).transpose(0, 2, 1))
        a_w = a
        if prec.separate_act_copies:  # bwd_weight reads its own copy of the columns (reduced over B*P*Q)
            if raw_cols is None:
                raw_cols = _im2col(x, self.kernel, self.kernel, self.stride, self.padding)[0]
            a_w = self.input_for_weight_grad(raw_cols, a, ctx)
        dw = run_gemm(ctx, self, "bwd_weight", gw, a_w, prec.acc_bwd_weight, prec.output("bwd_weight"),
                      shapes["bwd_weight"], extra_scale=inv, geometry=geometry, grad_scale=self.grad_scale)
        self.weight.grad += dw.reshape(self.weight.value.shape)
        if self.bias is not None:
            self.bias.grad += dy.sum(axis=(0, 2, 3))
        self.update_ops(ctx, self.name, self.weight.value.size)
        gd = g_data if g == 1 else g_data.with_values(
            self._grouped(g_data.values, b * p * q),
            None if g_data.codes is None else self._grouped(g_data.codes, b * p * q))
        if g == 1:
            wd = self.weight_for_data_grad(self.weight.value.reshape(f, -1), wq.with_values(w2), ctx)
        else:
            wd = wq.with_values(np.ascontiguousarray(w2.reshape(g, f // g, -1)))
        dcols = run_gemm(ctx, self, "bwd_data", gd, wd,
                         prec.acc_bwd_data, prec.output("bwd_data"), shapes["bwd_data"], extra_scale=inv,
                         geometry=geometry, grad_scale=self.grad_scale, compute=self.needs_input_grad)
        if dcols is None:
            return None
        if g > 1:
            dcols = dcols.transpose(1, 0, 2).reshape(b * p * q, -1)
        if self.kernel > 1 or self.stride > 1:
            registry.col2im(ctx.recorder, dcols.size, prec.output("bwd_data").name)
        dx = _col2im(dcols, x.shape, self.kernel, self.kernel, self.stride, self.padding, p, q)
        return self.input_backward(dx, x, ctx)


def _per_tensor_layer(layer: Layer, prec: LayerPrecision) -> None:
    """ConfigError for block scales or a Hadamard transform in a layer that reuses one
    quantization of a tensor across GEMMs of different K (attention's GEMMs share their
    activations): not modelled yet."""
    if prec.quantize_as_read or prec.rht:
        raise ConfigError(f"{layer.name}: block-scaled operands and the Hadamard transform are not modelled in "
                          f"{type(layer).__name__} layers yet; keep its role ({layer.role}) per-tensor scaled")


def _per_tensor(layer: Layer, *tensors: QTensor) -> None:
    """ConfigError for a block-scaled operand of a grouped convolution (its per-group GEMMs would
    need blocks per group: not modelled)."""
    for t in tensors:
        if t.scaling.kind != "tensor":
            raise ConfigError(f"{layer.name}: {t.scaling.kind}-scaled {t.format.name} operands of a grouped "
                              "convolution are not modelled; keep grouped and depthwise convolutions per-tensor scaled")


class DepthwiseConv2d(Conv2d):
    """Depthwise convolution: one filter per channel (groups = channels); the recipes keep it in
    FP16 ("< 3% of total ops", [P] section 5), role ``depthwise``."""

    def __init__(self, name: str, channels: int, kernel: int, rng: np.random.Generator, stride: int = 1,
                 padding: int = 0, pact_alpha: float = 8.0) -> None:
        super().__init__(name, channels, channels, kernel, rng, stride, padding, groups=channels,
                         role="depthwise", pact_alpha=pact_alpha)


class LSTM(QuantGemmLayer):
    """One LSTM layer (Hochreiter and Schmidhuber 1997; gates i, f, g, o) over (B, T, I) inputs,
    returning (B, T, H). Two GEMMs: the input GEMM for all T steps at once (layer ``<name>.ih``:
    B*T x I by I x 4H) and the recurrent GEMM of each step (``<name>.hh``: B x H by H x 4H, T rows
    per phase). Inputs are signed: quantized with SAWB's signed range (design.md section 3); the
    gate nonlinearities and the cell state stay in FP32. One GradScale per layer, observed at
    every time step of backpropagation through time (the reports sum, like workers').

    Per-tensor recipes reuse each step's quantized gradient in the input GEMMs (stacked in (b, t)
    order). Block-scaled recipes quantize each tensor along each GEMM's own K: a step's gradient
    along B for the recurrent ``bwd_weight`` (with the step's own Hadamard signs, shared by that
    step's h copy) and along 4H for its ``bwd_data``; the whole gradient (B*T x 4H, one tensor
    scale) again for the input GEMMs; the weights per `weight_for_data_grad`."""

    layer_type = "lstm"
    signed_input = True

    def __init__(self, name: str, input_size: int, hidden_size: int, rng: np.random.Generator,
                 role: str = "hidden") -> None:
        k = 1.0 / np.sqrt(hidden_size)
        w_ih = rng.uniform(-k, k, (4 * hidden_size, input_size))
        super().__init__(name, w_ih, True, role)
        self.weight.name = f"{name}.weight_ih"
        self.weight_hh = Param(f"{name}.weight_hh", rng.uniform(-k, k, (4 * hidden_size, hidden_size)))
        self.bias.value[hidden_size:2 * hidden_size] = 1.0  # forget-gate bias 1 (Jozefowicz et al. 2015)
        self.hidden = hidden_size
        self.ih = _Named(f"{name}.ih", "lstm", self)
        self.hh = _Named(f"{name}.hh", "lstm", self)

    def params(self) -> list[Param]:
        return [self.weight, self.weight_hh, self.bias]

    def param_gemms(self) -> list[tuple[str, int]]:
        return [(self.ih.name, self.weight.value.size + self.bias.value.size),
                (self.hh.name, self.weight_hh.value.size)]

    def forward(self, x: np.ndarray, ctx: Context) -> np.ndarray:
        prec = self.precision(ctx)
        rec = ctx.recorder
        b, t, i = x.shape
        h = self.hidden
        x2 = x.reshape(b * t, i)
        xq = self.quant_input(x2, ctx)
        wq_ih = self.quant_weight(ctx)
        wq_hh = self.quant_weight(ctx, self.weight_hh.value)
        sh_ih = linear(b * t, i, 4 * h)
        gx = run_gemm(ctx, self.ih, "fwd", xq, wq_ih.T, prec.acc_fwd, prec.out, sh_ih["fwd"])
        gx = gx.reshape(b, t, 4 * h) + self.bias.value
        sh_hh = linear(b, h, 4 * h)
        hs = np.zeros((b, t + 1, h), np.float32)
        cs = np.zeros((b, t + 1, h), np.float32)
        gates = np.empty((b, t, 4 * h), np.float32)
        hq_steps = []
        for step in range(t):
            hq = self.quant_input(hs[:, step], ctx)
            hq_steps.append(hq)
            z = gx[:, step] + run_gemm(ctx, self.hh, "fwd", hq, wq_hh.T, prec.acc_fwd, prec.out, sh_hh["fwd"],
                                       tensor_prefix=f"{self.hh.name}@{step}")
            ig, fg = _sigmoid(z[:, :h]), _sigmoid(z[:, h:2 * h])
            gg, og = np.tanh(z[:, 2 * h:3 * h]), _sigmoid(z[:, 3 * h:])
            cs[:, step + 1] = fg * cs[:, step] + ig * gg
            hs[:, step + 1] = og * np.tanh(cs[:, step + 1])
            gates[:, step] = np.concatenate([ig, fg, gg, og], axis=1)
            registry.lstm_cell(rec, b * h)
        self._cache = (x2, xq, wq_ih, wq_hh, hq_steps, hs, cs, gates, sh_ih, sh_hh)
        return hs[:, 1:].copy()

    def backward(self, dy: np.ndarray, ctx: Context) -> np.ndarray:
        prec = self.precision(ctx)
        rec = ctx.recorder
        x2, xq, wq_ih, wq_hh, hq_steps, hs, cs, gates, sh_ih, sh_hh = self._cache
        b, t, _ = dy.shape
        h = self.hidden
        dh_next = np.zeros((b, h), np.float32)
        dc_next = np.zeros((b, h), np.float32)
        dz_all = np.zeros((b, t, 4 * h), np.float32)
        gw_steps, gd_steps = [], []
        wq_hh_data = self.weight_for_data_grad(self.weight_hh.value, wq_hh, ctx)  # one copy for all steps
        for step in reversed(range(t)):
            ig, fg, gg, og = (gates[:, step, k * h:(k + 1) * h] for k in range(4))
            dh = dy[:, step] + dh_next
            tc = np.tanh(cs[:, step + 1])
            dc = dh * og * (1 - tc * tc) + dc_next
            dz = np.concatenate([dc * gg * ig * (1 - ig), dc * cs[:, step] * fg * (1 - fg),
                                 dc * ig * (1 - gg * gg), dh * tc * og * (1 - og)], axis=1).astype(np.float32)
            registry.lstm_cell_backward(rec, b * h)
            dz_all[:, step] = dz
            part = ("hh", step)
            g_weight, g_data, inv = self.quant_grads(dz, ctx, part=part)
            if not prec.quantize_as_read:  # the input GEMMs reuse them (block-scaled: their own copy)
                gw_steps.append(g_weight)
                gd_steps.append(g_data)
            self.weight_hh.grad += run_gemm(ctx, self.hh, "bwd_weight", g_weight.T,
                                            self.input_for_weight_grad(hs[:, step], hq_steps[step], ctx, part),
                                            prec.acc_bwd_weight, prec.output("bwd_weight"), sh_hh["bwd_weight"],
                                            extra_scale=inv, grad_scale=self.grad_scale,
                                            tensor_prefix=f"{self.hh.name}@{step}")
            dh_next = run_gemm(ctx, self.hh, "bwd_data", g_data, wq_hh_data, prec.acc_bwd_data,
                               prec.output("bwd_data"), sh_hh["bwd_data"], extra_scale=inv,
                               grad_scale=self.grad_scale, tensor_prefix=f"{self.hh.name}@{step}")
            dc_next = dc * fg
        self.bias.grad += dz_all.sum(axis=(0, 1))
        if prec.quantize_as_read:
            # block-scaled: the input GEMMs read the whole gradient (B*T x 4H) quantized along
            # their own K (B*T for bwd_weight, 4H for bwd_data), with one tensor scale; a step's
            # blocks along B are not blocks of B*T rows
            gw, gd, inv = self.quant_grads(dz_all.reshape(b * t, -1), ctx, observe=False, part=("ih",))
        else:  # the input GEMMs take every step's quantized gradient, in (b, t) order
            order = list(reversed(range(t)))
            inv = 1.0 / (1.0 if self.grad_scale is None else self.grad_scale.scale)
            gw = _stack_steps(gw_steps, order, b, t)
            gd = _stack_steps(gd_steps, order, b, t)
        self.weight.grad += run_gemm(ctx, self.ih, "bwd_weight", gw.T,
                                     self.input_for_weight_grad(x2, xq, ctx, ("ih",)), prec.acc_bwd_weight,
                                     prec.output("bwd_weight"), sh_ih["bwd_weight"], extra_scale=inv,
                                     grad_scale=self.grad_scale)
        self.update_ops(ctx, self.hh.name, self.weight_hh.value.size)
        self.update_ops(ctx, self.ih.name, self.weight.value.size)
        dx = run_gemm(ctx, self.ih, "bwd_data", gd, self.weight_for_data_grad(self.weight.value, wq_ih, ctx),
                      prec.acc_bwd_data, prec.output("bwd_data"), sh_ih["bwd_data"], extra_scale=inv,
                      grad_scale=self.grad_scale, compute=self.needs_input_grad)
        return None if dx is None else dx.reshape(b, t, -1)


class _Named:
    """A name and layer type under which a sub-GEMM of a layer is recorded (LSTM's ih and hh),
    with the role of the layer it belongs to."""

    def __init__(self, name: str, layer_type: str, parent: Layer) -> None:
        self.name, self.layer_type, self.parent = name, layer_type, parent

    @property
    def role(self) -> str:
        return self.parent.role


def _stack_steps(steps: list[QTensor], order: list[int], b: int, t: int) -> QTensor:
    """Per-step gradient operands (B x 4H each, in ``order`` of time) as one (B*T) x 4H operand
    in (b, t) row order."""
    by_time = [None] * t
    for q, step in zip(steps, order, strict=True):
        by_time[step] = q
    values = np.stack([q.values for q in by_time], axis=1).reshape(b * t, -1)
    codes = None
    if by_time[0].codes is not None:
        codes = np.stack([q.codes for q in by_time], axis=1).reshape(b * t, -1)
    return QTensor(values, by_time[0].format, by_time[0].scale, by_time[0].stats, codes)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# layers without GEMMs (FP32 in the emulator, design.md section 3)
# ---------------------------------------------------------------------------------------------
class ReLU(Layer):
    """max(x, 0), in FP32 (activation functions stay in high precision)."""

    layer_type = "relu"

    def forward(self, x: np.ndarray, ctx: Context) -> np.ndarray:
        self._mask = x > 0
        registry.relu(ctx.recorder, self.name, x.size)
        return np.where(self._mask, x, 0.0).astype(np.float32)

    def backward(self, dy: np.ndarray, ctx: Context) -> np.ndarray:
        registry.relu_backward(ctx.recorder, self.name, dy.size)
        return np.where(self._mask, dy, 0.0).astype(np.float32)


class BatchNorm2d(Layer):
    """Batch normalisation over (B, H, W) per channel (Ioffe and Szegedy 2015), FP32; running
    statistics (momentum 0.1) in evaluation. Its statistics need the whole tensor, so the trace
    records it as a pass of its own (``fused=False``)."""

    layer_type = "batchnorm"

    def __init__(self, name: str, channels: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(name)
        self.gamma = Param(f"{name}.gamma", np.ones(channels), decay=False)
        self.beta = Param(f"{name}.beta", np.zeros(channels), decay=False)
        self.running_mean = np.zeros(channels, np.float32)
        self.running_var = np.ones(channels, np.float32)
        self.eps, self.momentum = eps, momentum

    def params(self) -> list[Param]:
        return [self.gamma, self.beta]

    def buffers(self) -> dict[str, np.ndarray]:
        return {f"{self.name}.running_mean": self.running_mean, f"{self.name}.running_var": self.running_var}

    def forward(self, x: np.ndarray, ctx: Context) -> np.ndarray:
        if ctx.training:
            mean = x.mean(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)
            var = x.var(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)
            n = x.size / x.shape[1]
            self.running_mean += np.float32(self.momentum) * (mean - self.running_mean)
            self.running_var += np.float32(self.momentum) * (var * np.float32(n / max(n - 1, 1)) - self.running_var)
        else:
            mean, var = self.running_mean, self.running_var
        inv = (1.0 / np.sqrt(var + np.float32(self.eps))).astype(np.float32)
        xhat = (x - mean[None, :, None, None]) * inv[None, :, None, None]
        self._cache = (xhat, inv)
        registry.batchnorm(ctx.recorder, x.size)
        return (xhat * self.gamma.value[None, :, None, None] + self.beta.value[None, :, None, None]).astype(np.float32)

    def backward(self, dy: np.ndarray, ctx: Context) -> np.ndarray:
        xhat, inv = self._cache
        self.gamma.grad += (dy * xhat).sum(axis=(0, 2, 3))
        self.beta.grad += dy.sum(axis=(0, 2, 3))
        dxhat = dy * self.gamma.value[None, :, None, None]
        mean_d = dxhat.mean(axis=(0, 2, 3), keepdims=True)
        mean_dx = (dxhat * xhat).mean(axis=(0, 2, 3), keepdims=True)
        registry.batchnorm_backward(ctx.recorder, dy.size)
        return ((dxhat - mean_d - xhat * mean_dx) * inv[None, :, None, None]).astype(np.float32)


class MaxPool2d(Layer):
    """Max pooling with a k x k window and stride k (NCHW; rows and columns beyond a multiple of
    k are dropped). The gradient goes to the first maximum of each window."""

    layer_type = "pool"

    def __init__(self, name: str, kernel: int = 2) -> None:
        super().__init__(name)
        self.k = kernel

    def forward(self, x: np.ndarray, ctx: Context) -> np.ndarray:
        b, c, h, w = x.shape
        k = self.k
        hk, wk = h // k, w // k
        win = x[:, :, :hk * k, :wk * k].reshape(b, c, hk, k, wk, k).transpose(0, 1, 2, 4, 3, 5)
        win = win.reshape(b, c, hk, wk, k * k)
        idx = win.argmax(axis=-1)
        self._cache = (x.shape, idx)
        registry.pool(ctx.recorder, x.size)
        return np.take_along_axis(win, idx[..., None], axis=-1)[..., 0]

    def backward(self, dy: np.ndarray, ctx: Context) -> np.ndarray:
        shape, idx = self._cache
        b, c, h, w = shape
        k = self.k
        hk, wk = h // k, w // k
        win = np.zeros((b, c, hk, wk, k * k), np.float32)
        np.put_along_axis(win, idx[..., None], dy[..., None], axis=-1)
        out = np.zeros(shape, np.float32)
        out[:, :, :hk * k, :wk * k] = win.reshape(b, c, hk, wk, k, k).transpose(0, 1, 2, 4, 3, 5).reshape(b, c, hk * k, wk * k)
        registry.pool_backward(ctx.recorder, out.size)
        return out


class AvgPool2d(Layer):
    """Global average pooling: (B, C, H, W) -> (B, C)."""

    layer_type = "pool"

    def forward(self, x: np.ndarray, ctx: Context) -> np.ndarray:
        self._shape = x.shape
        registry.pool(ctx.recorder, x.size)
        return x.mean(axis=(2, 3), dtype=np.float64).astype(np.float32)

    def backward(self, dy: np.ndarray, ctx: Context) -> np.ndarray:
        b, c, h, w = self._shape
        registry.pool_backward(ctx.recorder, b * c * h * w)
        return np.broadcast_to((dy / np.float32(h * w))[:, :, None, None], self._shape).astype(np.float32)


class Flatten(Layer):
    """(B, ...) -> (B, features)."""

    layer_type = "flatten"

    def forward(self, x: np.ndarray, ctx: Context) -> np.ndarray:
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy: np.ndarray, ctx: Context) -> np.ndarray:
        return dy.reshape(self._shape)


class Sequential(Layer):
    """Layers applied in order; backward in reverse order."""

    def __init__(self, name: str, layers: list[Layer]) -> None:
        super().__init__(name)
        self.layers = layers

    def children(self) -> list[Layer]:
        return self.layers

    def params(self) -> list[Param]:
        return [p for layer in self.layers for p in [*layer.params(), *_child_params(layer)]]

    def all_layers(self) -> list[Layer]:
        """Every layer, depth first, in forward order."""
        out = []
        for layer in self.layers:
            out.append(layer)
            if isinstance(layer, Sequential):
                out += layer.all_layers()
            for child in layer.children() if not isinstance(layer, Sequential) else []:
                out.append(child)
                if isinstance(child, Sequential):
                    out += child.all_layers()
        return out

    def gemm_layers(self) -> list[GemmLayer]:
        return [layer for layer in self.all_layers() if isinstance(layer, GemmLayer)]

    def forward(self, x: np.ndarray, ctx: Context) -> np.ndarray:
        for layer in self.layers:
            x = layer.forward(x, ctx)
        return x

    def backward(self, dy: np.ndarray, ctx: Context) -> np.ndarray | None:
        """The gradient of the input, or None where the input layer does not compute it."""
        for layer in reversed(self.layers):
            dy = layer.backward(dy, ctx)
            if dy is None:
                return None
        return dy


def _child_params(layer: Layer) -> list[Param]:
    if isinstance(layer, Sequential):
        return []
    return [p for child in layer.children() for p in child.params()]


class Residual(Layer):
    """out = main(x) + shortcut(x): the shortcut is the identity or a (downsampling) branch; the
    addition is full precision (FPSC, [P] section 2)."""

    layer_type = "residual"

    def __init__(self, name: str, main: Sequential, shortcut: Sequential | None = None) -> None:
        super().__init__(name)
        self.main, self.shortcut = main, shortcut

    def children(self) -> list[Layer]:
        return [self.main] + ([self.shortcut] if self.shortcut is not None else [])

    def params(self) -> list[Param]:
        return []

    def forward(self, x: np.ndarray, ctx: Context) -> np.ndarray:
        y = self.main.forward(x, ctx)
        s = x if self.shortcut is None else self.shortcut.forward(x, ctx)
        registry.residual_add(ctx.recorder, y.size)
        return (y + s).astype(np.float32)

    def backward(self, dy: np.ndarray, ctx: Context) -> np.ndarray:
        dx = self.main.backward(dy, ctx)
        ds = dy if self.shortcut is None else self.shortcut.backward(dy, ctx)
        return (dx + ds).astype(np.float32)


class Embedding(Layer):
    """Token ids (B, T) -> vectors (B, T, D) from an FP32 table (a lookup, not a GEMM)."""

    layer_type = "embedding"

    def __init__(self, name: str, vocab: int, dim: int, rng: np.random.Generator) -> None:
        super().__init__(name)
        self.table = Param(f"{name}.weight", rng.standard_normal((vocab, dim)) * 0.1, decay=False)
        self.role = "first"

    def params(self) -> list[Param]:
        return [self.table]

    def forward(self, ids: np.ndarray, ctx: Context) -> np.ndarray:
        self._ids = ids
        return self.table.value[ids]

    def backward(self, dy: np.ndarray, ctx: Context) -> np.ndarray:
        np.add.at(self.table.grad, self._ids.ravel(), dy.reshape(-1, dy.shape[-1]))
        registry.embedding_backward(ctx.recorder, dy.size)
        return np.zeros(self._ids.shape, np.float32)


def softmax_xent(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy (nats per prediction) and its gradient wrt the logits.

    logits: (..., classes) float32; labels: (...) int. Computed in float64; gradient float32.
    """
    shape = logits.shape
    z = logits.reshape(-1, shape[-1]).astype(np.float64)
    y = labels.reshape(-1)
    z -= z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n = z.shape[0]
    loss = float(-logp[np.arange(n), y].mean())
    grad = np.exp(logp)
    grad[np.arange(n), y] -= 1.0
    return loss, (grad / n).astype(np.float32).reshape(shape)


# ---------------------------------------------------------------------------------------------
# transformer layers (FP32 outside the GEMMs, design.md section 3)
# ---------------------------------------------------------------------------------------------
class LayerNorm(Layer):
    """Layer normalisation over the last axis (Ba et al. 2016), FP32 (statistics in float64):
    y = (x - mean) / sqrt(var + eps) * gamma + beta. A pass of its own in the trace
    (`fourbit.traces.registry.layer_norm`)."""

    layer_type = "layernorm"

    def __init__(self, name: str, dim: int, eps: float = 1e-5) -> None:
        super().__init__(name)
        self.gamma = Param(f"{name}.gamma", np.ones(dim), decay=False)
        self.beta = Param(f"{name}.beta", np.zeros(dim), decay=False)
        self.eps = eps

    def params(self) -> list[Param]:
        return [self.gamma, self.beta]

    def forward(self, x: np.ndarray, ctx: Context) -> np.ndarray:
        mean = x.mean(axis=-1, keepdims=True, dtype=np.float64).astype(np.float32)
        var = x.var(axis=-1, keepdims=True, dtype=np.float64).astype(np.float32)
        inv = (1.0 / np.sqrt(var + np.float32(self.eps))).astype(np.float32)
        xhat = ((x - mean) * inv).astype(np.float32)
        self._cache = (xhat, inv)
        registry.layer_norm(ctx.recorder, x.size)
        return (xhat * self.gamma.value + self.beta.value).astype(np.float32)

    def backward(self, dy: np.ndarray, ctx: Context) -> np.ndarray:
        xhat, inv = self._cache
        lead = tuple(range(dy.ndim - 1))
        self.gamma.grad += (dy * xhat).sum(axis=lead)
        self.beta.grad += dy.sum(axis=lead)
        dxhat = dy * self.gamma.value
        mean_d = dxhat.mean(axis=-1, keepdims=True)
        mean_dx = (dxhat * xhat).mean(axis=-1, keepdims=True)
        registry.layer_norm_backward(ctx.recorder, dy.size)
        return ((dxhat - mean_d - xhat * mean_dx) * inv).astype(np.float32)


_GELU_C = np.float32(np.sqrt(2.0 / np.pi))


class GELU(Layer):
    """GELU in its tanh form (Hendrycks and Gimpel 2016, as GPT-2 uses it):
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), FP32, on the output path of the GEMM before
    it."""

    layer_type = "gelu"

    def forward(self, x: np.ndarray, ctx: Context) -> np.ndarray:
        u = _GELU_C * (x + np.float32(0.044715) * x * x * x)
        th = np.tanh(u).astype(np.float32)
        self._cache = (x, th)
        registry.gelu(ctx.recorder, self.name, x.size)
        return (np.float32(0.5) * x * (1 + th)).astype(np.float32)

    def backward(self, dy: np.ndarray, ctx: Context) -> np.ndarray:
        x, th = self._cache
        du = _GELU_C * (1 + np.float32(3 * 0.044715) * x * x)
        grad = np.float32(0.5) * (1 + th) + np.float32(0.5) * x * (1 - th * th) * du
        registry.gelu_backward(ctx.recorder, self.name, dy.size)
        return (dy * grad).astype(np.float32)


class SelfAttention(GemmLayer):
    """Causal multi-head self-attention between the QKV and the output projections:
    (B, T, 3D) -> (B, T, D), ``heads`` heads of width d = D / heads. Per (sequence, head), as
    groups of one GEMM row: scores = Q K^T (``<name>.scores``, M = N = T, K = d), scaled by
    1/sqrt(d), causally masked and softmaxed in FP32, context = P V (``<name>.context``,
    M = T, N = d, K = T). Both operands of both GEMMs are activations, quantized with the recipe's
    ``attention`` role (`LayerPrecision.activation_pair`), so their ``bwd_weight`` is the gradient
    of K or V and no weight is updated."""

    layer_type = "attention"

    def __init__(self, name: str, width: int, heads: int) -> None:
        if width % heads:
            raise ConfigError(f"{name}: width {width} is not divisible by heads {heads}")
        super().__init__(name, role="attention")
        self.width, self.heads = width, heads
        self.scores = _Named(f"{name}.scores", "attention", self)
        self.context = _Named(f"{name}.context", "attention", self)

    def precision(self, ctx: Context) -> LayerPrecision:
        return ctx.recipe.precision(self.role).activation_pair()

    def _heads(self, x: np.ndarray, b: int, t: int) -> np.ndarray:
        """(B, T, D) -> (B*H, T, d)."""
        d = self.width // self.heads
        return np.ascontiguousarray(x.reshape(b, t, self.heads, d).transpose(0, 2, 1, 3)).reshape(b * self.heads, t, d)

    def _merge(self, x: np.ndarray, b: int, t: int) -> np.ndarray:
        """(B*H, T, d) -> (B, T, D)."""
        return np.ascontiguousarray(x.reshape(b, self.heads, t, -1).transpose(0, 2, 1, 3)).reshape(b, t, self.width)

    def _quant(self, x: np.ndarray, ctx: Context, gemm: str) -> QTensor:
        quantizer = self.precision(ctx).act
        q = quantizer(x)
        registry.quantize_input(ctx.recorder, gemm, x.size, quantizer.op, q.format.name)
        return q

    def _gemm(self, ctx: Context, named: _Named, phase: str, a: QTensor, b: QTensor, shape: GemmShape,
              tensors, extra_scale: float = 1.0) -> np.ndarray:
        prec = self.precision(ctx)
        return run_gemm(ctx, named, phase, a, b, prec.accumulator(phase), prec.output(phase), shape,
                        extra_scale=extra_scale, grad_scale=self.grad_scale if phase != "fwd" else None,
                        roles=schema.ATTENTION_ROLES[phase], tensors=tensors)

    def forward(self, qkv: np.ndarray, ctx: Context) -> np.ndarray:
        _per_tensor_layer(self, self.precision(ctx))
        b, t, _ = qkv.shape
        g, d = b * self.heads, self.width // self.heads
        q, k, v = (self._heads(qkv[..., i * self.width:(i + 1) * self.width], b, t) for i in range(3))
        n = self.name
        qq, kq = self._quant(q, ctx, self.scores.name), self._quant(k, ctx, self.scores.name)
        raw = self._gemm(ctx, self.scores, "fwd", qq, kq.T, GemmShape(t, t, d, g), ((f"{n}.q", 0), (f"{n}.k", 0)))
        s = raw.astype(np.float64) / np.sqrt(d)
        s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
        s -= s.max(axis=-1, keepdims=True)
        p = np.exp(s)
        p = (p / p.sum(axis=-1, keepdims=True)).astype(np.float32)
        registry.softmax(ctx.recorder, p.size)
        pq, vq = self._quant(p, ctx, self.context.name), self._quant(v, ctx, self.context.name)
        out = self._gemm(ctx, self.context, "fwd", pq, vq, GemmShape(t, d, t, g), ((f"{n}.p", 0), (f"{n}.v", 0)))
        self._cache = (qq, kq, pq, vq, p, b, t)
        return self._merge(out, b, t)

    def backward(self, dy: np.ndarray, ctx: Context) -> np.ndarray:
        qq, kq, pq, vq, p, b, t = self._cache
        g, d = b * self.heads, self.width // self.heads
        n = self.name
        second = 1 if self.precision(ctx).grad_data != self.precision(ctx).grad_weight else 0
        dc = self._heads(dy, b, t)
        gw, gd, inv = self.quant_grads(dc, ctx, gemm=self.context.name)
        dy_c = f"{self.context.name}.dy"
        dv = self._gemm(ctx, self.context, "bwd_weight", gw.T, pq, GemmShape(d, t, t, g),
                        ((dy_c, 0), (f"{n}.p", 0)), inv).transpose(0, 2, 1)
        dp = self._gemm(ctx, self.context, "bwd_data", gd, vq.T, GemmShape(t, t, d, g),
                        ((dy_c, second), (f"{n}.v", 0)), inv)
        ds = (p * (dp - (dp * p).sum(axis=-1, keepdims=True)) / np.float32(np.sqrt(d))).astype(np.float32)
        registry.softmax_backward(ctx.recorder, ds.size)
        gw, gd, inv = self.quant_grads(ds, ctx, gemm=self.scores.name)
        dy_s = f"{self.scores.name}.dy"
        dk = self._gemm(ctx, self.scores, "bwd_weight", gw.T, qq, GemmShape(t, d, t, g),
                        ((dy_s, 0), (f"{n}.q", 0)), inv)
        dq = self._gemm(ctx, self.scores, "bwd_data", gd, kq, GemmShape(t, d, t, g),
                        ((dy_s, second), (f"{n}.k", 0)), inv)
        return np.concatenate([self._merge(x, b, t) for x in (dq, dk, dv)], axis=-1).astype(np.float32)


class TokenPositionEmbedding(Layer):
    """Token ids (B, T) -> token plus position vectors (B, T, D) from two FP32 tables (lookups,
    not GEMMs); backward scatter-adds the gradient rows into both (one ``embedding_bwd`` op)."""

    layer_type = "embedding"

    def __init__(self, name: str, vocab: int, context: int, dim: int, rng: np.random.Generator) -> None:
        super().__init__(name)
        self.tokens = Param(f"{name}.tokens", rng.standard_normal((vocab, dim)) * 0.02, decay=False)
        self.positions = Param(f"{name}.positions", rng.standard_normal((context, dim)) * 0.01, decay=False)
        self.role = "first"

    def params(self) -> list[Param]:
        return [self.tokens, self.positions]

    def forward(self, ids: np.ndarray, ctx: Context) -> np.ndarray:
        """Raises ConfigError for sequences longer than the position table (the context)."""
        if ids.ndim != 2 or ids.shape[1] > self.positions.value.shape[0]:
            raise ConfigError(f"{self.name}: sequences of {ids.shape[-1] if ids.ndim else 0} tokens (shape "
                              f"{ids.shape}) do not fit the model's context of {self.positions.value.shape[0]} "
                              "positions; use a longer context or shorter sequences")
        self._ids = ids
        return (self.tokens.value[ids] + self.positions.value[: ids.shape[1]]).astype(np.float32)

    def backward(self, dy: np.ndarray, ctx: Context) -> np.ndarray:
        np.add.at(self.tokens.grad, self._ids.ravel(), dy.reshape(-1, dy.shape[-1]))
        self.positions.grad[: dy.shape[1]] += dy.sum(axis=0)
        registry.embedding_backward(ctx.recorder, dy.size)
        return np.zeros(self._ids.shape, np.float32)

"""Named precision recipes, after the column heads of Sun et al., NeurIPS 2020 ([P]) Tables 1-3.

A recipe says, for each layer role (``first``, ``hidden``, ``last``), how the three GEMMs of a
layer quantize their operands and accumulate (design.md section 3):

====================  ============================  ==========================================
GEMM                  operands (a x b)              default accumulator of ``int4``
====================  ============================  ==========================================
``fwd``               activations x weights^T       INT4 x INT4 in ``int32`` (exact), output FP16
``bwd_data``          grad(even phase) x weights    FP4 x INT4 in ``fp16``, groups of 4, chunks of 64
``bwd_weight``        grad^T(odd phase) x acts      FP4 x INT4 in ``fp16``, groups of 4, chunks of 64
====================  ============================  ==========================================

``fp32`` is the baseline: FP32 everywhere, GEMMs on the host's float32 BLAS (no accumulator
model: ``acc=None``). ``fp16``, ``hfp8``, ``int8``, ``int4-fwd`` and ``int4-dw8`` are the other
columns of the paper's tables (see each builder). ``int4`` is the paper's recipe: SAWB INT4 weights, PACT INT4 activations,
radix-4 FP4 gradients with Two-Phase Rounding (even phase for ``bwd_data``, odd phase for
``bwd_weight``, [P] section 3.3) and per-layer GradScale ([P] section 3.2); the first and last
layers in FP16 (weights, activations, gradients; FP16 products accumulated in ``fp32``), FP32
master weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Annotated, Literal

import numpy as np
from pydantic import BeforeValidator, Field

from fourbit.models.quantizers import LUQ, PACT, SAWB, Block, Cast, Log, Quantizer, quantizer
from fourbit.traces.block_formats import BlockFormat
from fourbit.traces.config import IntChoice, StrictModel, parse_text
from fourbit.traces.errors import ConfigError, FormatError
from fourbit.traces.formats import TENSOR_SCALE, Accumulator, Format, LogFormat, get_format

__all__ = ["LayerPrecision", "Recipe", "RECIPES", "get_recipe", "param_text", "parse_recipe", "recipe_params"]

ROLES = ("first", "hidden", "last", "depthwise", "attention")
GRAD_SCALING = ("none", "gradscale", "global")
PHASES = ("fwd", "bwd_data", "bwd_weight")

GRAD_TARGET_CAP = 64.0
"""The largest scaled gradient GradScale aims for: radix-4 FP4's maximum ([P] 3.2). Radix-16
FP4 reaches 4096, and four such products with INT4 weights (4096 x 7 x 4) overflow an FP16 group
sum (65504): aiming at its own maximum, 524 of 937 steps of MNIST lenet5 overflowed and were
skipped (none capped). Capped, radix 8 aims at 64 (giving up 512) and radix 16 at 16 (giving up
256 and 4096, two of its eight values), keeping the accumulator headroom of radix 4 (our choice;
technique.md section 6)."""


@dataclass(frozen=True)
class LayerPrecision:
    """How one layer role computes its three GEMMs.

    ``weight``, ``act``: the quantizers of the weights and of the input activations
    (`fourbit.models.quantizers`); ``grad_data`` and ``grad_weight``: the quantizers of the output
    gradient fed to ``bwd_data`` and ``bwd_weight``; ``acc_*``: the accumulator of each GEMM (None:
    host float32 BLAS, the FP32 baseline); ``out``: the format the forward GEMM's result is
    rounded to; ``out_bwd`` the backward GEMMs' (None: the same; FP32 where an integer
    accumulator's result is unscaled gradients); ``rht``: the block of the random Hadamard
    transform applied along K to both inputs of ``bwd_weight`` before they are quantized (0: off;
    NVIDIA's NVFP4 recipe: 16). Quantizers may be given by their names (``int4_sawb``, a format
    name) and formats by theirs.

    Raises ConfigError at construction for a value of the wrong kind.
    """

    weight: Quantizer = Cast()
    act: Quantizer = Cast()
    grad_data: Quantizer = Cast()
    grad_weight: Quantizer = Cast()
    acc_fwd: Accumulator | None = None
    acc_bwd_data: Accumulator | None = None
    acc_bwd_weight: Accumulator | None = None
    out: Format = get_format("fp32")
    out_bwd: Format | None = None
    rht: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.rht, int) or isinstance(self.rht, bool) or self.rht < 0 or self.rht & (self.rht - 1):
            raise ConfigError(f"layer precision: rht (the Hadamard block of bwd_weight's inputs) must be 0 (off) or a "
                              f"power of two, got {self.rht!r}")
        for name in ("weight", "act", "grad_data", "grad_weight"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = quantizer(value)
                object.__setattr__(self, name, value)
            if not isinstance(value, Quantizer):
                raise ConfigError(f"layer precision: {name} must be a quantizer, got {value!r}")
        for name in ("weight", "act"):
            if isinstance(getattr(self, name).format, LogFormat):
                raise ConfigError(f"layer precision: {name} cannot be a log format (log formats are for gradients)")
        for phase in PHASES:
            acc = self.accumulator(phase)
            if acc is not None and not isinstance(acc, Accumulator):
                raise ConfigError(f"layer precision: acc_{phase} must be an Accumulator or None, got {acc!r}")
        for name in ("out", "out_bwd"):
            value = getattr(self, name)
            if isinstance(value, str):
                try:
                    object.__setattr__(self, name, get_format(value))
                except FormatError as exc:
                    raise ConfigError(f"layer precision: {name}: {exc}") from None
            elif not isinstance(value, Format) and not (value is None and name == "out_bwd"):
                raise ConfigError(f"layer precision: {name} must be a format, got {value!r}")

    def output(self, phase: str) -> Format:
        """The output format of ``phase``'s GEMM."""
        return self.out if phase == "fwd" or self.out_bwd is None else self.out_bwd

    def accumulator(self, phase: str) -> Accumulator | None:
        return {"fwd": self.acc_fwd, "bwd_data": self.acc_bwd_data,
                "bwd_weight": self.acc_bwd_weight}[phase]

    def operands(self, phase: str) -> tuple[Quantizer, Quantizer]:
        """The quantizers of the a and b operands of ``phase``'s GEMM (fourbit.traces.lowering):
        ``fwd`` activations x weights, ``bwd_data`` gradient x weights, ``bwd_weight`` gradient x
        activations."""
        return {"fwd": (self.act, self.weight), "bwd_data": (self.grad_data, self.weight),
                "bwd_weight": (self.grad_weight, self.act)}[phase]

    def gemm_formats(self, phase: str) -> tuple[str, str, str, str]:
        """(a_format, b_format, acc_format, out_format) of one GEMM, as the trace names them."""
        a, b = self.operands(phase)
        acc = self.accumulator(phase)
        return a.format.name, b.format.name, "fp32/g1" if acc is None else acc.name, self.output(phase).name

    def activation_pair(self) -> LayerPrecision:
        """This precision for an activation x activation GEMM (attention): both operands
        quantized with the signed activation quantizer, the gradients as given."""
        return replace(self, weight=self.signed_act, act=self.signed_act)

    @property
    def signed_act(self) -> Quantizer:
        """The activation quantizer for signed inputs (LSTM, attention): SAWB's signed range
        where the recipe uses an unsigned one (design.md section 3)."""
        return self.act.signed()

    @property
    def quantize_as_read(self) -> bool:
        """Whether inputs and weights are quantized as the GEMM reads them (block scales: a
        convolution's column matrix, so that blocks run along K) rather than as stored."""
        return self.act.per_block or self.weight.per_block

    @property
    def separate_grad_copies(self) -> bool:
        """Whether ``bwd_data`` and ``bwd_weight`` read different copies of the output gradient:
        two quantizers (TPR's phases), blocks along each GEMM's own K, or a Hadamard transform of
        ``bwd_weight``'s."""
        return (self.grad_data != self.grad_weight or self.grad_data.axis_dependent or self.grad_weight.axis_dependent
                or self.rht > 0)

    @property
    def separate_act_copies(self) -> bool:
        """Whether ``bwd_weight`` reads its own copy of the input activations (1-D blocks along
        the batch, not along the features as ``fwd``'s, or a Hadamard transform first)."""
        return self.act.axis_dependent or self.rht > 0

    @property
    def separate_weight_copies(self) -> bool:
        """Whether ``bwd_data`` reads its own copy of the weights (1-D blocks along the output
        dimension, not along the input dimension as ``fwd``'s; 2-D blocks serve both)."""
        return self.weight.axis_dependent

    @property
    def scaled_grads(self) -> bool:
        """Whether the gradient quantizers need a GradScale (narrow float and log formats;
        max-scaled INT8 gradients carry their own scale)."""
        return self.grad_data.needs_grad_scale or self.grad_weight.needs_grad_scale

    def grad_target_max(self) -> float:
        """GradScale's target for max|s*dY|: for log formats the largest FP4 value up to
        `GRAD_TARGET_CAP` (the largest value for radix 2 and 4, as in [P] 3.2; 64 for radix 8,
        16 for radix 16); 1.0 for float formats (our choice: 24 binades below, and headroom
        against FP16 overflow of the GEMM result)."""
        q = self.grad_data if self.grad_data.needs_grad_scale else self.grad_weight
        fmt = q.format
        if not isinstance(fmt, LogFormat):
            return 1.0
        values = fmt.values()
        return float(values[values <= GRAD_TARGET_CAP].max())


@dataclass(frozen=True)
class Recipe:
    """A named precision recipe: a `LayerPrecision` per role (``first``, ``hidden``, ``last``,
    ``depthwise``, ``attention``: the activation x activation GEMMs of attention, both operands
    quantized with the role's signed activation quantizer; by default the first layer's
    precision, so the 4-bit recipes keep attention in FP16, as NVIDIA's NVFP4 recipe keeps it in
    BF16, arXiv 2509.25149; their ``attention_bits=4`` gives it the hidden precision) and the gradient-scaling policy (``none``, ``gradscale`` per layer, or
    ``global``: one loss scale for all layers). ``last_layers``: how many final GEMM layers of a
    model take the ``last`` role (default 1; 0: the last layer is a hidden one)."""

    name: str
    first: LayerPrecision
    hidden: LayerPrecision
    last: LayerPrecision
    depthwise: LayerPrecision
    grad_scaling: str = "none"
    tie: str = "up"
    radix: int | None = None
    exponent_bits: int | None = None
    tpr: bool | None = None
    attention: LayerPrecision | None = None
    last_layers: int = 1

    def __post_init__(self) -> None:
        if self.attention is None:
            object.__setattr__(self, "attention", self.first)
        if not isinstance(self.last_layers, int) or isinstance(self.last_layers, bool) or self.last_layers < 0:
            raise ConfigError(f"recipe {self.name!r}: last_layers must be an integer >= 0, got {self.last_layers!r}")
        for role in ROLES:
            if not isinstance(getattr(self, role), LayerPrecision):
                raise ConfigError(f"recipe {self.name!r}: {role} must be a LayerPrecision")
        if self.grad_scaling not in GRAD_SCALING:
            raise ConfigError(f"recipe {self.name!r}: grad_scaling must be one of {GRAD_SCALING}, got {self.grad_scaling!r}")
        if self.tie not in ("up", "down"):
            raise ConfigError(f"recipe {self.name!r}: tie must be 'up' or 'down', got {self.tie!r}")

    def precision(self, role: str) -> LayerPrecision:
        if role not in ROLES:
            raise ConfigError(f"layer role must be one of {ROLES}, got {role!r}")
        return getattr(self, role)

    def describe(self) -> dict:
        """A JSON-able description (written to the trace's meta.json)."""
        def lp(p: LayerPrecision) -> dict:
            d = {"weight": p.weight.name, "act": p.act.name, "grad_data": p.grad_data.name,
                 "grad_weight": p.grad_weight.name, "out": p.out.name,
                 "out_bwd": "" if p.out_bwd is None else p.out_bwd.name}
            for ph in ("fwd", "bwd_data", "bwd_weight"):
                acc = p.accumulator(ph)
                d[f"acc_{ph}"] = None if acc is None else acc.name
            d["gemm_formats"] = {ph: list(p.gemm_formats(ph)) for ph in ("fwd", "bwd_data", "bwd_weight")}
            # what a shape-only importer needs to record the same ops (fourbit.traces.registry)
            d["ops"] = {"act": p.act.op, "weight": p.weight.op, "grad_data": p.grad_data.op,
                        "grad_weight": p.grad_weight.op, "weight_statistics": list(p.weight.update_ops),
                        "act_weight_grad": (p.act.signed() if p.rht else p.act).op}
            d["operand_scaling"] = {ph: {**_scaling_columns("a", p.operands(ph)[0]),
                                         **_scaling_columns("b", p.operands(ph)[1])} for ph in PHASES}
            d["separate_grad_copies"] = p.separate_grad_copies
            d["quantize_as_read"] = p.quantize_as_read
            d["separate_act_copies"] = p.separate_act_copies
            d["separate_weight_copies"] = p.separate_weight_copies
            d["rht"] = p.rht
            d["grad_scale"] = self.grad_scaling != "none" and p.scaled_grads
            d["trained_clip"] = p.act.trained_clip
            return d

        def roles(p: LayerPrecision) -> dict:
            d = lp(p)
            signed = replace(p, act=p.signed_act)  # for inputs that can be negative (LayerNorm, attention)
            d["signed_inputs"] = lp(signed) if signed != p else lp(p)
            return d
        return {"name": self.name, "grad_scaling": self.grad_scaling, "tie": self.tie,
                "radix": self.radix, "exponent_bits": self.exponent_bits, "tpr": self.tpr,
                "last_layers": self.last_layers,
                **{role: roles(self.precision(role).activation_pair() if role == "attention" else self.precision(role))
                   for role in ROLES}}


def _scaling_columns(prefix: str, q: Quantizer) -> dict:
    """The trace's scaling columns of a GEMM operand quantized by ``q`` (as
    `fourbit.models.recorder.operand_columns` writes them from the values): blocks run along
    the GEMM's K, as the layers quantize them."""
    s = q.scaling if q.per_block else TENSOR_SCALE
    cols = {f"{prefix}_scale_kind": s.kind, f"{prefix}_scale_format": s.format,
            f"{prefix}_bits": float(q.format.bits_per_element + s.bits_per_element)}
    if s.kind != "tensor":
        cols[f"{prefix}_block"] = s.block
    if s.kind == "block":
        cols[f"{prefix}_block_axis"] = "K"
    return cols


FP32 = LayerPrecision()
FP16_LAYER = LayerPrecision(
    weight="fp16", act="fp16", grad_data="fp16", grad_weight="fp16",
    acc_fwd=Accumulator("fp32", 1, None), acc_bwd_data=Accumulator("fp32", 1, None),
    acc_bwd_weight=Accumulator("fp32", 1, None), out="fp16",
)
"""The FP16 layers of the 4-bit recipes (first, last): FP16 operands, FP32 accumulation of the
exact FP16 products one at a time (an FP16 FMA unit with an FP32 accumulator), FP16 results."""


BF16_LAYER = LayerPrecision(
    weight="bf16", act="bf16", grad_data="bf16", grad_weight="bf16",
    acc_fwd=Accumulator("fp32", 1, None), acc_bwd_data=Accumulator("fp32", 1, None),
    acc_bwd_weight=Accumulator("fp32", 1, None), out="bf16",
)
"""BF16 operands, FP32 accumulation of the exact BF16 products one at a time (a BF16 FMA unit
with an FP32 accumulator, modelled: not the host's BLAS), BF16 results: the high-precision
layers of the block-scaled recipes (arXiv 2509.25149 keeps them in BF16) and the ``bf16``
baseline."""


BWD_ACC = Accumulator("fp16", 4, 64)
"""Backward accumulator of the 4-bit recipes: FP16 (the paper's FP16 GEMM outputs), exact
groups of 4 (the 4-way INT4xFP4 inner product), chunks of 64 (after Wang et al. 2018)."""


def int4_hidden(radix: int = 4, exponent_bits: int = 3, tpr: bool = True,
                bwd_acc: Accumulator = BWD_ACC, tie: str = "up") -> LayerPrecision:
    """The paper's hidden layer: INT4 forward, radix-``radix`` FP4 backward (TPR: even phase for
    ``bwd_data``, odd for ``bwd_weight``; without TPR both use the even phase).

    Raises ConfigError when TPR is asked for a radix without an odd phase (2, 8).
    """
    try:
        even = LogFormat.make(radix, exponent_bits, "even")
        odd = LogFormat.make(radix, exponent_bits, "odd") if tpr else even
    except FormatError as exc:
        raise ConfigError(f"recipe parameters: {exc}") from exc
    return LayerPrecision(
        weight=SAWB(4), act=PACT(4), grad_data=Log(even, tie), grad_weight=Log(odd, tie),
        acc_fwd=Accumulator("int32"), acc_bwd_data=bwd_acc, acc_bwd_weight=bwd_acc, out="fp16",
    )


def _fp32() -> Recipe:
    return Recipe("fp32", FP32, FP32, FP32, FP32)


def _fp16() -> Recipe:
    """FP16 everywhere (FP32 accumulation, FP32 master weights) with one global loss scale."""
    return Recipe("fp16", FP16_LAYER, FP16_LAYER, FP16_LAYER, FP16_LAYER, "global")


def _hfp8() -> Recipe:
    """Hybrid FP8 (Sun et al., NeurIPS 2019): 1-4-3 weights and activations, 1-5-2 gradients,
    FP16 accumulation in chunks of 64 (Wang et al. 2018), first and last layers FP16, one global
    loss scale."""
    acc = Accumulator("fp16", 2, 64)
    hidden = LayerPrecision(weight="fp8_e4m3", act="fp8_e4m3", grad_data="fp8_e5m2", grad_weight="fp8_e5m2",
                            acc_fwd=acc, acc_bwd_data=acc, acc_bwd_weight=acc, out="fp16")
    return Recipe("hfp8", FP16_LAYER, hidden, FP16_LAYER, FP16_LAYER, "global")


def _int8() -> Recipe:
    """INT8 weights, activations and gradients, each scaled by its own max every step (symmetric,
    -127..127), exact INT32 accumulation; first and last layers FP16."""
    acc = Accumulator("int32")
    hidden = LayerPrecision(weight="int8_max", act="int8_max", grad_data="int8", grad_weight="int8",
                            acc_fwd=acc, acc_bwd_data=acc, acc_bwd_weight=acc, out="fp16", out_bwd="fp32")
    return Recipe("int8", FP16_LAYER, hidden, FP16_LAYER, FP16_LAYER, "none")


def _int4_fwd() -> Recipe:
    """INT4 forward (SAWB, PACT), FP32 backward (the "INT4 / FP32" column of [P] Tables 1-2):
    the backward GEMMs multiply FP32 gradients with the forward's INT4 operands on the host."""
    hidden = replace(int4_hidden(), grad_data=Cast(), grad_weight=Cast(), acc_bwd_data=None,
                     acc_bwd_weight=None, out_bwd=get_format("fp32"))
    return Recipe("int4-fwd", FP16_LAYER, hidden, FP16_LAYER, FP16_LAYER, "none")


def _bf16() -> Recipe:
    """BF16 everywhere, accumulated in FP32 (modelled, one rounding per product), FP32 master
    weights, no loss scaling (BF16 has FP32's range): the baseline of the block-scaled recipes."""
    return Recipe("bf16", BF16_LAYER, BF16_LAYER, BF16_LAYER, BF16_LAYER)


def block_hidden(fmt: str, weights_2d: bool, rht: int, stochastic: bool) -> LayerPrecision:
    """A hidden layer in a block-scaled format ``fmt`` (`fourbit.traces.block_formats`): the
    weights in its 2-D variant (one copy serves ``fwd`` and ``bwd_data``) or in 1-D blocks along
    each GEMM's K (two copies), activations round to nearest, gradients stochastically (or to
    nearest), the random Hadamard transform of block ``rht`` on ``bwd_weight``'s inputs (0: off),
    FP32 accumulation of the scaled block sums (group = block), BF16 results.

    Raises ConfigError for a format that is not a block format."""
    try:
        block = get_format(fmt)
        weight = get_format(f"{fmt}_2d") if weights_2d else block
    except FormatError as exc:
        raise ConfigError(f"recipe parameters: {exc}") from None
    if not isinstance(block, BlockFormat):
        raise ConfigError(f"recipe parameters: {fmt!r} is not a block format")
    acc = Accumulator("fp32", block.block, None)
    grads = Block(block, "stochastic" if stochastic else "nearest")
    return LayerPrecision(weight=Block(weight), act=Block(block), grad_data=grads, grad_weight=grads,
                          acc_fwd=acc, acc_bwd_data=acc, acc_bwd_weight=acc, out="bf16", rht=rht)


def _block_recipe(name: str, fmt: str, p) -> Recipe:
    """Raises ConfigError for ``attention_bits=4``: block-scaled attention GEMMs need each of Q,
    K, P, V and both gradients in two copies blocked along the K of each GEMM they enter (not
    built; `fourbit.models.layers.SelfAttention` refuses block scales)."""
    if p.attention_bits == 4:
        raise ConfigError(f"recipe {name!r}: attention_bits=4 is not available with block scales (attention's "
                          "operands would need a copy blocked along each of its GEMMs' K); use attention_bits=16")
    hidden = block_hidden(fmt, p.weights_2d, p.rht, p.stochastic)
    return Recipe(name, BF16_LAYER, hidden, BF16_LAYER if p.bf16_last else hidden, BF16_LAYER,
                  attention=BF16_LAYER, last_layers=max(p.bf16_last, 1))


def _luq(p: LUQParams) -> Recipe:
    """LUQ (Chmiel et al., ICLR 2023; technique.md 5.6): INT4 SAWB weights and activations
    (signed range, round to nearest), radix-2 log FP4 gradients scaled by their own maximum with
    stochastic underflow and logarithmic stochastic rounding (`LUQ`), no GradScale; the first and
    last layers in FP16, as the paper's recipe."""
    hidden = LayerPrecision(weight=SAWB(4), act=SAWB(4), grad_data=LUQ(), grad_weight=LUQ(),
                            acc_fwd=Accumulator("int32"), acc_bwd_data=BWD_ACC, acc_bwd_weight=BWD_ACC, out="fp16")
    return Recipe("luq", FP16_LAYER, hidden, FP16_LAYER, FP16_LAYER, "none",
                  attention=_attention(p.attention_bits, hidden))


def _accumulator(value):
    """An accumulator given by its name (``fp16/g4/c64``: its text form) becomes the object."""
    return Accumulator.parse(value) if isinstance(value, str) else value


class NoParams(StrictModel):
    """A recipe without parameters."""

    PATH = "recipe"


ATTENTION_BITS = Field(16, description="attention's Q K^T and P V GEMMs: 16 bits (the first layer's precision, "
                       "default) or 4 (the hidden layers' precision)")
"""The ``attention_bits`` parameter of the 4-bit recipes. Default 16: NVIDIA's NVFP4 recipe keeps
attention's GEMMs in BF16 (arXiv 2509.25149), they hold no weights to store at 4 bits (both
operands are activations that change every step), and the softmax's P has most of its values
far below its maximum, where one per-tensor INT4 scale keeps nothing; 4 quantizes both operands
with the hidden layers' signed activation quantizer and their gradients as the hidden layers'."""


def _attention(bits: int, hidden: LayerPrecision) -> LayerPrecision | None:
    """The ``attention`` role for ``attention_bits``: the hidden precision for 4, else None (the
    first layer's)."""
    return hidden if bits == 4 else None


class LUQParams(StrictModel):
    """Parameters of ``luq``: attention's precision."""

    PATH = "recipe"
    attention_bits: IntChoice((4, 16)) = ATTENTION_BITS


class FP4GradParams(StrictModel):
    """Parameters of the recipes with log-FP4 gradients (``int4-dw8``; ``int4`` adds ``tpr``)."""

    PATH = "recipe"
    radix: IntChoice(LogFormat.RADIXES) = Field(4, description="log base r of the FP4 gradients")
    exponent_bits: IntChoice(LogFormat.EXPONENT_BITS) = Field(3, description="exponent bits of the FP4 gradients")
    grad_scaling: Literal[GRAD_SCALING] = Field(  # type: ignore[valid-type]
        "gradscale", description="per-layer GradScale, one global loss scale, or none")
    tie: Literal["up", "down"] = Field("up", description="ties of the FP4 rounding: up (Fig. 2c) or down (Eq. 1)")
    bwd_acc: Annotated[Accumulator, BeforeValidator(_accumulator)] = Field(
        BWD_ACC, description="accumulator of the backward GEMMs, FORMAT/gGROUP/cCHUNK",
        json_schema_extra={"allowed": "an accumulator FORMAT[/gGROUP[/cCHUNK]], e.g. fp16/g4/c64"})
    attention_bits: IntChoice((4, 16)) = ATTENTION_BITS


class Int4Params(FP4GradParams):
    """Parameters of ``int4``: those of `FP4GradParams` and Two-Phase Rounding on or off."""

    tpr: bool = Field(True, description="Two-Phase Rounding: odd phase for bwd_weight (radix 4 and 16 have one)")


def _int4(p: Int4Params) -> Recipe:
    # depthwise convolutions stay in FP16 ("< 3% of total ops", [P] section 5)
    hidden = int4_hidden(p.radix, p.exponent_bits, p.tpr, p.bwd_acc, p.tie)
    return Recipe("int4", FP16_LAYER, hidden, FP16_LAYER, FP16_LAYER, p.grad_scaling, p.tie, p.radix,
                  p.exponent_bits, p.tpr, attention=_attention(p.attention_bits, hidden))


def _int4_dw8(p: FP4GradParams) -> Recipe:
    """INT4 forward; FP4 (even phase) gradients for ``bwd_data`` and FP8 (1-5-2) gradients for
    ``bwd_weight`` (the "dx(FP4) dW(FP8)" column of [P] Tables 1-3)."""
    r = _int4(Int4Params(**dict(p), tpr=False))
    hidden = replace(r.hidden, grad_weight=Cast(get_format("fp8_e5m2")))
    return replace(r, hidden=hidden, tpr=None, attention=_attention(p.attention_bits, hidden) or r.first)


class BlockParams(StrictModel):
    """Parameters of the block-scaled recipes (``nvfp4``, ``mxfp4``, ``int4-block``)."""

    PATH = "recipe"
    rht: IntChoice((0, 2, 4, 8, 16, 32, 64, 128)) = Field(
        16, description="random Hadamard transform block on bwd_weight's inputs (0: off)")
    stochastic: bool = Field(True, description="stochastic rounding of the gradients (off: round to nearest)")
    weights_2d: bool = Field(True, description="16x16 (2-D) weight blocks: one copy for fwd and bwd_data")
    bf16_last: int = Field(1, ge=0, le=64, description="how many final layers stay in BF16")
    block: IntChoice((16, 32)) = Field(16, description="elements per block")
    scale: Literal["e4m3", "e8m0"] = Field("e4m3", description="block scale format: E4M3 (two-level) or E8M0")
    attention_bits: IntChoice((4, 16)) = ATTENTION_BITS


class MXParams(BlockParams):
    """``mxfp4``'s parameters: those of `BlockParams` with MXFP4's defaults."""

    weights_2d: bool = Field(False, description="2-D weight blocks (MXFP4: 1-D along each GEMM's K)")
    rht: IntChoice((0, 2, 4, 8, 16, 32, 64, 128)) = Field(
        32, description="random Hadamard transform block on bwd_weight's inputs (0: off; default: the block)")
    block: IntChoice((16, 32)) = Field(32, description="elements per block")
    scale: Literal["e4m3", "e8m0"] = Field("e8m0", description="block scale format: E8M0 (OCP) or E4M3")


def _block_name(base: str, p: BlockParams, default_block: int, default_scale: str) -> str:
    """The block format's name of a recipe's block and scale parameters."""
    return base + ("" if p.block == default_block else f"_b{p.block}") + ("" if p.scale == default_scale else f"_{p.scale}")


RECIPES: dict[str, tuple[type[StrictModel], Callable]] = {
    "fp32": (NoParams, lambda p: _fp32()), "fp16": (NoParams, lambda p: _fp16()),
    "hfp8": (NoParams, lambda p: _hfp8()), "int8": (NoParams, lambda p: _int8()),
    "int4-fwd": (NoParams, lambda p: _int4_fwd()), "int4": (Int4Params, _int4),
    "int4-dw8": (FP4GradParams, _int4_dw8),
    "bf16": (NoParams, lambda p: _bf16()),
    "nvfp4": (BlockParams, lambda p: _block_recipe("nvfp4", _block_name("nvfp4", p, 16, "e4m3"), p)),
    "mxfp4": (MXParams, lambda p: _block_recipe("mxfp4", _block_name("mxfp4", p, 32, "e8m0"), p)),
    "int4-block": (BlockParams, lambda p: _block_recipe("int4-block", _block_name("int4_block", p, 16, "e4m3"), p)),
    "luq": (LUQParams, _luq),
}
"""Each recipe name: the model of its parameters and the builder taking them."""


def recipe_params(name: str) -> type[StrictModel]:
    """The parameter model of the recipe ``name`` (its fields, types and defaults).

    Raises ConfigError for an unknown recipe."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    return RECIPES[name][0]


def parse_recipe(spec: str) -> tuple[str, dict]:
    """Split ``"int4:radix=2,tpr=off"`` into the name and its parameters, each typed by its field
    (`fourbit.traces.config.parse_text`); ``+`` separates parameters too
    (``int4:radix=2+tpr=off``, for grids whose values are comma separated).

    Raises ConfigError for an unknown recipe or parameter, a malformed item, a parameter given
    twice or a value that is not of the parameter's type."""
    if not isinstance(spec, str):
        raise ConfigError(f"a recipe is given by its spec, a string such as 'int4:radix=2', not {spec!r}")
    name, colon, rest = spec.partition(":")
    name = name.strip()
    model = recipe_params(name)
    params = {}
    items = [part.strip() for part in rest.replace("+", ",").split(",")] if colon else []
    if colon and not all(items):
        raise ConfigError(f"recipe {spec!r}: an empty parameter between separators")
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"recipe {spec!r}: parameters are key=value pairs separated by commas, got {item!r}")
        if key in params:
            raise ConfigError(f"recipe {spec!r}: parameter {key!r} is given twice")
        if key not in model.model_fields:
            raise ConfigError(f"recipe {name!r} has no parameter {key!r}; its parameters: "
                              f"{', '.join(model.model_fields) or 'none'}")
        params[key] = parse_text(model.model_fields[key].annotation, value, f"recipe.{key}")
    return name, params


def get_recipe(name: str, **params) -> Recipe:
    """The recipe called ``name``, with optional parameters (`recipe_params` lists each recipe's:
    ``int4``: radix, exponent_bits, tpr, grad_scaling, tie, bwd_acc, attention_bits; ``int4-dw8``:
    the same but tpr; ``luq``: attention_bits; the block recipes: rht, stochastic, weights_2d,
    bf16_last, block, scale, attention_bits). ``name`` may carry them itself, as on the command line:
    ``"int4:radix=2,tpr=off,grad_scaling=global"``; the recipe's name is then that whole spec
    (traces and tables tell the variants apart). Keyword ``params`` must have their field's type
    (numpy scalars count as Python's) and must not repeat a parameter of the spec.

    Raises
    ------
    ConfigError
        Unknown recipe name (the message lists the known ones) or bad parameters (the message
        names the parameter and what it allows).
    """
    base, spec_params = parse_recipe(name)
    model, build = RECIPES[base]
    for key in params:
        if key not in model.model_fields:
            raise ConfigError(f"recipe {base!r} has no parameter {key!r}; its parameters: "
                              f"{', '.join(model.model_fields) or 'none'}")
        if key in spec_params:
            raise ConfigError(f"recipe {name!r}: parameter {key!r} is given twice (in the spec and as a keyword)")
    params = {k: v.item() if isinstance(v, np.generic) else v for k, v in params.items()}  # numpy scalars
    recipe = build(model.parse({**spec_params, **params}, f"recipe {base!r}"))
    if params:  # the name tells the variant apart, as a spec would
        extra = ",".join(f"{k}={param_text(v)}" for k, v in params.items())
        name = f"{name},{extra}" if spec_params else f"{base}:{extra}"
    return replace(recipe, name=name.strip() if spec_params or params else base)


def param_text(value) -> str:
    """A parameter value as a spec writes it (on/off, accumulator names)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return value.name if isinstance(value, Accumulator) else str(value)

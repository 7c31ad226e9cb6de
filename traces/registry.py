"""What each layer type contributes to a training step: its GEMMs and the vector work around them,
in order, for the forward pass, the backward pass and the weight update. One registry, used by
the emulator's layers as they compute (`fourbit.models.layers`) and by the topology importer,
which has shapes only (`fourbit.traces.scalesim`), so a trained model and an imported topology of
the same shapes give the same GEMM and op rows.

`StepRecorder` decides where each op runs: ops are attributed to the GEMM whose output path runs
them (the most recent GEMM, ``fused=True``) unless the caller names the layer and phase; an op
before any GEMM of the step is a separate pass of its own layer (``fused=False``). An op that
needs a pass of its own (BatchNorm: the statistics of the whole tensor) starts a pass that the
following ops join; the pass runs before the next GEMM, so it is attributed to that GEMM.

Element counts are those of the tensor each op reads; formats name what it reads and writes
(FP32 where the emulator computes in FP32: activation functions, normalisation, the optimizer).
"""

from __future__ import annotations

import pandas as pd

from fourbit.traces import schema
from fourbit.traces.errors import TraceError
from fourbit.traces.lowering import GemmShape, operand_tensors

__all__ = [
    "STORED_ACTIVATION", "StepRecorder", "batchnorm", "described_role", "described_row",
    "quantize_described_gradient", "weight_layer_backward", "weight_layer_forward", "batchnorm_backward", "bias_add", "clip_backward", "col2im",
    "embedding_backward", "gelu", "gelu_backward", "gemm_row", "grad_norm", "layer_norm", "layer_norm_backward",
    "loss", "lstm_cell", "lstm_cell_backward", "pool", "pool_backward", "quantize_gradient", "quantize_input", "relu",
    "relu_backward", "residual_add", "softmax", "softmax_backward", "weight_update",
]

STORED_ACTIVATION = "fp16"
"""The format a GEMM layer's output is stored in before a separate pass (BatchNorm) reads it: the
16-bit storage of GEMM results (INT4 GEMMs write FP16; FP16 units store FP32 results as FP16,
`fourbit.hwsim.jobs`)."""


class StepRecorder:
    """Collects the ``gemms`` and ``ops`` rows of the steps being recorded (module docstring for
    where ops go)."""

    def __init__(self) -> None:
        self.gemm_rows: list[dict] = []
        self.op_rows: list[dict] = []
        self.active = False
        self.step = 0
        self._producer: tuple[str, str] | None = None
        self._pending: list[dict] = []

    def start(self, step: int) -> None:
        """Record everything until `stop`, as step ``step``."""
        self.active = True
        self.step = int(step)
        self._producer = None
        self._pending = []

    def stop(self) -> None:
        if self._pending and self._producer is not None:  # a pass after the last GEMM
            for row in self._pending:
                row["layer"], row["phase"] = self._producer
            self.op_rows += self._pending
        self.active = False
        self._producer = None
        self._pending = []

    def add_gemm(self, row: dict) -> None:
        """Record one GEMM row (`gemm_row`): it becomes the producer whose output path runs the
        following ops, and a separate pass waiting for it runs before it."""
        if not self.active:
            return
        self._producer = (row["layer"], row["phase"])
        for pending in self._pending:
            pending["layer"], pending["phase"] = self._producer
        self.op_rows += self._pending
        self._pending = []
        self.gemm_rows.append({"step": self.step, **row})

    def op(self, op: str, elements: int, in_format: str, out_format: str, *, layer: str | None = None,
           phase: str | None = None, default: tuple[str, str] | None = None, fused: bool = True) -> None:
        """Record vector work. With ``layer``/``phase`` it is fused into that GEMM's output path;
        without, into the most recent GEMM's; before any GEMM, a separate pass of ``default``;
        with ``fused=False`` (or while such a pass is open) it joins the pass before the next GEMM."""
        if not self.active:
            return
        if op not in schema.OP_KINDS:
            raise TraceError(f"unknown op {op!r}; known ops: {schema.OP_KINDS}")
        if layer is None and (not fused or self._pending):
            self._pending.append({"step": self.step, "layer": None, "phase": None, "op": op,
                                  "elements": int(elements), "in_format": in_format,
                                  "out_format": out_format, "fused": False})
            return
        if layer is not None:
            where, fused = (layer, phase), True
        elif self._producer is not None:
            where, fused = self._producer, True
        else:
            where, fused = default, False
        self.op_rows.append({"step": self.step, "layer": where[0], "phase": where[1], "op": op,
                             "elements": int(elements), "in_format": in_format, "out_format": out_format,
                             "fused": fused})

    def tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The recorded ``gemms`` and ``ops`` tables, in the schema's dtypes."""
        return schema.from_records("gemms", self.gemm_rows), schema.from_records("ops", self.op_rows)


def gemm_row(layer: str, layer_type: str, phase: str, shape: GemmShape, formats: tuple[str, str, str, str], *,
             roles: tuple[str, str, str] | None = None,
             tensors: tuple[tuple[str, int], tuple[str, int]] | None = None,
             operands: dict | None = None, geometry: dict | None = None) -> dict:
    """The structural columns of one GEMM row: names, shape, ``formats`` (a, b, accumulator,
    output), ``roles`` (a, b, result; default a weight layer's, `schema.PHASE_ROLES`), ``tensors``
    ((a tensor, copy), (b tensor, copy)), ``operands`` (scaling columns; default per-tensor FP32
    scales, filled by the schema) and the convolution ``geometry``."""
    a, b, acc, out = formats
    row = {"layer": layer, "layer_type": layer_type, "phase": phase, "M": shape.M, "N": shape.N, "K": shape.K,
           "groups": shape.groups, "a_format": a, "b_format": b, "acc_format": acc, "out_format": out}
    row["a_role"], row["b_role"], row["out_role"] = roles or schema.PHASE_ROLES[phase]
    if tensors is not None:
        (row["a_tensor"], row["a_copy"]), (row["b_tensor"], row["b_copy"]) = tensors
    row.update(operands or {})
    row.update(geometry or {})
    return row


# ------------------------------------------------------------------------------------------------
# what each layer type contributes, in the order a training step runs it
# ------------------------------------------------------------------------------------------------
def quantize_input(rec: StepRecorder, layer: str, elements: int, op: str | None, out_format: str) -> None:
    """A GEMM layer's input quantized for its ``fwd`` GEMM (PACT, SAWB, a cast; nothing for an
    FP32 input): on the output path of the GEMM that produced it (or in the pass before this
    GEMM), or a pass of its own when it is the data."""
    if op is not None:
        rec.op(op, elements, "fp32", out_format, default=(layer, "fwd"))


def bias_add(rec: StepRecorder, elements: int, gemm_out_format: str) -> None:
    """The bias added to a GEMM's result, on its output path."""
    rec.op("bias_add", elements, gemm_out_format, "fp32")


def relu(rec: StepRecorder, layer: str, elements: int) -> None:
    rec.op("relu", elements, "fp32", "fp32", default=(layer, "fwd"))


def relu_backward(rec: StepRecorder, layer: str, elements: int) -> None:
    rec.op("relu_bwd", elements, "fp32", "fp32", default=(layer, "bwd_data"))


def batchnorm(rec: StepRecorder, elements: int) -> None:
    """BatchNorm forward needs the whole tensor's statistics: a pass of its own over the stored
    GEMM output (`STORED_ACTIVATION`), which the next ops join."""
    rec.op("bn_fwd", elements, STORED_ACTIVATION, "fp32", fused=False)


def batchnorm_backward(rec: StepRecorder, elements: int) -> None:
    rec.op("bn_bwd", elements, "fp32", "fp32", fused=False)


def pool(rec: StepRecorder, elements: int) -> None:
    rec.op("pool_fwd", elements, "fp32", "fp32")


def pool_backward(rec: StepRecorder, elements: int) -> None:
    rec.op("pool_bwd", elements, "fp32", "fp32")


def residual_add(rec: StepRecorder, elements: int) -> None:
    rec.op("residual_add", elements, "fp32", "fp32")


def loss(rec: StepRecorder, elements: int) -> None:
    """Softmax cross-entropy over the logits and its gradient, on the last GEMM's output path."""
    rec.op("softmax_xent", elements, "fp32", "fp32")


def hadamard(rec: StepRecorder, layer: str, phase: str, elements: int, block: int) -> None:
    """A random Hadamard transform of ``elements`` values in blocks of ``block`` (a fast
    Walsh-Hadamard transform: log2(block) butterfly adds per value; the op counts butterflies)."""
    rec.op("hadamard", elements * (block.bit_length() - 1), "fp32", "fp32", default=(layer, phase))


def quantize_copy(rec: StepRecorder, layer: str, phase: str, elements: int, op: str | None, out_format: str, *,
                  hadamard_block: int = 0) -> None:
    """A second quantized copy of a stored FP32 tensor for the GEMM ``phase`` (blocks along that
    GEMM's K), after its random Hadamard transform when ``hadamard_block``: passes of their own."""
    if hadamard_block:
        hadamard(rec, layer, phase, elements, hadamard_block)
    if op is not None:
        rec.op(op, elements, "fp32", out_format, default=(layer, phase))


def quantize_gradient(rec: StepRecorder, layer: str, elements: int, grad_scale: bool,
                      quantizations: list[tuple[str | None, str]], *, hadamard_block: int = 0) -> None:
    """A GEMM layer's output gradient made ready for its backward GEMMs: its max (for the
    GradScale, when the layer has one), the random Hadamard transform of ``bwd_weight``'s copy
    (``hadamard_block``) and one quantization per distinct copy (``(op, format)``,
    ``bwd_weight``'s first)."""
    if grad_scale:
        rec.op("maxabs", elements, "fp32", "fp32", default=(layer, "bwd_weight"))
    if hadamard_block:
        hadamard(rec, layer, "bwd_weight", elements, hadamard_block)
    for op, fmt in quantizations:
        if op is not None:
            rec.op(op, elements, "fp32", fmt, default=(layer, "bwd_weight"))


def weight_update(rec: StepRecorder, gemm: str, weights: int, grad_format: str, statistics: tuple[str, ...],
                  requantize: tuple[str | None, str], copies: int = 1) -> None:
    """SGD with momentum on the FP32 master weights (read and written with their momentum), the
    weight quantizer's statistics and the re-quantization for the next step (``copies`` of them:
    two when ``fwd`` and ``bwd_data`` reduce the weights along different axes in 1-D blocks), on
    the output path of the GEMM ``gemm`` whose ``bwd_weight`` computes their gradient."""
    rec.op("sgd_momentum", weights, grad_format, "fp32", layer=gemm, phase="bwd_weight")
    for op in statistics:
        rec.op(op, weights, "fp32", "fp32", layer=gemm, phase="bwd_weight")
    op, fmt = requantize
    if op is not None:
        for _ in range(copies):
            rec.op(op, weights, "fp32", fmt, layer=gemm, phase="bwd_weight")


def grad_norm(rec: StepRecorder, gemm: str, parameters: int) -> None:
    rec.op("grad_norm", parameters, "fp32", "fp32", layer=gemm, phase="bwd_weight")


def col2im(rec: StepRecorder, elements: int, gemm_out_format: str) -> None:
    """A convolution's ``bwd_data`` columns scatter-added into the input gradient (a kernel
    larger than 1x1 or a stride overlaps or spreads them)."""
    rec.op("col2im_add", elements, gemm_out_format, "fp32")


def clip_backward(rec: StepRecorder, elements: int) -> None:
    """PACT's straight-through gradient and its clip gradient, on ``bwd_data``'s output path."""
    rec.op("pact_bwd", elements, "fp32", "fp32")


def embedding_backward(rec: StepRecorder, elements: int) -> None:
    """The gradient rows scatter-added into the embedding table."""
    rec.op("embedding_bwd", elements, "fp32", "fp32")


def lstm_cell(rec: StepRecorder, elements: int) -> None:
    """One time step's gates and cell state of an LSTM (``elements`` = batch x hidden), in FP32."""
    rec.op("lstm_cell", elements, "fp32", "fp32")


def lstm_cell_backward(rec: StepRecorder, elements: int) -> None:
    rec.op("lstm_cell_bwd", elements, "fp32", "fp32")


def layer_norm(rec: StepRecorder, elements: int) -> None:
    """LayerNorm forward in FP32: each token's statistics over the width, then the affine
    normalisation; a pass of its own (the statistics come before the normalisation)."""
    rec.op("layer_norm", elements, "fp32", "fp32", fused=False)


def layer_norm_backward(rec: StepRecorder, elements: int) -> None:
    rec.op("layer_norm_bwd", elements, "fp32", "fp32", fused=False)


def softmax(rec: StepRecorder, elements: int) -> None:
    """Softmax over each row of attention scores (the 1/sqrt(d) scale and the causal mask folded
    in), in FP32; a pass of its own (each row's max and sum come first)."""
    rec.op("softmax", elements, "fp32", "fp32", fused=False)


def softmax_backward(rec: StepRecorder, elements: int) -> None:
    """dS = P * (dP - rowsum(dP * P)): a pass of its own (the row sums come first)."""
    rec.op("softmax_bwd", elements, "fp32", "fp32", fused=False)


def gelu(rec: StepRecorder, layer: str, elements: int) -> None:
    """GELU (tanh form) on the output path of the GEMM that produced its input, in FP32."""
    rec.op("gelu", elements, "fp32", "fp32", default=(layer, "fwd"))


def gelu_backward(rec: StepRecorder, layer: str, elements: int) -> None:
    rec.op("gelu_bwd", elements, "fp32", "fp32", default=(layer, "bwd_data"))


# ------------------------------------------------------------------------------------------------
# shape-only recording of a weight layer from a recipe description (the importers)
# ------------------------------------------------------------------------------------------------
_ROLE_KEYS = ("gemm_formats", "ops", "separate_grad_copies", "grad_scale", "trained_clip")


def described_role(recipe: dict, role: str, *, signed_inputs: bool = False) -> dict:
    """A role's entry of a recipe description (`fourbit.models.recipes.Recipe.describe`), or its
    entry for inputs that can be negative (``signed_inputs``: SAWB's signed range, not PACT's).

    Raises TraceError when the description has no complete entry for the role."""
    p = recipe.get(role) if isinstance(recipe, dict) else None
    if signed_inputs and isinstance(p, dict):
        p = p.get("signed_inputs")
    if not isinstance(p, dict) or any(k not in p for k in _ROLE_KEYS):
        what = f"{role!r} with signed inputs" if signed_inputs else repr(role)
        raise TraceError(f"recipe description has no complete entry for layer role {what} (needs {', '.join(_ROLE_KEYS)})")
    return p


def described_row(name: str, layer_type: str, phase: str, shape: GemmShape, precision: dict, *,
                  roles: tuple[str, str, str] | None = None, tensors=None, geometry: dict | None = None) -> dict:
    """`gemm_row` of one GEMM of a layer with a described role's formats (default tensors: a
    weight layer's, `fourbit.traces.lowering.operand_tensors`)."""
    if tensors is None:
        tensors = operand_tensors(name, phase, precision["separate_grad_copies"],
                                  precision.get("separate_act_copies", False), precision.get("separate_weight_copies", False))
    return gemm_row(name, layer_type, phase, shape, tuple(precision["gemm_formats"][phase]), roles=roles,
                    tensors=tensors, geometry=geometry, operands=precision.get("operand_scaling", {}).get(phase))


def quantize_described_gradient(rec: StepRecorder, name: str, elements: int, precision: dict) -> None:
    """`quantize_gradient` with a described role's GradScale and gradient copies."""
    ops, formats = precision["ops"], precision["gemm_formats"]
    copies = [(ops["grad_weight"], formats["bwd_weight"][0])]
    if precision["separate_grad_copies"]:
        copies.append((ops["grad_data"], formats["bwd_data"][0]))
    quantize_gradient(rec, name, elements, precision["grad_scale"], copies, hadamard_block=precision.get("rht", 0))


def weight_layer_forward(rec: StepRecorder, name: str, layer_type: str, shapes: dict, precision: dict,
                         input_elements: int, geometry: dict | None = None) -> None:
    """What a weight layer records forward up to its GEMM: the input's quantization (as stored, or
    as the GEMM reads it for block scales: M x K elements), the GEMM."""
    if precision.get("quantize_as_read", False):
        f = shapes["fwd"]
        input_elements = f.M * f.K * f.groups
    quantize_input(rec, name, input_elements, precision["ops"]["act"], precision["gemm_formats"]["fwd"][0])
    rec.add_gemm(described_row(name, layer_type, "fwd", shapes["fwd"], precision, geometry=geometry))


def weight_layer_backward(rec: StepRecorder, name: str, layer_type: str, shapes: dict, precision: dict,
                          geometry: dict | None = None) -> None:
    """What a weight layer records backward up to its ``bwd_data``: the output gradient's scaling
    and quantizations, ``bwd_weight``, the weight update, ``bwd_data``."""
    f, w = shapes["fwd"], shapes["bwd_weight"]
    ops, formats = precision["ops"], precision["gemm_formats"]
    quantize_described_gradient(rec, name, f.M * f.N * f.groups, precision)
    if precision.get("separate_act_copies", False):
        quantize_copy(rec, name, "bwd_weight", f.M * f.K * f.groups, ops["act_weight_grad"], formats["bwd_weight"][1],
                      hadamard_block=precision.get("rht", 0))
    rec.add_gemm(described_row(name, layer_type, "bwd_weight", w, precision, geometry=geometry))
    weight_update(rec, name, w.M * w.N * w.groups, formats["bwd_weight"][3], tuple(ops["weight_statistics"]),
                  (ops["weight"], formats["fwd"][1]), 2 if precision.get("separate_weight_copies", False) else 1)
    rec.add_gemm(described_row(name, layer_type, "bwd_data", shapes["bwd_data"], precision, geometry=geometry))

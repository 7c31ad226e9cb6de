"""Decoder-only transformers as shape-only training traces.

A SCALE-Sim GEMM topology cannot say which GEMM is attention (an activation x activation product
batched over heads, with a softmax between) or where LayerNorm and GELU run, so a transformer is
described by its hyper-parameters instead: a TOML file with a ``[transformer]`` table (the shipped
ones are in ``traces/transformers/``)::

    [transformer]
    width = 768        # model width D
    heads = 12         # attention heads H (D divisible by H; head width d = D / H)
    layers = 12        # blocks
    context = 1024     # tokens per sequence T
    vocab = 50257      # vocabulary V
    mlp_ratio = 4      # MLP width F = mlp_ratio * D

One training step at ``batch`` sequences (B) is lowered block by block (pre-LayerNorm, as GPT-2;
Radford et al. 2019), every contribution recorded through `fourbit.traces.registry`:

- token and position embeddings (lookups; their gradients scatter-added backward);
- per block: LayerNorm; the QKV projection (linear, B*T x 3D by D, with bias); attention per
  (sequence, head) as groups = B*H: scores = Q K^T (M = N = T, K = d), softmax (a pass: each
  row's max and sum), context = P V (M = T, N = d, K = T); the output projection (D by D, bias);
  the residual add; LayerNorm; the MLP (D -> F with bias and GELU, F -> D with bias); the
  residual add;
- the final LayerNorm, the vocabulary projection (B*T x V by D, no bias) and the loss.

Backward runs the same in reverse (the residual adds pass gradients through: no op, as in the
emulator's residual layer).

Attention GEMMs multiply two activations: their operands have the role ``activation`` (both
quantized with the recipe's attention role), their ``bwd_weight`` is the gradient of K or V, an
activation (``out_role`` ``gradient``), so they get no weight update. The 1/sqrt(d) scale and the
causal mask fold into the softmax pass.
"""

from __future__ import annotations

import hashlib
import tomllib
from importlib import resources
from pathlib import Path

from pydantic import Field

from fourbit.traces import lowering, registry, schema
from fourbit.traces.config import StrictModel
from fourbit.traces.errors import ConfigError, TraceError
from fourbit.traces.io import Trace, package_version
from fourbit.traces.lowering import GemmShape

__all__ = ["TransformerSpec", "import_transformer", "read_transformer", "shipped_transformers"]

_MAX = 1 << 20


class TransformerSpec(StrictModel):
    """The hyper-parameters of a decoder-only transformer (module docstring)."""

    PATH = "transformer"
    width: int = Field(ge=1, le=_MAX, description="model width D")
    heads: int = Field(ge=1, le=_MAX, description="attention heads H; D must be divisible by H")
    layers: int = Field(ge=1, le=_MAX, description="blocks")
    context: int = Field(ge=1, le=_MAX, description="tokens per sequence T")
    vocab: int = Field(ge=1, le=1 << 24, description="vocabulary V")
    mlp_ratio: int = Field(4, ge=1, le=64, description="MLP width F = mlp_ratio * D")

    @property
    def head_width(self) -> int:
        return self.width // self.heads


def shipped_transformers() -> list[str]:
    """Names of the transformer descriptions shipped with fourbit (``traces/transformers/*.toml``)."""
    return sorted(p.name[:-5] for p in resources.files("fourbit.traces").joinpath("transformers").iterdir()
                  if p.name.endswith(".toml"))


def is_transformer(source: str | Path) -> bool:
    """Whether ``source`` names a transformer description: a ``.toml`` file or a shipped name."""
    return str(source).endswith(".toml") or str(source) in shipped_transformers()


def _text(source: str | Path) -> tuple[str, str]:
    path = Path(source)
    if path.is_file():
        return path.read_text(encoding="utf-8", errors="replace"), path.stem
    res = resources.files("fourbit.traces").joinpath("transformers", f"{source}.toml")
    if res.is_file():
        return res.read_text(encoding="utf-8"), str(source)
    raise TraceError(f"transformer {str(source)!r} is neither a file nor a shipped description "
                     f"({', '.join(shipped_transformers())})")


def read_transformer(source: str | Path) -> tuple[str, TransformerSpec]:
    """(name, spec) of a transformer description file or shipped name.

    Raises TraceError for an unknown source, TOML that does not parse, a missing ``[transformer]``
    table, or a field out of range (named, with what is allowed)."""
    text, name = _text(source)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TraceError(f"{source}: not TOML: {exc}") from None
    table = data.get("transformer")
    if not isinstance(table, dict):
        raise TraceError(f"{source}: no [transformer] table (width, heads, layers, context, vocab, mlp_ratio)")
    try:
        spec = TransformerSpec.parse(table, f"{source} [transformer]")
    except ConfigError as exc:
        raise TraceError(str(exc)) from None
    if spec.width % spec.heads:
        raise TraceError(f"{source}: width {spec.width} is not divisible by heads {spec.heads}")
    return name, spec


class _Step:
    """Records one training step of a transformer at ``batch`` sequences with a recipe
    description (its roles: ``hidden`` projections and MLP, ``last`` the vocabulary projection,
    ``attention`` the activation x activation GEMMs)."""

    def __init__(self, spec: TransformerSpec, batch: int, recipe: dict) -> None:
        self.s, self.batch, self.recipe = spec, batch, recipe
        self.rec = registry.StepRecorder()
        self.tokens = batch * spec.context

    def role(self, name: str) -> dict:
        """The role's precision for signed inputs (a transformer's GEMM inputs come from
        LayerNorm, attention and GELU, not from a ReLU: SAWB's signed range, not PACT's)."""
        return registry.described_role(self.recipe, name, signed_inputs=True)

    # -- linear layers (weights) ---------------------------------------------------------------
    def linear_forward(self, name: str, role: str, inputs: int, outputs: int, bias: bool) -> None:
        p = self.role(role)
        registry.weight_layer_forward(self.rec, name, "linear", lowering.linear(self.tokens, inputs, outputs), p,
                                      self.tokens * inputs)
        if bias:
            registry.bias_add(self.rec, self.tokens * outputs, p["gemm_formats"]["fwd"][3])

    def linear_backward(self, name: str, role: str, inputs: int, outputs: int) -> None:
        p = self.role(role)
        registry.weight_layer_backward(self.rec, name, "linear", lowering.linear(self.tokens, inputs, outputs), p)
        if p["trained_clip"]:
            registry.clip_backward(self.rec, self.tokens * inputs)

    # -- attention (activation x activation) ----------------------------------------------------
    def _attention_shapes(self) -> dict[str, dict[str, GemmShape]]:
        s, g = self.s, self.batch * self.s.heads
        t, d = s.context, s.head_width
        return {"scores": {"fwd": GemmShape(t, t, d, g), "bwd_data": GemmShape(t, d, t, g),
                           "bwd_weight": GemmShape(t, d, t, g)},
                "context": {"fwd": GemmShape(t, d, t, g), "bwd_data": GemmShape(t, t, d, g),
                            "bwd_weight": GemmShape(d, t, t, g)}}

    def attention_forward(self, block: str) -> None:
        p = self.role("attention")
        shapes = self._attention_shapes()
        op, fmt = p["ops"]["act"], p["gemm_formats"]["fwd"][0]
        for gemm, (a, b) in (("scores", ("q", "k")), ("context", ("p", "v"))):
            name = f"{block}.attn.{gemm}"
            sh = shapes[gemm]["fwd"]
            registry.quantize_input(self.rec, name, sh.groups * sh.M * sh.K, op, fmt)
            registry.quantize_input(self.rec, name, sh.groups * sh.K * sh.N, op, p["gemm_formats"]["fwd"][1])
            self.rec.add_gemm(registry.described_row(name, "attention", "fwd", sh, p, roles=schema.ATTENTION_ROLES["fwd"],
                                                     tensors=((f"{block}.attn.{a}", 0), (f"{block}.attn.{b}", 0))))
            if gemm == "scores":
                registry.softmax(self.rec, sh.groups * sh.M * sh.N)

    def attention_backward(self, block: str) -> None:
        p = self.role("attention")
        shapes = self._attention_shapes()
        for gemm, (a, b) in (("context", ("p", "v")), ("scores", ("q", "k"))):
            name = f"{block}.attn.{gemm}"
            sh = shapes[gemm]
            registry.quantize_described_gradient(self.rec, name, sh["fwd"].groups * sh["fwd"].M * sh["fwd"].N, p)
            dy = f"{name}.dy"
            second = 1 if p["separate_grad_copies"] else 0
            for phase, tensors in (("bwd_weight", ((dy, 0), (f"{block}.attn.{a}", 0))),
                                   ("bwd_data", ((dy, second), (f"{block}.attn.{b}", 0)))):
                self.rec.add_gemm(registry.described_row(name, "attention", phase, sh[phase], p,
                                                         roles=schema.ATTENTION_ROLES[phase], tensors=tensors))
            if gemm == "context":
                registry.softmax_backward(self.rec, sh["fwd"].groups * sh["fwd"].M * sh["fwd"].K)

    # -- the step ------------------------------------------------------------------------------
    def record(self) -> registry.StepRecorder:
        s, rec, n = self.s, self.rec, self.tokens
        d, f, v = s.width, s.mlp_ratio * s.width, s.vocab
        rec.start(0)
        for i in range(s.layers):
            h = f"h{i}"
            registry.layer_norm(rec, n * d)
            self.linear_forward(f"{h}.attn.qkv", "hidden", d, 3 * d, True)
            self.attention_forward(h)
            self.linear_forward(f"{h}.attn.proj", "hidden", d, d, True)
            registry.residual_add(rec, n * d)
            registry.layer_norm(rec, n * d)
            self.linear_forward(f"{h}.mlp.fc", "hidden", d, f, True)
            registry.gelu(rec, f"{h}.mlp.fc", n * f)
            self.linear_forward(f"{h}.mlp.proj", "hidden", f, d, True)
            registry.residual_add(rec, n * d)
        registry.layer_norm(rec, n * d)
        self.linear_forward("lm_head", "last", d, v, False)
        registry.loss(rec, n * v)
        self.linear_backward("lm_head", "last", d, v)
        registry.layer_norm_backward(rec, n * d)
        for i in reversed(range(s.layers)):
            h = f"h{i}"
            self.linear_backward(f"{h}.mlp.proj", "hidden", f, d)
            registry.gelu_backward(rec, f"{h}.mlp.fc", n * f)
            self.linear_backward(f"{h}.mlp.fc", "hidden", d, f)
            registry.layer_norm_backward(rec, n * d)
            self.linear_backward(f"{h}.attn.proj", "hidden", d, d)
            self.attention_backward(h)
            self.linear_backward(f"{h}.attn.qkv", "hidden", d, 3 * d)
            registry.layer_norm_backward(rec, n * d)
        registry.embedding_backward(rec, n * d)
        rec.stop()
        return rec


def import_transformer(source: str | Path, batch: int, recipe: dict) -> Trace:
    """A shape-only training trace of the transformer ``source`` (a description file or shipped
    name) at ``batch`` sequences per step, with the formats and ops of the recipe description
    ``recipe`` (module docstring).

    Raises TraceError for a malformed description, a batch < 1, or a recipe description without
    a role the transformer needs (hidden, last, attention)."""
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise TraceError(f"batch must be an integer >= 1, got {batch!r}")
    name, spec = read_transformer(source)
    gemms, ops = _Step(spec, batch, recipe).record().tables()
    text, _ = _text(source)
    meta = {"model": name, "dataset": None,
            "source": {"kind": "transformer", "topology": str(source), "sha256": hashlib.sha256(text.encode()).hexdigest(),
                       **spec.model_dump()},
            "recipe": recipe, "seed": None, "batch_size": batch, "epochs": None, "steps": 1,
            "data_input_layer": None,  # token ids feed an embedding: every bwd_data is needed
            "package_version": package_version()}
    return Trace(meta, gemms, ops, schema.from_records("metrics", []))

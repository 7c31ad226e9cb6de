"""Import SCALE-Sim topology files as training traces (shapes only, no value statistics).

SCALE-Sim (Samajdar et al., ISPASS 2020) describes networks as CSV files, one layer per line:

conv topologies
    ``Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter,
    Strides`` (a trailing comma is usual). The IFMAP sizes are already padded, so the padding is
    0 and the output size is floor((H - R)/s) + 1. (SCALE-Sim itself rounds up when H - R is not a
    multiple of s; fourbit follows the convolution arithmetic, which rounds down.) A layer whose
    name contains ``DP`` is depthwise (SCALE-Sim's own rule): it is imported as a grouped
    convolution with groups = Channels (and Num Filter = Channels, a depth multiplier of 1, when
    the file gives 1).
GEMM topologies
    ``Layer, M, N, K``: an (M x K) by (K x N) product per sample, e.g. M = tokens of one sequence,
    K = input and N = output features; it is lowered like a fully connected layer with
    batch * M rows.

Text after ``#`` is a comment; blank lines, surrounding spaces and tabs are ignored. A malformed
line (a wrong number of fields, a non-integer or non-positive value, a value above 2^62, a filter
larger than its input) is a `TraceError` naming the file and the line.

The trace has all three phases of every layer (`fourbit.traces.lowering`) in training order (every
layer's ``fwd``; then, from the last layer down, ``bwd_weight`` and ``bwd_data``) with the
operand formats the recipe gives each layer role (first and last layer, depthwise layers, the
rest), and the vector work (``ops``) a training step does around them, recorded through the
registry the emulator's layers record through (`fourbit.traces.registry`), so a model trained
with the same layers and shapes gives the same rows (tested): the input's quantization, BatchNorm
(conv topologies; off with ``batchnorm=False``, when conv layers add a bias instead), ReLU, the
loss, GradScale max-abs and the gradient quantizations, col2im, PACT's clip gradient, the
optimizer update.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fourbit.traces import lowering, registry, schema
from fourbit.traces.errors import TraceError
from fourbit.traces.io import Trace, package_version

__all__ = ["TopologyLayer", "import_topology", "read_topology", "shipped_topologies"]

_CONV_FIELDS = ["layer name", "ifmap height", "ifmap width", "filter height", "filter width",
                "channels", "num filter", "strides"]
_GEMM_FIELDS = ["layer", "m", "n", "k"]


@dataclass(frozen=True)
class TopologyLayer:
    """One line of a topology file."""

    name: str
    line: int
    kind: str  # "conv2d", "dwconv2d" or "linear"
    in_h: int = 1
    in_w: int = 1
    kernel_h: int = 1
    kernel_w: int = 1
    channels: int = 1
    filters: int = 1
    stride: int = 1
    M: int = 0
    N: int = 0
    K: int = 0

    @property
    def groups(self) -> int:
        return self.channels if self.kind == "dwconv2d" else 1


def shipped_topologies() -> list[str]:
    """Names of the topologies shipped with fourbit: SCALE-Sim files (``traces/topologies/*.csv``)
    and transformer descriptions (``traces/transformers/*.toml``, `fourbit.traces.transformer`)."""
    from fourbit.traces.transformer import shipped_transformers

    return sorted([p.name[:-4] for p in resources.files("fourbit.traces").joinpath("topologies").iterdir()
                   if p.name.endswith(".csv")] + shipped_transformers())


def _resolve(topology: str | Path) -> tuple[Path | None, str, str]:
    """(path or None, text, display name) of a file path or a shipped topology name."""
    path = Path(topology)
    if path.is_file():
        return path, path.read_text(encoding="utf-8", errors="replace"), str(path)
    res = resources.files("fourbit.traces").joinpath("topologies", f"{topology}.csv")
    if res.is_file():
        return None, res.read_text(encoding="utf-8"), str(topology)
    raise TraceError(f"topology {str(topology)!r} is neither a file nor a shipped topology "
                     f"({', '.join(shipped_topologies())})")


def _fields(raw: str) -> list[str]:
    fields = [f.strip() for f in raw.split("#", 1)[0].strip().split(",")]
    while fields and fields[-1] == "":
        fields.pop()
    return fields


def _int(value: str, where: str, column: str) -> int:
    """The value of a cell: an integer from 1 to `fourbit.traces.lowering.MAX_COUNT` (2^62, what
    a trace counts exactly in int64)."""
    if not re.fullmatch(r"[+]?\d+", value):
        raise TraceError(f"{where}: {column} = {value!r} is not a positive integer")
    try:
        v = int(value)
    except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits): far too large
        v = lowering.MAX_COUNT + 1
    if v < 1:
        raise TraceError(f"{where}: {column} = {v} must be >= 1")
    if v > lowering.MAX_COUNT:
        shown = value if len(value) <= 30 else f"{value[:12]}... ({len(value)} digits)"
        raise TraceError(f"{where}: {column} = {shown} must be <= 2^62 ({lowering.MAX_COUNT})")
    return v


def read_topology(topology: str | Path) -> tuple[str, list[TopologyLayer]]:
    """Parse a topology (a file path or a shipped name); returns (name, layers).

    Raises
    ------
    TraceError
        Unknown file, an unrecognised header, or a malformed line (named with its number).
    """
    path, text, display = _resolve(topology)
    lines = text.splitlines()
    header_at = next((i for i, raw in enumerate(lines) if _fields(raw)), None)
    if header_at is None:
        raise TraceError(f"{display}: empty topology file")
    header = [h.lower() for h in _fields(lines[header_at])]
    if header == _CONV_FIELDS:
        kind = "conv"
    elif header == _GEMM_FIELDS:
        kind = "gemm"
    else:
        shown = ", ".join(header)
        shown = ascii(shown[:80] + ("..." if len(shown) > 80 else ""))  # a binary file's bytes escaped, not echoed
        raise TraceError(f"{display} line {header_at + 1}: unrecognised header {shown}; expected "
                         f"'{', '.join(_CONV_FIELDS)}' (conv) or '{', '.join(_GEMM_FIELDS)}' (GEMM)")
    want = len(_CONV_FIELDS if kind == "conv" else _GEMM_FIELDS)
    layers: list[TopologyLayer] = []
    for i in range(header_at + 1, len(lines)):
        fields = _fields(lines[i])
        if not fields:
            continue
        where = f"{display} line {i + 1}"
        if len(fields) != want:
            raise TraceError(f"{where}: {len(fields)} fields, expected {want} ({', '.join(header)})")
        name = fields[0]
        if not name:
            raise TraceError(f"{where}: empty layer name")
        if kind == "gemm":
            m, n, k = (_int(v, where, c) for v, c in zip(fields[1:], ("M", "N", "K"), strict=True))
            layers.append(TopologyLayer(name, i + 1, "linear", M=m, N=n, K=k))
            continue
        h, w, r, s, c, f, stride = (_int(v, where, col) for v, col in zip(fields[1:], _CONV_FIELDS[1:], strict=True))
        if r > h or s > w:
            raise TraceError(f"{where}: filter {r}x{s} is larger than the input {h}x{w}")
        if "DP" in name:
            if f == 1:
                f = c
            if f % c:
                raise TraceError(f"{where}: depthwise layer with {c} channels needs Num Filter = 1 or a multiple of {c}, got {f}")
            layers.append(TopologyLayer(name, i + 1, "dwconv2d", h, w, r, s, c, f, stride))
        else:
            layers.append(TopologyLayer(name, i + 1, "conv2d", h, w, r, s, c, f, stride))
    if not layers:
        raise TraceError(f"{display}: no layers after the header")
    seen = set()
    for lay in layers:
        if lay.name in seen:
            raise TraceError(f"{display} line {lay.line}: layer name {lay.name!r} appears twice")
        seen.add(lay.name)
    name = path.stem if path is not None else display
    return name, layers


def _role(i: int, n: int, layer: TopologyLayer, last_layers: int = 1) -> str:
    if i == 0:
        return "first"
    if i >= n - max(last_layers, 1):
        return "last"
    return "depthwise" if layer.kind == "dwconv2d" else "hidden"


def _shapes(layer: TopologyLayer, batch: int) -> tuple[dict, dict]:
    if layer.kind == "linear":
        return lowering.linear(batch * layer.M, layer.K, layer.N), {}
    shapes = lowering.conv2d(batch, layer.channels, layer.in_h, layer.in_w, layer.filters,
                             layer.kernel_h, layer.kernel_w, layer.stride, 0, layer.groups)
    geometry = {"batch": batch, "in_channels": layer.channels, "out_channels": layer.filters,
                "in_h": layer.in_h, "in_w": layer.in_w, "kernel_h": layer.kernel_h,
                "kernel_w": layer.kernel_w, "stride": layer.stride, "padding": 0}
    return shapes, geometry


def _input_elements(layer: TopologyLayer, batch: int) -> int:
    if layer.kind == "linear":
        return batch * layer.M * layer.K
    return batch * layer.channels * layer.in_h * layer.in_w


@dataclass(frozen=True)
class _Layer:
    """One topology layer made ready to record: its lowering, its role's precision (a recipe
    description's role entry) and what follows it in the network."""

    spec: TopologyLayer
    shapes: dict
    geometry: dict
    precision: dict
    input_elements: int
    batchnorm: bool  # a BatchNorm follows it (conv layers of a conv topology, unless the last)
    bias: bool  # it adds a bias (linear layers; conv layers without BatchNorm in the topology)
    last: bool

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def output_elements(self) -> int:
        f = self.shapes["fwd"]
        return f.M * f.N * f.groups

    def formats(self, phase: str) -> list[str]:
        return self.precision["gemm_formats"][phase]


def _forward(rec: registry.StepRecorder, layer: _Layer) -> None:
    """What the emulator's layers record forward: the input's quantization, the GEMM, then the
    bias (a layer without BatchNorm after it), BatchNorm and ReLU, or the loss after the last."""
    registry.weight_layer_forward(rec, layer.name, layer.spec.kind, layer.shapes, layer.precision,
                                  layer.input_elements, layer.geometry)
    out = layer.output_elements
    if layer.bias:
        registry.bias_add(rec, out, layer.formats("fwd")[3])
    if layer.last:
        registry.loss(rec, out)
        return
    if layer.batchnorm:
        registry.batchnorm(rec, out)
    registry.relu(rec, layer.name, out)


def _backward(rec: registry.StepRecorder, layer: _Layer, below: _Layer | None) -> None:
    """What the emulator's layers record backward: the output gradient's scaling and
    quantizations, ``bwd_weight``, the weight update, ``bwd_data``, col2im and PACT's clip
    gradient, then the backward of the ReLU and BatchNorm of the layer below."""
    registry.weight_layer_backward(rec, layer.name, layer.spec.kind, layer.shapes, layer.precision, layer.geometry)
    if below is None:
        return  # the data's gradient: recorded, never used
    spec = layer.spec
    if spec.kind != "linear" and (spec.kernel_h * spec.kernel_w > 1 or spec.stride > 1):
        d = layer.shapes["bwd_data"]
        registry.col2im(rec, d.M * d.N * d.groups, layer.formats("bwd_data")[3])
    if layer.precision["trained_clip"]:
        registry.clip_backward(rec, layer.input_elements)
    registry.relu_backward(rec, below.name, below.output_elements)
    if below.batchnorm:
        registry.batchnorm_backward(rec, below.output_elements)


def import_topology(topology: str | Path, batch: int, recipe: dict, *, batchnorm: bool = True) -> Trace:
    """A shape-only training trace of ``topology`` at ``batch`` samples per step (a transformer
    description, ``.toml`` or a shipped name, goes to `fourbit.traces.transformer.import_transformer`).

    ``recipe`` is a recipe description (``fourbit.models.recipes.Recipe.describe()``): its per-role
    entries decide each GEMM's operand, accumulator and output formats and the quantization ops.
    The network is the one the topology implies, recorded through `fourbit.traces.registry` as the
    emulator records its layers: each conv layer followed by BatchNorm (``batchnorm``; without it,
    a bias) and ReLU, each GEMM-topology layer a linear layer with a bias and ReLU, the last layer
    followed by the loss.

    Raises
    ------
    TraceError
        A malformed topology (see `read_topology`), a batch < 1, a layer whose GEMMs at ``batch``
        exceed the counts a trace holds exactly (the message names the file and the layer), or a
        recipe description without the entries of a role the topology needs.
    """
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise TraceError(f"batch must be an integer >= 1, got {batch!r}")
    from fourbit.traces.transformer import import_transformer, is_transformer

    if not isinstance(recipe, dict):
        raise TraceError(f"recipe must be a recipe description (fourbit.get_recipe(name).describe()), got {recipe!r}")
    if is_transformer(topology):
        return import_transformer(topology, batch, recipe)
    name, specs = read_topology(topology)
    n = len(specs)
    layers = []
    for i, spec in enumerate(specs):
        precision = registry.described_role(recipe, _role(i, n, spec, recipe.get("last_layers", 1)))
        try:
            shapes, geometry = _shapes(spec, batch)
            inputs = _input_elements(spec, batch)  # an op's count: a strided layer's input exceeds its GEMMs'
            if inputs > lowering.MAX_COUNT:
                raise TraceError(f"its input has {inputs:.3g} elements, beyond the {lowering.MAX_COUNT:.3g} (2^62) "
                                 "a trace counts exactly; use a smaller batch or layer")
        except TraceError as exc:
            raise TraceError(f"{topology} layer {spec.name!r} at batch {batch}: {exc}") from None
        last = i == n - 1
        conv = spec.kind != "linear"
        layers.append(_Layer(spec, shapes, geometry, precision, inputs,
                             batchnorm and conv and not last, not (batchnorm and conv), last))
    rec = registry.StepRecorder()
    rec.start(0)
    for layer in layers:
        _forward(rec, layer)
    for i in reversed(range(n)):
        _backward(rec, layers[i], layers[i - 1] if i else None)
    rec.stop()
    gemms, ops = rec.tables()
    digest = hashlib.sha256(read_text(topology).encode()).hexdigest()
    meta = {"model": name, "dataset": None, "source": {"kind": "scalesim", "topology": str(topology),
            "sha256": digest, "batchnorm": batchnorm}, "recipe": recipe, "seed": None,
            "batch_size": batch, "epochs": None, "steps": 1, "data_input_layer": specs[0].name,
            "package_version": package_version()}
    return Trace(meta, gemms, ops, schema.from_records("metrics", []))


def read_text(topology: str | Path) -> str:
    """The text of a topology file or shipped topology."""
    return _resolve(topology)[1]

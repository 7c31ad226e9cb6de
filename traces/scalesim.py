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
line (a wrong number of fields, a non-integer or non-positive value, a filter larger than its
input) is a `TraceError` naming the file and the line.

The trace has all three phases of every layer (`fourbit.traces.lowering`) in training order (every
layer's ``fwd``; then, from the last layer down, ``bwd_weight`` and ``bwd_data``) with the
operand formats the recipe gives each layer role (first and last layer, depthwise layers, the
rest), and the vector work (``ops``) a training step does around them: quantization for the next
layer, BatchNorm (conv topologies; off with ``batchnorm=False``), activation, GradScale max-abs
and FP4 quantization of gradients, col2im, the optimizer update.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fourbit.traces import lowering, schema
from fourbit.traces.errors import TraceError
from fourbit.traces.formats import get_format
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
    """Names of the topologies shipped with fourbit (``traces/topologies/*.csv``)."""
    return sorted(p.name[:-4] for p in resources.files("fourbit.traces").joinpath("topologies").iterdir()
                  if p.name.endswith(".csv"))


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
    if not re.fullmatch(r"[+]?\d+", value):
        raise TraceError(f"{where}: {column} = {value!r} is not a positive integer")
    v = int(value)
    if v < 1:
        raise TraceError(f"{where}: {column} = {v} must be >= 1")
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
        raise TraceError(f"{display} line {header_at + 1}: unrecognised header {', '.join(header)}; expected "
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


def _role(i: int, n: int, layer: TopologyLayer) -> str:
    if i == 0:
        return "first"
    if i == n - 1:
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


def _act_format(formats: dict) -> str:
    return formats["fwd"][0]


def _quantize_op(fmt: str) -> str | None:
    """The op that turns FP32 values into ``fmt`` (None for fp32)."""
    if fmt == "fp32":
        return None
    f = get_format(fmt)
    if f.kind == "log":
        return "quantize_log"
    return "quantize_uniform" if f.kind == "int" else "cast"


def import_topology(topology: str | Path, batch: int, recipe: dict, *, batchnorm: bool = True) -> Trace:
    """A shape-only training trace of ``topology`` at ``batch`` samples per step.

    ``recipe`` is a recipe description (``fourbit.models.recipes.Recipe.describe()``): its per-role
    ``gemm_formats`` decide each GEMM's operand, accumulator and output formats.

    Raises
    ------
    TraceError
        A malformed topology (see `read_topology`), a batch < 1, or a recipe description
        without the formats of a role the topology needs.
    """
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise TraceError(f"batch must be an integer >= 1, got {batch!r}")
    name, layers = read_topology(topology)
    n = len(layers)
    roles = [_role(i, n, lay) for i, lay in enumerate(layers)]
    formats = []
    for role in roles:
        try:
            formats.append(recipe[role]["gemm_formats"])
        except (KeyError, TypeError):
            raise TraceError(f"recipe description has no gemm_formats for layer role {role!r}") from None
    gemms, ops = [], []
    lowered = [_shapes(lay, batch) for lay in layers]

    def gemm(i: int, phase: str) -> None:
        lay, (shapes, geometry) = layers[i], lowered[i]
        a, b, acc, out = formats[i][phase]
        sh = shapes[phase]
        separate = formats[i]["bwd_data"][0] != formats[i]["bwd_weight"][0]
        (a_t, a_c), (b_t, b_c) = lowering.operand_tensors(lay.name, phase, separate)
        gemms.append({"step": 0, "layer": lay.name, "layer_type": lay.kind, "phase": phase, "M": sh.M,
                      "N": sh.N, "K": sh.K, "groups": sh.groups, "a_format": a, "b_format": b,
                      "acc_format": acc, "out_format": out, "a_tensor": a_t, "a_copy": a_c, "b_tensor": b_t,
                      "b_copy": b_c, **geometry})

    def op(i: int, phase: str, kind: str | None, elements: int, fin: str, fout: str, fused: bool = True) -> None:
        if kind is not None:
            ops.append({"step": 0, "layer": layers[i].name, "phase": phase, "op": kind,
                        "elements": int(elements), "in_format": fin, "out_format": fout, "fused": fused})

    conv = [lay.kind != "linear" for lay in layers]
    for i, lay in enumerate(layers):
        shapes = lowered[i][0]
        out_elems = shapes["fwd"].M * shapes["fwd"].N * shapes["fwd"].groups
        act = _act_format(formats[i])
        if i == 0:  # the input data, cast to the first layer's format in a pass of its own
            op(0, "fwd", _quantize_op(act), _input_elements(lay, batch), "fp32", act, fused=False)
        elif batchnorm and conv[i - 1]:  # BN of the previous output needs its statistics first
            prev = lowered[i - 1][0]["fwd"]
            e = prev.M * prev.N * prev.groups
            out_prev = formats[i - 1]["fwd"][3]
            op(i, "fwd", "bn_fwd", e, out_prev, "fp32", fused=False)
            op(i, "fwd", "relu", e, "fp32", "fp32", fused=False)
            op(i, "fwd", _quantize_op(act), e, "fp32", act, fused=False)
        gemm(i, "fwd")
        out_fmt = formats[i]["fwd"][3]
        if i == n - 1:
            op(i, "fwd", "softmax_xent", out_elems, out_fmt, "fp32")
            grad = formats[i]["bwd_weight"][0]
            op(i, "fwd", "maxabs", out_elems, "fp32", "fp32")
            op(i, "fwd", _quantize_op(grad), out_elems, "fp32", grad)
        elif not (batchnorm and conv[i]):
            nxt = _act_format(formats[i + 1])
            op(i, "fwd", "bias_add", out_elems, out_fmt, "fp32")
            op(i, "fwd", "relu", out_elems, "fp32", "fp32")
            op(i, "fwd", _quantize_op(nxt), out_elems, "fp32", nxt)
    for i in reversed(range(n)):
        lay = layers[i]
        shapes = lowered[i][0]
        gemm(i, "bwd_weight")
        weights = shapes["bwd_weight"].M * shapes["bwd_weight"].N * shapes["bwd_weight"].groups
        wfmt = formats[i]["fwd"][1]
        op(i, "bwd_weight", "sgd_momentum", weights, formats[i]["bwd_weight"][3], "fp32")
        if wfmt == "int4":
            op(i, "bwd_weight", "moments", weights, "fp32", "fp32")
        op(i, "bwd_weight", _quantize_op(wfmt), weights, "fp32", wfmt)
        gemm(i, "bwd_data")
        if i == 0:
            continue
        cols = shapes["bwd_data"].M * shapes["bwd_data"].N * shapes["bwd_data"].groups
        if lay.kind != "linear" and (lay.kernel_h * lay.kernel_w > 1 or lay.stride > 1):
            op(i, "bwd_data", "col2im_add", cols, formats[i]["bwd_data"][3], "fp32")
        e = _input_elements(lay, batch)
        below = formats[i - 1]
        fused = not (batchnorm and conv[i - 1])  # BN backward needs reductions: a pass of its own
        where = i if fused else i - 1
        phase = "bwd_data" if fused else "bwd_weight"
        op(where, phase, "relu_bwd", e, "fp32", "fp32", fused)
        if not fused:
            op(where, phase, "bn_bwd", e, "fp32", "fp32", fused)
        op(where, phase, "maxabs", e, "fp32", "fp32", fused)
        for fmt in dict.fromkeys((below["bwd_weight"][0], below["bwd_data"][0])):
            op(where, phase, _quantize_op(fmt), e, "fp32", fmt, fused)
    digest = hashlib.sha256(read_text(topology).encode()).hexdigest()
    meta = {"model": name, "dataset": None, "source": {"kind": "scalesim", "topology": str(topology),
            "sha256": digest, "batchnorm": batchnorm}, "recipe": recipe, "seed": None,
            "batch_size": batch, "epochs": None, "steps": 1, "package_version": package_version()}
    return Trace(meta, schema.from_records("gemms", gemms), schema.from_records("ops", ops),
                 schema.from_records("metrics", []))


def read_text(topology: str | Path) -> str:
    """The text of a topology file or shipped topology."""
    return _resolve(topology)[1]

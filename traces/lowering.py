"""Lowering of layers to the three training GEMMs (the M, N, K of each phase).

Shared by the emulator (which records what it computes) and the SCALE-Sim importer (which has
shapes only), so that both write the same rows.

Linear layer, batch B, I inputs, O outputs::

    fwd         M = B, N = O, K = I       (activations B x I) x (weights^T I x O)
    bwd_data    M = B, N = I, K = O       (grad B x O) x (weights O x I)
    bwd_weight  M = O, N = I, K = B       (grad^T O x B) x (activations B x I)

Convolution, batch B, C input channels, H x W input, F filters of R x S, stride s, padding p,
output P x Q with P = floor((H + 2p - R)/s) + 1 and Q = floor((W + 2p - S)/s) + 1, lowered by
im2col::

    fwd         M = B*P*Q, N = F,     K = C*R*S
    bwd_data    M = B*P*Q, N = C*R*S, K = F       then a col2im scatter-add (an ``ops`` row)
    bwd_weight  M = F,     N = C*R*S, K = B*P*Q

A grouped convolution (G groups; depthwise: G = C = F) is G independent GEMMs with C/G input
channels and F/G filters each: the row carries ``groups = G`` and the per-group M, N, K, so
MACs = groups * M * N * K. The three phases of a layer always have the same MAC count.
"""

from __future__ import annotations

from dataclasses import dataclass

from fourbit.traces.errors import TraceError

__all__ = ["GemmShape", "MAX_COUNT", "conv2d", "conv_output_size", "linear", "operand_tensors"]

MAX_COUNT = 2**62
"""The largest MAC or element count of one GEMM: the trace stores counts as int64, and bytes
(up to 4 per element of the widest format) must not wrap either."""


@dataclass(frozen=True)
class GemmShape:
    """One GEMM: ``groups`` independent (M x K) @ (K x N) products.

    Raises TraceError when its MACs or the elements of an operand or of the result (Python
    integers, computed exactly) exceed `MAX_COUNT`: the trace's int64 columns and every count
    derived from them (bytes, cycles) then stay exact."""

    M: int
    N: int
    K: int
    groups: int = 1

    def __post_init__(self) -> None:
        for what, count in (("MACs", self.macs), ("elements of a", self.groups * self.M * self.K),
                            ("elements of b", self.groups * self.K * self.N),
                            ("elements of the result", self.groups * self.M * self.N)):
            if count > MAX_COUNT:
                raise TraceError(f"a GEMM of M={self.M}, N={self.N}, K={self.K}, groups={self.groups} has {count:.3g} "
                                 f"{what}, beyond the {MAX_COUNT:.3g} (2^62) a trace counts exactly; use a smaller batch "
                                 "or layer")

    @property
    def macs(self) -> int:
        return self.groups * self.M * self.N * self.K


def _positive(**values: int) -> None:
    for name, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise TraceError(f"{name} must be an integer >= 1, got {v!r}")


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """floor((size + 2*padding - kernel)/stride) + 1.

    Raises TraceError when the (padded) input is smaller than the kernel.
    """
    if size + 2 * padding < kernel:
        raise TraceError(f"filter ({kernel}) larger than the padded input ({size} + 2*{padding})")
    return (size + 2 * padding - kernel) // stride + 1


def linear(batch: int, in_features: int, out_features: int) -> dict[str, GemmShape]:
    """The three GEMMs of a fully connected layer (see the module docstring)."""
    _positive(batch=batch, in_features=in_features, out_features=out_features)
    return {
        "fwd": GemmShape(batch, out_features, in_features),
        "bwd_data": GemmShape(batch, in_features, out_features),
        "bwd_weight": GemmShape(out_features, in_features, batch),
    }


def conv2d(batch: int, in_channels: int, in_h: int, in_w: int, out_channels: int, kernel_h: int,
           kernel_w: int, stride: int = 1, padding: int = 0, groups: int = 1) -> dict[str, GemmShape]:
    """The three GEMMs of a (grouped) 2-D convolution (see the module docstring).

    Raises TraceError for non-positive sizes, channels not divisible by ``groups``, or a filter
    larger than the padded input.
    """
    _positive(batch=batch, in_channels=in_channels, in_h=in_h, in_w=in_w,
              out_channels=out_channels, kernel_h=kernel_h, kernel_w=kernel_w, stride=stride,
              groups=groups)
    if not isinstance(padding, int) or padding < 0:
        raise TraceError(f"padding must be an integer >= 0, got {padding!r}")
    if in_channels % groups or out_channels % groups:
        raise TraceError(f"channels ({in_channels} in, {out_channels} out) not divisible by groups={groups}")
    p = conv_output_size(in_h, kernel_h, stride, padding)
    q = conv_output_size(in_w, kernel_w, stride, padding)
    c, f = in_channels // groups, out_channels // groups
    crs = c * kernel_h * kernel_w
    bpq = batch * p * q
    return {
        "fwd": GemmShape(bpq, f, crs, groups),
        "bwd_data": GemmShape(bpq, crs, f, groups),
        "bwd_weight": GemmShape(f, crs, bpq, groups),
    }


def operand_tensors(layer: str, phase: str, separate_grad_copies: bool, separate_act_copies: bool = False,
                    separate_weight_copies: bool = False) -> tuple[tuple[str, int], tuple[str, int]]:
    """Which quantized copy of which tensor each operand of a weight layer's GEMM is: ((a tensor,
    copy), (b tensor, copy)). The tensors are ``LAYER.x`` (the input activations), ``LAYER.w``
    (the weights) and ``LAYER.dy`` (the output gradient); ``fwd`` reads copy 0 of x and w.
    ``bwd_data`` reads dy and w, ``bwd_weight`` dy and x. The output gradient is quantized once
    per backward GEMM when the two need different copies (``separate_grad_copies``: Two-Phase
    Rounding's two phases, two formats, or 1-D blocks along each GEMM's K): copy 0 for
    ``bwd_weight`` (quantized first), copy 1 for ``bwd_data``; else both read copy 0. Likewise
    ``bwd_weight`` reads copy 1 of x when it needs its own (``separate_act_copies``: 1-D blocks
    along the batch, or a Hadamard transform first) and ``bwd_data`` copy 1 of w
    (``separate_weight_copies``: 1-D blocks along the outputs); else ``fwd``'s copy 0."""
    x, w, dy = f"{layer}.x", f"{layer}.w", f"{layer}.dy"
    if phase == "fwd":
        return (x, 0), (w, 0)
    if phase == "bwd_data":
        return (dy, int(separate_grad_copies)), (w, int(separate_weight_copies))
    if phase == "bwd_weight":
        return (dy, 0), (x, int(separate_act_copies))
    raise TraceError(f"phase must be fwd, bwd_data or bwd_weight, got {phase!r}")

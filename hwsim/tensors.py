"""The tensors a GEMM moves, as they are stored, and its true compulsory traffic.

A trace lowers a convolution to GEMMs by im2col (`fourbit.traces.lowering`): forward multiplies
the B*P*Q x C*R*S column matrix of the input by the weights, bwd_data produces the column matrix
of the input gradient (then scattered back, col2im), bwd_weight multiplies the output gradient by
the input's column matrix. The column matrix repeats each input element up to R*S times; a chip
that expands it on chip (and accumulates col2im on chip) moves the tensors themselves. The
stored tensors of a convolution (batch B, C input and F output channels, H x W input as the trace
gives it, padded only where the trace is, R x S filters in G groups, P x Q output):

=============  ====================  =====================  ======================
phase          operand a             operand b              result
=============  ====================  =====================  ======================
``fwd``        input x: B*C*H*W      weights: F*(C/G)*R*S   output y: B*F*P*Q
``bwd_data``   grad dy: B*F*P*Q      weights                grad dx: B*C*H*W
``bwd_weight`` grad dy               input x                grad dw: F*(C/G)*R*S
=============  ====================  =====================  ======================

Other GEMMs (linear layers, LSTM gates, a GEMM row without convolution geometry) store their
operands and result as the GEMM sees them: M*K, K*N and M*N per group.

The true compulsory traffic of a GEMM is each of these tensors moved once: a and b read at
their formats' bits per element, the result through its output path (`OutputPath`: what the
fused ops write and read per element). A step's figure is the sum over its GEMMs.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from fourbit.traces.lowering import conv_output_size

__all__ = ["GemmTensors", "gemm_tensors"]

_GEOMETRY = ("batch", "in_channels", "out_channels", "in_h", "in_w", "kernel_h", "kernel_w", "stride", "padding")


@dataclass(frozen=True)
class ConvGeometry:
    """A convolution as the trace records it (pixels; the input before padding)."""

    batch: int
    in_channels: int
    out_channels: int
    in_h: int
    in_w: int
    kernel_h: int
    kernel_w: int
    stride: int
    padding: int
    groups: int

    @property
    def out_h(self) -> int:
        return conv_output_size(self.in_h, self.kernel_h, self.stride, self.padding)

    @property
    def out_w(self) -> int:
        return conv_output_size(self.in_w, self.kernel_w, self.stride, self.padding)

    @property
    def input_elements(self) -> int:
        return self.batch * self.in_channels * self.in_h * self.in_w

    @property
    def output_elements(self) -> int:
        return self.batch * self.out_channels * self.out_h * self.out_w

    @property
    def weight_elements(self) -> int:
        return self.out_channels * (self.in_channels // self.groups) * self.kernel_h * self.kernel_w

    def region_elements(self, pixels: float, columns: float) -> float:
        """Elements of one group's stored input that a block of its column matrix needs: ``pixels``
        consecutive output pixels (raster order b, p, q) by ``columns`` consecutive columns in
        channel-major order (c, r, s). The chip fetches whole stored rows:

        - channels: all C/G when the block spans every column, else (columns - 1)/(R*S) + 1, the
          mean number of channels a run of that many columns touches;
        - whole images (pixels >= P*Q): pixels/(P*Q) images of H x W;
        - whole output rows (pixels >= Q): pixels/Q output rows need pixels/Q * s input rows
          plus a halo of R - s (when R > s), at most H, each of width W;
        - part of a row: max(R, s) input rows of pixels * s + (S - s) columns.

        A block fetches the whole R x S window of every channel it touches, even when its columns
        hold only some of that channel's taps. So the sum over blocks that cover the matrix is
        never below the stored input (each block reads a contiguous stretch of rows, and halos and
        channels shared between blocks only add), and it equals the stored input when one block
        covers whole images and every column. Padding is not stored: the halo at an image's edge
        is counted as if it were (an overestimate of at most the halo)."""
        c = self.in_channels // self.groups
        taps = self.kernel_h * self.kernel_w
        channels = c if columns >= c * taps else min(c, (columns - 1) / taps + 1)
        p, q, s = self.out_h, self.out_w, self.stride
        if pixels >= p * q:
            spatial = pixels / (p * q) * self.in_h * self.in_w
        elif pixels >= q:
            spatial = min(self.in_h, pixels / q * s + max(self.kernel_h - s, 0)) * self.in_w
        else:
            spatial = min(self.in_h, max(self.kernel_h, s)) * min(self.in_w, pixels * s + max(self.kernel_w - s, 0))
        return channels * spatial


@dataclass(frozen=True)
class GemmTensors:
    """Elements of the stored tensors behind a GEMM's operands and result (all groups), and
    which of them the GEMM sees as a column matrix: ``a_im2col``/``b_im2col`` (expanded from the
    stored input on chip) and ``out_col2im`` (accumulated into the stored input gradient on
    chip). ``conv`` is the geometry (None for other GEMMs)."""

    a_elements: int
    b_elements: int
    out_elements: int
    a_im2col: bool = False
    b_im2col: bool = False
    out_col2im: bool = False
    conv: ConvGeometry | None = None


def _geometry(row: dict) -> ConvGeometry | None:
    values = [row.get(k) for k in _GEOMETRY]
    if any(v is None or pd.isna(v) for v in values):
        return None
    return ConvGeometry(*(int(v) for v in values), int(row["groups"]))


def gemm_tensors(row: dict) -> GemmTensors:
    """The stored tensors of one trace GEMM row (see the module docstring)."""
    M, N, K, G = (int(row[k]) for k in ("M", "N", "K", "groups"))
    conv = _geometry(row)
    if conv is None:
        return GemmTensors(M * K * G, K * N * G, M * N * G)
    x, y, w = conv.input_elements, conv.output_elements, conv.weight_elements
    phase = row["phase"]
    if phase == "fwd":
        return GemmTensors(x, w, y, a_im2col=True, conv=conv)
    if phase == "bwd_data":
        return GemmTensors(y, w, x, out_col2im=True, conv=conv)
    return GemmTensors(y, x, w, b_im2col=True, conv=conv)

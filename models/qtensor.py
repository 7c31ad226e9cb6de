"""`QTensor`: a quantized tensor as a GEMM consumes it, with what turns it back into real numbers.

Its own module so that the numerics (`fourbit.models.numerics`, which returns block-quantized
tensors) and the quantizer objects (`fourbit.models.quantizers`) both use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fourbit.models.stats import QuantStats
from fourbit.traces.errors import NumericsError
from fourbit.traces.formats import TENSOR_SCALE, Format, Scale

__all__ = ["QTensor"]


@dataclass
class QTensor:
    """A quantized tensor: ``values`` (exact operand values, any shape), its ``format``, its
    ``scales`` (float64; shape () for one scale per tensor, else `Scale.shape` of the values) as
    ``scaling`` describes them (real value = values * scales * tensor_scale), the quantizer's
    statistics (None when the values were not quantized, e.g. FP32), for log formats the codes,
    and ``tensor_scale``: the per-tensor scale above block scales (NVFP4's s_dec; 1 otherwise),
    which a GEMM applies once to its result. ``in_format`` says that the quantizer that made the
    values guarantees each is a value of ``format`` (`numerics.quantize_block` sets it): the
    block-scaled GEMM then takes the values' range from the format instead of scanning them; a
    QTensor built by hand is scanned."""

    values: np.ndarray
    format: Format
    scales: np.ndarray | float = 1.0
    stats: QuantStats | None = None
    codes: np.ndarray | None = None  # log-format codes (for the trace's code histogram)
    scaling: Scale = TENSOR_SCALE
    tensor_scale: float = 1.0
    in_format: bool = False

    def __post_init__(self) -> None:
        self.scales = np.asarray(self.scales, dtype=np.float64)

    @property
    def scale(self) -> float:
        """The one scale of a per-tensor scaled tensor.

        Raises NumericsError for a block-scaled tensor (it has many: ``scales``)."""
        if self.scaling.kind != "tensor":
            raise NumericsError(f"a {self.scaling.kind}-scaled tensor has one scale per block: use .scales")
        return float(self.scales)

    @property
    def T(self) -> QTensor:  # noqa: N802 - numpy's name
        """The transpose of the last two axes (values, codes and block scales alike); a 1-D
        tensor is its own transpose, as in numpy."""
        nd = self.values.ndim
        if nd < 2:
            return self
        swap = (lambda a: np.swapaxes(a, -1, -2)) if nd > 2 else (lambda a: a.T)
        scales = self.scales if self.scales.ndim < 2 else swap(self.scales)
        return QTensor(swap(self.values), self.format, scales, self.stats,
                       None if self.codes is None else swap(self.codes), self.scaling.transposed(nd), self.tensor_scale,
                       self.in_format)

    def with_values(self, values: np.ndarray, codes: np.ndarray | None = None, scales=None) -> QTensor:
        """The same quantization with its arrays rearranged (reshaped, grouped): ``values`` and,
        where the tensor has them, ``codes`` and block ``scales`` rearranged alike (so values of
        the format stay values of the format: ``in_format`` carries over)."""
        return QTensor(values, self.format, self.scales if scales is None else scales, self.stats, codes,
                       self.scaling, self.tensor_scale, self.in_format)

    def real(self) -> np.ndarray:
        """The dequantized values, values * scales * tensor_scale, as float64: exact for block-scaled
        tensors (an element of at most 8 significant bits times a block scale of at most 16 times
        a binary32 tensor scale fits float64's 53 bits; NVFP4's e2m1 * e4m3 * fp32 needs 30, more
        than float32 holds); a per-tensor float64 scale (a SAWB step) rounds once."""
        v = self.values.astype(np.float64)
        if self.scaling.kind == "tensor":
            return v * float(self.scales) * self.tensor_scale
        return v * self.scaling.expand(self.scales, self.values.shape) * self.tensor_scale

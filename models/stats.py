"""What a quantizer did to a tensor (`QuantStats`), shared by the numerics and the quantized
tensors."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["QuantStats"]


@dataclass(frozen=True)
class QuantStats:
    """What a quantizer did to a tensor: element count, clipped (saturated) and flushed counts.

    ``clipped``: |x| beyond the largest representable magnitude (or x/step outside the code
    range); ``flushed``: non-zero inputs that became zero; ``zeros``: zero outputs.
    """

    elements: int
    clipped: int
    flushed: int
    zeros: int

    @property
    def clip_frac(self) -> float:
        return self.clipped / self.elements if self.elements else 0.0

    @property
    def flush_frac(self) -> float:
        return self.flushed / self.elements if self.elements else 0.0

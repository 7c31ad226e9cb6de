"""The log-domain gradient path: the INT4 x radix-r FP4 shift-add datapath of each PE.

An FP4 operand is +-r^E, so its product with an INT4 operand is the integer shifted left by
b*E bits (r = 2^b; Sun et al. 2020, sections 3.3 and 6; IBM patent US 12,443,841 B2 claim 1:
binary shifters, an adder tree and a rounder, no multiplier). With e exponent bits the shift
ranges over 0..b*(2^e - 2) bits, so a product is 4 + b*(2^e - 2) bits wide (r = 4, e = 3: 16
bits) and the barrel shifter has ceil(log2(2^e - 1)) stages (shift amounts in units of b bits).
The shifter costs in proportion to width x stages and the adder tree in proportion to width
(design.md section 5; hardware.md section 2), so the radix changes energy and area. The path is
part of the array's datapath, not a pipeline stage of its own: it has no simpy process.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LogPath"]

_REFERENCE = (16, 3)  # product bits and shifter stages of radix 4, e = 3 (the table's anchor)


@dataclass(frozen=True)
class LogPath:
    """Width, stages, energy and area scaling of the shift-add path for a chip's log_path config."""

    config: object  # hwsim.config.LogPathConfig

    @property
    def product_bits(self) -> int:
        return self.config.product_bits

    @property
    def shifter_stages(self) -> int:
        return self.config.shifter_stages

    def mac_energy_pj(self, table: dict[str, float]) -> float:
        """One shift-add product and its adder-tree share, in pJ (0.035 at radix 4, e = 3)."""
        w, s = self.product_bits, self.shifter_stages
        return w * s * table["shift_add.shifter_per_bit_stage"] + w * table["shift_add.tree_per_bit"]

    def area_factor(self) -> float:
        """Area of the shift-add path relative to radix 4, e = 3 (shifter ~ width x stages, tree
        ~ width, weighted as in the energy table)."""
        w, s = self.product_bits, self.shifter_stages
        w0, s0 = _REFERENCE
        shifter, tree = 0.016, 0.019
        return (shifter * w * s / (w0 * s0) + tree * w / w0) / (shifter + tree)

"""Block-scaled formats: narrow elements with one scale per block of elements (MXFP4, NVFP4,
INT4 blocks).

A block format is an element format (what the GEMM multiplies), a block size, the format the
block scales are stored in, and the rule that picks each block's scale from its largest
magnitude ``amax``. The rules, each with its source (``M`` is the element format's largest
magnitude, 6 for E2M1 and 7 for the symmetric INT4 elements -7..7):

============  ===============================================================================
rule          scale of a block with largest magnitude amax
============  ===============================================================================
``floor``     X = 2^(floor(log2 amax) - emax_elem), emax_elem = floor(log2 M) (2 for E2M1): the
              OCP Microscaling spec v1.0, section 6.3; amax / X lies in [2^emax, 2^(emax+1)),
              so elements above M saturate to +-M (E2M1: 6.5 -> 6).
``ceil``      X = 2^ceil(log2(amax / M)), the smallest power of two with amax <= M * X, computed
              exactly: no element saturates unless the scale format's range clamps X
              (TransformerEngine's NVFP4 reference with power-of-two scales, ``cast_to_e8``;
              cuBLAS's "RCEIL" MXFP8 scaling).
``two_level`` NVFP4 (NVIDIA, "Pretraining Large Language Models with NVFP4", arXiv 2509.25149,
              section 2 and appendix; TransformerEngine's ``quantization_ref_nvfp4.py``), every
              step in IEEE binary32 arithmetic rounded to nearest even:
              s_enc = S * M / amax_tensor (S the scale format's largest value, 448 for E4M3;
              1 when amax_tensor is 0), s_dec = 1 / s_enc; per block the stored scale is
              d = scale_format(amax / M * s_enc) (round to nearest even, saturating at S), the
              encode factor e = 1 / (d * s_dec) (capped at the largest binary32), elements
              element(x * e). A value's real value is element * d * s_dec: ``scales`` hold d,
              the tensor scale s_dec is applied once to a GEMM's result. The order
              fp32(amax / M) * s_enc is the paper's and TransformerEngine's reference before
              2026; its newer reference forms amax * fp32(s_enc / M) as its kernel does, which
              differs in about one E4M3 block scale in 10^6. S * M must stay below binary32's
              largest value (E4M3, FP16: yes; BF16: no).
``amax``      X = scale_format(amax / M) rounded to nearest even: plain absmax scaling in a
              float scale format (e.g. BF16); elements above M after rounding saturate.
============  ===============================================================================

Common to all rules (our choices, stated): inputs are taken as binary32 values (the precision the
hardware quantizes from); +-inf counts as +-(largest binary32), so a block holding an infinity
saturates it; power-of-two scales are clamped to the scale format's range (E8M0: 2^-127..2^127);
a block whose scale is 0 (an all-zero block, whose scale code is then immaterial, E8M0 having no
zero; a two-level block whose scale rounds to 0) has zero elements (+0); elements are rounded to nearest even (or stochastically, with a key) and saturate at
+-M; integer elements use the symmetric range -M..M. NaN is refused (E2M1 and INT4 have none; the
OCP spec would mark the block NaN through its scale, a training emulator reports it instead).

Names (`get_format`): ``mxfp4`` (E2M1, blocks of 32, E8M0, ``floor``), ``nvfp4`` (E2M1, blocks
of 16, E4M3, ``two_level``), ``int4_block`` (INT4 -7..7, blocks of 16, E4M3, ``two_level``: the
NVFP4 layout with a uniform grid, "NVINT4" in Chen et al., arXiv 2510.25602), each with optional
suffixes in this order: ``_b<N>`` block size, ``_e8m0``/``_e4m3``/``_bf16``/``_fp16`` scale
format, ``_floor``/``_ceil``/``_amax``/``_two_level`` rule (default: the base's rule for its own
scale format; ``ceil`` for E8M0, ``two_level`` for E4M3, ``amax`` otherwise), ``_2d`` square
blocks of N x N over the last two axes (NVFP4's 16 x 16 weight blocks). E.g. ``nvfp4_2d``,
``mxfp4_b16``, ``int4_block_b32_e8m0``, ``mxfp4_ceil``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fourbit.traces.errors import FormatError
from fourbit.traces.formats import ExponentFormat, FloatFormat, Format, IntFormat, Scale, get_format

__all__ = ["SCALE_RULES", "BlockFormat", "block_format_names", "element_max", "parse_block_name"]

SCALE_RULES = ("floor", "ceil", "two_level", "amax")
"""The block scale rules (module docstring)."""

_BASES = {
    "mxfp4": ("fp4_e2m1", 32, "e8m0", "floor"),
    "nvfp4": ("fp4_e2m1", 16, "fp8_e4m3", "two_level"),
    "int4_block": ("int4", 16, "fp8_e4m3", "two_level"),
}
_SCALE_NAMES = {"e8m0": "e8m0", "e4m3": "fp8_e4m3", "bf16": "bf16", "fp16": "fp16"}
_NAME = re.compile(r"^(mxfp4|nvfp4|int4_block)(?:_b(\d+))?(?:_(e8m0|e4m3|bf16|fp16))?"
                   r"(?:_(floor|ceil|two_level|amax))?(_2d)?$")
MAX_BLOCK = 4096
"""Largest block size (elements per block side)."""


def element_max(fmt: Format) -> float:
    """The largest magnitude M of a block format's element: a float format's largest value; a
    signed integer format's largest positive value (symmetric range -M..M)."""
    return float(fmt.max_value)


@dataclass(frozen=True)
class BlockFormat(Format):
    """A block-scaled format (module docstring): ``element`` and ``scale_format`` are format
    names, ``block`` the elements per block (per side with ``block_2d``), ``scale_rule`` one of
    `SCALE_RULES`. ``bits`` is the element's width; ``bits_per_element`` counts the scales.

    Raises FormatError for an element that is not a float or signed integer format, a block that
    is not an integer in 1..`MAX_BLOCK`, an unknown rule, or a scale format the rule cannot use
    (``floor``/``ceil``: an exponent or float format; ``two_level``: a float format of at most 16
    bits; ``amax``: a float format)."""

    element: str = "fp4_e2m1"
    block: int = 32
    scale_format: str = "e8m0"
    scale_rule: str = "floor"
    block_2d: bool = False
    kind: ClassVar[str] = "block"

    def __post_init__(self) -> None:
        super().__post_init__()
        where = f"format {self.name!r}"
        elem = get_format(self.element)
        if not (isinstance(elem, FloatFormat) or (isinstance(elem, IntFormat) and elem.signed)):
            raise FormatError(f"{where}: block elements must be a float or signed integer format, got {self.element!r}")
        if self.bits != elem.bits:
            raise FormatError(f"{where}: bits {self.bits!r} must be the element's ({elem.bits})")
        if not isinstance(self.block, int) or isinstance(self.block, bool) or not 1 <= self.block <= MAX_BLOCK:
            raise FormatError(f"{where}: block must be an integer in 1..{MAX_BLOCK}, got {self.block!r}")
        if self.scale_rule not in SCALE_RULES:
            raise FormatError(f"{where}: scale_rule must be one of {SCALE_RULES}, got {self.scale_rule!r}")
        if not isinstance(self.block_2d, bool):
            raise FormatError(f"{where}: block_2d must be true or false, got {self.block_2d!r}")
        scale = get_format(self.scale_format)
        ok = {"floor": isinstance(scale, ExponentFormat | FloatFormat),
              "ceil": isinstance(scale, ExponentFormat | FloatFormat),
              "two_level": isinstance(scale, FloatFormat) and scale.bits <= 16,
              "amax": isinstance(scale, FloatFormat)}[self.scale_rule]
        if ok and self.scale_rule == "two_level" and scale.max_value * element_max(elem) >= float(np.finfo(np.float32).max):
            raise FormatError(f"{where}: the two-level rule needs S * M = {scale.max_value:g} * {element_max(elem):g} "
                              f"below binary32's largest value; {self.scale_format!r} has too wide a range (use fp8_e4m3)")
        if not ok:
            raise FormatError(f"{where}: scale rule {self.scale_rule!r} cannot store its scales in {self.scale_format!r} "
                              f"(floor, ceil: an exponent or float format; two_level: a float format of <= 16 bits; "
                              f"amax: a float format)")

    @property
    def element_format(self) -> Format:
        return get_format(self.element)

    @property
    def scale_fmt(self) -> Format:
        return get_format(self.scale_format)

    @property
    def element_max(self) -> float:
        """M: the largest element magnitude (6 for E2M1, 7 for INT4 blocks)."""
        return element_max(self.element_format)

    @property
    def pow2(self) -> bool:
        """Whether every scale is a power of two (``floor`` and ``ceil``)."""
        return self.scale_rule in ("floor", "ceil")

    @property
    def tensor_scale(self) -> bool:
        """Whether a per-tensor FP32 scale sits above the block scales (``two_level``)."""
        return self.scale_rule == "two_level"

    @property
    def bits_per_element(self) -> float:
        per_block = self.block * (self.block if self.block_2d else 1)
        return self.bits + self.scale_fmt.bits / per_block

    @property
    def layout(self) -> str:
        shape = f"{self.block}x{self.block}" if self.block_2d else f"1x{self.block}"
        return f"{self.element} elements, {shape} blocks, {self.scale_format} scales ({self.scale_rule})"

    @property
    def has_nan(self) -> bool:  # type: ignore[override]
        return False

    def scaling(self, axis: int = -1) -> Scale:
        """The `Scale` of a tensor quantized to this format with 1-D blocks along ``axis``."""
        return Scale("block2d" if self.block_2d else "block", self.block, -1 if self.block_2d else axis,
                     self.scale_format, self.pow2, self.scale_rule, self.tensor_scale)

    def values(self) -> np.ndarray:
        """The element grid (the values before scaling), in code order."""
        return self.element_format.values()

    def holds(self, x) -> np.ndarray:
        return self.element_format.holds(x)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return self.element_format.decode(codes)

    def encode(self, values: np.ndarray) -> np.ndarray:
        return self.element_format.encode(values)

    def representable_in(self, other: Format) -> bool:
        return self.element_format.representable_in(other)


def parse_block_name(name: str) -> BlockFormat | None:
    """The block format a name means (module docstring), or None when the name is not one.

    Raises FormatError for a block-format name with invalid parameters (e.g. ``_b0``)."""
    m = _NAME.match(str(name))
    if not m:
        return None
    base, block, scale, rule, two_d = m.groups()
    element, default_block, default_scale, default_rule = _BASES[base]
    scale_format = _SCALE_NAMES[scale] if scale else default_scale
    by_scale = {"e8m0": "ceil", "fp8_e4m3": "two_level"}.get(scale_format, "amax")
    default_for = default_rule if scale_format == default_scale else by_scale
    rule = rule or default_for
    block_size = int(block) if block else default_block
    parts = [base]
    if block_size != default_block:
        parts.append(f"b{block_size}")
    if scale_format != default_scale:
        parts.append(scale)
    if rule != default_for:
        parts.append(rule)
    if two_d:
        parts.append("2d")
    return BlockFormat("_".join(parts), get_format(element).bits, element=element, block=block_size,
                       scale_format=scale_format, scale_rule=rule, block_2d=bool(two_d))


def block_format_names() -> list[str]:
    """The block formats' base names and their 2-D variants."""
    return [n for base in _BASES for n in (base, f"{base}_2d")]


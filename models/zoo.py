"""The model zoo: builders that return a `models.layers.Sequential` for an input shape.

Layer roles follow the recipes: the first GEMM layer is ``first``, the last ``last``, the rest
``hidden`` (the 4-bit recipes keep first and last in FP16, [P] section 2 / technique.md 1.3).
"""

from __future__ import annotations

import numpy as np

from models.layers import Layer, Linear, ReLU, Sequential
from traces.errors import ConfigError

__all__ = ["MODELS", "build_model"]


def _assign_roles(layers: list[Layer]) -> None:
    gemm = [layer for layer in layers if layer.layer_type in ("linear", "conv2d")]
    for layer in gemm:
        layer.role = "hidden"
    gemm[0].role = "first"
    gemm[-1].role = "last"


def mlp(input_shape: tuple[int, ...], n_classes: int, rng: np.random.Generator,
        hidden: tuple[int, ...] = (256, 256, 256)) -> Sequential:
    """Multi-layer perceptron: Linear + ReLU per hidden width, then a Linear classifier.

    The default 64-256-256-256-10 on digits has two INT4 hidden-to-hidden layers between the FP16
    first and last layers.
    """
    if not hidden:
        raise ConfigError("mlp needs at least one hidden layer (hidden=())")
    sizes = [int(np.prod(input_shape)), *hidden, n_classes]
    layers: list[Layer] = []
    for i in range(len(sizes) - 1):
        layers.append(Linear(f"fc{i + 1}", sizes[i], sizes[i + 1], rng))
        if i < len(sizes) - 2:
            layers.append(ReLU(f"relu{i + 1}"))
    _assign_roles(layers)
    return Sequential("mlp", layers)


MODELS = {"mlp": mlp}


def build_model(name: str, input_shape: tuple[int, ...], n_classes: int, seed: int, **params) -> Sequential:
    """Build model ``name`` with weights drawn from ``numpy.random.default_rng(seed)``.

    Raises ConfigError for an unknown model (the message lists the known ones).
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    return MODELS[name](tuple(input_shape), n_classes, np.random.default_rng(seed), **params)

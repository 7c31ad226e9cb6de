"""Gradient fidelity: a recipe against itself is exact; FP4 backward is measurably off."""

from __future__ import annotations

import importlib

import numpy as np
import pandas as pd
import pytest

from fourbit.models.diagnostics import gradient_fidelity
from fourbit.models.trainer import train
from fourbit.traces.errors import ConfigError

train_mod = importlib.import_module("fourbit.models.trainer")  # the package re-exports train(), shadowing it



def test_a_recipe_against_itself_is_exact_and_int4_is_not():
    same = gradient_fidelity("mlp", "digits", "int4", "int4", batches=3)
    assert list(same.layer) == ["fc1", "fc2", "fc3", "fc4"]
    assert np.allclose(same[["cosine", "norm_ratio", "projection", "cosine_of_mean"]], 1.0, rtol=0, atol=1e-12)
    fp4 = gradient_fidelity("mlp", "digits", "int4", "int4-fwd", batches=3)
    hidden = fp4.set_index("layer").loc[["fc2", "fc3"]]
    assert (hidden.cosine < 0.999).all() and (hidden.cosine > 0).all()  # FP4 changes them, not beyond recognition
    # the last layer (FP16 backward on the same dY) is where both recipes agree best
    assert fp4.set_index("layer").cosine["fc4"] > hidden.cosine.max()
    pd.testing.assert_frame_equal(fp4, gradient_fidelity("mlp", "digits", "int4", "int4-fwd", batches=3))


def test_the_network_passed_in_is_not_changed(digit_images):
    """Weights, BatchNorm running statistics and the trained GradScales stay as they were."""
    run = train("resnet", digit_images, "int4", epochs=1, batch_size=64, progress=False, model_params={"width": 4})
    net = run.net
    before = [p.value.copy() for p in net.params()]
    stats = {k: v.copy() for k, v in train_mod._buffers(net).items()}
    scales = [(layer.grad_scale, layer.grad_scale.exponent) for layer in net.gemm_layers()]
    out = gradient_fidelity("resnet", digit_images, "int4", net=net, batches=2, batch_size=16)
    assert len(out) == len(net.gemm_layers())
    assert all((p.value == b).all() and not p.grad.any() for p, b in zip(net.params(), before, strict=True))
    assert all((v == stats[k]).all() for k, v in train_mod._buffers(net).items())
    assert [(layer.grad_scale, layer.grad_scale.exponent) for layer in net.gemm_layers()] == scales


def test_bad_arguments_are_named():
    with pytest.raises(ConfigError, match="batches \\* batch_size = 64000 is larger than the training set"):
        gradient_fidelity("mlp", "digits", batches=1000, batch_size=64)
    with pytest.raises(ConfigError, match="unknown recipe"):
        gradient_fidelity("mlp", "digits", "int5")
    with pytest.raises(ConfigError, match="batches and batch_size must be >= 1"):
        gradient_fidelity("mlp", "digits", batches=0)

"""Layers: gradients against central finite differences (fp32 recipe), and the GEMMs they record.

The check is directional: for a random cotangent R and a random direction V, the backward pass's
<grad, V> must match (L(x + eps V) - L(x - eps V)) / (2 eps) with L = sum(forward(x) * R). The
layers compute in float32, so eps is 1e-2 of the input's scale and the tolerance 1 %.
"""

from __future__ import annotations

import numpy as np
import pytest

from fourbit.models.layers import (
    GELU,
    LSTM,
    AvgPool2d,
    BatchNorm2d,
    Context,
    Conv2d,
    DepthwiseConv2d,
    Embedding,
    Flatten,
    LayerNorm,
    Linear,
    MaxPool2d,
    ReLU,
    Residual,
    SelfAttention,
    Sequential,
    TokenPositionEmbedding,
    softmax_xent,
)
from fourbit.models.quantizers import GradScale
from fourbit.models.recipes import get_recipe
from fourbit.models.recorder import Recorder


def _loss(layer, x, r, ctx) -> float:
    return float(np.sum(layer.forward(x, ctx).astype(np.float64) * r))


def _check_gradients(layer, x, seed=0, eps=1e-2, check_input=True):
    rng = np.random.default_rng(seed)
    ctx = Context(get_recipe("fp32"), Recorder())
    y = layer.forward(x, ctx)
    r = rng.standard_normal(y.shape)
    for p in layer.params():
        p.grad[...] = 0
    dx = layer.backward(r.astype(np.float32), ctx)
    targets = [("input", x, dx)] if check_input else []
    targets += [(p.name, p.value, p.grad.copy()) for p in layer.params()]
    for name, value, grad in targets:
        for _ in range(2):
            v = rng.standard_normal(value.shape).astype(np.float32)
            h = np.float32(eps * max(float(np.abs(value).max()), 1.0))
            keep = value.copy()
            value += h * v
            plus = _loss(layer, x, r, ctx)
            value[...] = keep - h * v
            minus = _loss(layer, x, r, ctx)
            value[...] = keep
            numeric = (plus - minus) / (2 * float(h))
            analytic = float(np.sum(grad.astype(np.float64) * v))
            scale = np.linalg.norm(grad) * np.linalg.norm(v) + 1e-6
            assert abs(numeric - analytic) <= 1e-2 * scale, (layer.name, name, numeric, analytic)
    return dx


def _images(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_linear_gradients():
    _check_gradients(Linear("fc", 7, 5, np.random.default_rng(0)), _images((4, 7)))


def test_linear_on_sequences_flattens_the_leading_dimensions():
    _check_gradients(Linear("fc", 6, 3, np.random.default_rng(0)), _images((2, 5, 6)))


@pytest.mark.parametrize("kernel,stride,padding,groups", [(3, 1, 1, 1), (3, 2, 1, 1), (1, 2, 0, 1),
                                                          (5, 1, 0, 1), (3, 1, 1, 2)])
def test_conv2d_gradients(kernel, stride, padding, groups):
    layer = Conv2d("conv", 4, 6, kernel, np.random.default_rng(0), stride=stride, padding=padding,
                   groups=groups, bias=True)
    _check_gradients(layer, _images((2, 4, 7, 6)))


def test_depthwise_gradients():
    _check_gradients(DepthwiseConv2d("dw", 3, 3, np.random.default_rng(0), padding=1), _images((2, 3, 5, 5)))


def test_batchnorm_gradients_in_training_mode():
    layer = BatchNorm2d("bn", 3)
    layer.gamma.value[...] = [0.5, 1.5, -1.0]
    layer.beta.value[...] = [0.1, -0.2, 0.3]
    _check_gradients(layer, _images((4, 3, 3, 3)) * 2 + 1)


def test_batchnorm_evaluation_uses_running_statistics():
    layer = BatchNorm2d("bn", 2, momentum=1.0)
    x = _images((8, 2, 4, 4)) * 3 + 5
    layer.forward(x, Context(get_recipe("fp32")))
    n = x.size / 2
    np.testing.assert_allclose(layer.running_mean, x.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(layer.running_var, x.var(axis=(0, 2, 3)) * n / (n - 1), rtol=1e-5)
    y = layer.forward(x, Context(get_recipe("fp32"), training=False))
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-5)


def test_relu_pool_flatten_gradients():
    # inputs away from the kinks: |x| >= 0.1 and distinct window maxima
    rng = np.random.default_rng(2)
    x = (rng.permutation(2 * 3 * 6 * 5).reshape(2, 3, 6, 5) / 10.0 - 4.05).astype(np.float32)
    for layer in (ReLU("relu"), MaxPool2d("pool"), MaxPool2d("pool3", 3), AvgPool2d("gap"), Flatten("flat")):
        _check_gradients(layer, x, eps=1e-3)


def test_maxpool_routes_the_gradient_to_the_first_maximum():
    x = np.array([[[[1, 3, 0, 0], [3, 2, 0, 0]]]], np.float32)
    pool = MaxPool2d("pool")
    ctx = Context(get_recipe("fp32"))
    np.testing.assert_array_equal(pool.forward(x, ctx), [[[[3, 0]]]])
    dx = pool.backward(np.array([[[[5, 7]]]], np.float32), ctx)
    np.testing.assert_array_equal(dx, [[[[0, 5, 7, 0], [0, 0, 0, 0]]]])


def test_residual_gradients_with_and_without_a_projection():
    rng = np.random.default_rng(0)
    main = Sequential("main", [Conv2d("a", 3, 3, 3, rng, padding=1), BatchNorm2d("bn", 3)])
    _check_gradients(Residual("res", main), _images((2, 3, 4, 4)))
    main = Sequential("main2", [Conv2d("b", 3, 4, 3, rng, stride=2, padding=1)])
    short = Sequential("short", [Conv2d("s", 3, 4, 1, rng, stride=2)])
    _check_gradients(Residual("res2", main, short), _images((2, 3, 4, 4)))


def test_lstm_gradients_through_time():
    layer = LSTM("lstm", 4, 5, np.random.default_rng(0))
    _check_gradients(layer, _images((3, 6, 4)))


def test_embedding_gradients():
    layer = Embedding("embed", 7, 3, np.random.default_rng(0))
    ids = np.array([[1, 2, 1], [6, 0, 1]])
    _check_gradients(layer, ids, check_input=False)


def test_softmax_xent_value_and_gradient():
    logits = np.array([[0.0, 0.0], [np.log(3.0), 0.0]], np.float32)
    loss, grad = softmax_xent(logits, np.array([0, 1]))
    assert loss == pytest.approx((np.log(2) + np.log(4)) / 2, rel=1e-7)
    np.testing.assert_allclose(grad, [[-0.25, 0.25], [0.375, -0.375]], rtol=1e-6)
    seq = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    labels = np.array([[0, 1, 2], [3, 3, 0]])
    loss_seq, grad_seq = softmax_xent(seq, labels)
    loss_flat, grad_flat = softmax_xent(seq.reshape(6, 4), labels.reshape(6))
    assert loss_seq == loss_flat
    np.testing.assert_array_equal(grad_seq.reshape(6, 4), grad_flat)


def _recorded(layer, x, recipe):
    rec = Recorder()
    ctx = Context(get_recipe(recipe), rec)
    rec.start(0)
    y = layer.forward(x, ctx)
    layer.backward(np.ones_like(y), ctx)
    rec.stop()
    return rec.tables()[0]


@pytest.mark.parametrize("recipe", ["fp32", "int4"])
def test_conv_records_three_phases_with_the_lowered_shapes(recipe):
    layer = Conv2d("conv", 3, 8, 3, np.random.default_rng(0), stride=2, padding=1)
    gemms = _recorded(layer, np.abs(_images((2, 3, 9, 9))), recipe)
    got = {r.phase: (r.M, r.N, r.K) for r in gemms.itertuples()}
    p = (9 + 2 - 3) // 2 + 1  # 5 x 5 outputs
    assert got == {"fwd": (2 * p * p, 8, 27), "bwd_data": (2 * p * p, 27, 8), "bwd_weight": (8, 27, 2 * p * p)}
    if recipe == "int4":
        fmts = {r.phase: (r.a_format, r.b_format) for r in gemms.itertuples()}
        assert fmts["fwd"] == ("uint4", "int4")
        assert fmts["bwd_weight"][0].startswith("fp4_r4") and fmts["bwd_data"][0].startswith("fp4_r4")


def test_lstm_records_the_input_gemm_once_and_the_recurrent_gemm_per_step():
    layer = LSTM("lstm", 4, 5, np.random.default_rng(0))
    gemms = _recorded(layer, _images((3, 6, 4)), "int4")
    counts = gemms.groupby(["layer", "phase"]).size().to_dict()
    assert counts == {("lstm.hh", "bwd_data"): 6, ("lstm.hh", "bwd_weight"): 6, ("lstm.hh", "fwd"): 6,
                      ("lstm.ih", "bwd_data"): 1, ("lstm.ih", "bwd_weight"): 1, ("lstm.ih", "fwd"): 1}


@pytest.mark.parametrize("recipe", ["int4", "int8", "hfp8", "fp16", "int4-fwd", "int4-dw8"])
def test_quantized_gradients_point_the_same_way_as_fp32(recipe):
    """A quantized recipe's gradient is an estimate of the FP32 one: strongly correlated."""
    def grads(name, scaled=True):
        layer = Conv2d("conv", 4, 8, 3, np.random.default_rng(0), padding=1)
        prec = get_recipe(name).precision(layer.role)
        if scaled and prec.scaled_grads:
            layer.grad_scale = GradScale(prec.grad_target_max())
        x = np.abs(_images((4, 4, 6, 6)))
        ctx = Context(get_recipe(name), Recorder())
        y = layer.forward(x, ctx)
        dx = layer.backward(np.random.default_rng(5).standard_normal(y.shape).astype(np.float32) * 1e-3, ctx)
        return dx.ravel(), layer.weight.grad.ravel()

    for ref, got in zip(grads("fp32"), grads(recipe), strict=True):
        assert np.corrcoef(ref, got)[0, 1] > 0.9
    if recipe in ("int4", "int4-dw8"):  # without GradScale, gradients of 1e-3 fall below radix-4 FP4
        assert not np.any(grads(recipe, scaled=False)[0])


def test_layernorm_and_gelu_gradients():
    layer = LayerNorm("ln", 6)
    layer.gamma.value[...] = np.linspace(0.5, 1.5, 6)
    layer.beta.value[...] = np.linspace(-0.2, 0.3, 6)
    _check_gradients(layer, _images((3, 4, 6)) * 2 + 0.5)
    _check_gradients(GELU("gelu"), _images((3, 7)) * 2, eps=1e-3)


def test_self_attention_gradients_and_causality():
    """Finite differences through the FP32 recipe (its attention GEMMs on host BLAS); a change of
    the last token leaves every earlier position's output unchanged (the causal mask)."""
    layer = SelfAttention("attn", 8, 2)
    x = _images((2, 5, 24))
    _check_gradients(layer, x)
    ctx = Context(get_recipe("fp32"))
    y = layer.forward(x, ctx)
    x2 = x.copy()
    x2[:, -1] += 1.0
    y2 = layer.forward(x2, ctx)
    np.testing.assert_array_equal(y[:, :-1], y2[:, :-1])
    assert not np.array_equal(y[:, -1], y2[:, -1])


def test_token_position_embedding_gradients():
    layer = TokenPositionEmbedding("embed", 7, 5, 3, np.random.default_rng(0))
    _check_gradients(layer, np.array([[1, 2, 1], [6, 0, 1]]), check_input=False)

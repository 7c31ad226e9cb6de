"""The block-scaled and unbiased recipes (nvfp4, mxfp4, int4-block, luq, bf16): their per-layer
formats, roundings and copies by name; LUQ's threshold and unbiasedness; a training step that is
deterministic for a seed and independent of the thread count; the copies each GEMM reads in the
trace."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from fourbit.models.layers import Context, Conv2d, Flatten, Linear, ReLU, Sequential
from fourbit.models.quantizers import LUQ
from fourbit.models.recipes import get_recipe
from fourbit.models.recorder import Recorder
from fourbit.models.trainer import TrainConfig, grad_scales, train, train_step
from fourbit.models.zoo import _assign_roles
from fourbit.traces.errors import ConfigError


def _hidden(spec: str) -> dict:
    return get_recipe(spec).describe()["hidden"]


@pytest.mark.parametrize("spec, quantizers, acc, rht, copies", [
    # (weight, act, grad_data, grad_weight); accumulator; Hadamard block; separate (grad, act, weight) copies
    ("nvfp4", ("nvfp4_2d", "nvfp4", "nvfp4_sr", "nvfp4_sr"), "fp32/g16", 16, (True, True, False)),
    ("mxfp4", ("mxfp4", "mxfp4", "mxfp4_sr", "mxfp4_sr"), "fp32/g32", 32, (True, True, True)),
    ("int4-block", ("int4_block_2d", "int4_block", "int4_block_sr", "int4_block_sr"), "fp32/g16", 16,
     (True, True, False)),
    ("nvfp4:rht=0,stochastic=off,weights_2d=off", ("nvfp4", "nvfp4", "nvfp4", "nvfp4"), "fp32/g16", 0,
     (True, True, True)),  # 1-D blocks: every tensor along each GEMM's own K
    ("nvfp4:block=32,scale=e8m0", ("nvfp4_b32_e8m0_2d", "nvfp4_b32_e8m0", "nvfp4_b32_e8m0_sr", "nvfp4_b32_e8m0_sr"),
     "fp32/g32", 16, (True, True, False)),
    ("mxfp4:scale=e4m3,block=16,rht=0", ("mxfp4_b16_e4m3", "mxfp4_b16_e4m3", "mxfp4_b16_e4m3_sr",
                                         "mxfp4_b16_e4m3_sr"), "fp32/g16", 0, (True, True, True)),
    ("luq", ("int4_sawb", "int4_sawb", "luq_fp4_r2_e3", "luq_fp4_r2_e3"), "int32", 0, (False, False, False)),
    ("bf16", ("bf16", "bf16", "bf16", "bf16"), "fp32/g1", 0, (False, False, False)),
])
def test_each_recipe_says_its_formats_roundings_and_copies(spec, quantizers, acc, rht, copies):
    d = _hidden(spec)
    assert (d["weight"], d["act"], d["grad_data"], d["grad_weight"]) == quantizers
    assert d["acc_fwd"] == acc and d["rht"] == rht
    assert (d["separate_grad_copies"], d["separate_act_copies"], d["separate_weight_copies"]) == copies
    assert d["grad_scale"] is False  # block scales, LUQ's own scale and BF16's range need no GradScale


def test_block_recipes_keep_first_last_and_attention_in_bf16_unless_asked():
    r = get_recipe("nvfp4")
    for role in ("first", "last", "attention", "depthwise"):
        assert r.precision(role).weight.name == "bf16" and r.precision(role).acc_fwd.name == "fp32/g1"
    assert r.last_layers == 1 and get_recipe("nvfp4:bf16_last=3").last_layers == 3
    assert get_recipe("nvfp4:bf16_last=0").last == get_recipe("nvfp4:bf16_last=0").hidden
    assert get_recipe("luq").first.weight.name == "fp16"
    with pytest.raises(ConfigError, match="rht"):
        get_recipe("nvfp4:rht=12")
    with pytest.raises(ConfigError, match="parameter 'rht' is given twice \\(in the spec and as a keyword\\)"):
        get_recipe("nvfp4:rht=0", rht=16)
    assert get_recipe("nvfp4", block=np.int64(32)).name == "nvfp4:block=32"  # a numpy integer is an integer
    with pytest.raises(ConfigError, match="scale"):
        get_recipe("mxfp4:scale=fp32")


def test_last_layers_take_the_last_role_in_a_trained_model(tmp_path):
    run = train("mlp", "digits", "nvfp4:bf16_last=2", epochs=1, progress=False, batch_size=32,
                model_params={"hidden": (32, 32, 32)}, out=tmp_path / "run")
    fwd = run.trace.gemms[run.trace.gemms.phase == "fwd"]
    assert fwd.a_format.tolist() == ["bf16", "fp4_e2m1", "bf16", "bf16"]  # first, hidden, the last two


def test_luq_threshold_and_levels_by_hand():
    """max|x| = 6.4: alpha = 6.4 / 2^6 = 0.1, levels 0.1 * 2^0..2^6 = 0.1 .. 6.4 (eq. 11); the
    values are on fp4_r2_e3's grid (1/8 .. 8) with scale max / 8 = 0.8."""
    x = np.array([6.4, 0.05, 0.3, 1.0, -2.5, 0.0])
    assert LUQ().threshold(x) == 6.4 / 64
    q = LUQ()(x, key=(0, 0, 0))
    assert q.scale == 0.8 and q.values[0] == 8.0
    levels = {0.0} | {0.1 * 2**k for k in range(7)}
    assert all(min(abs(abs(v) - lv) for lv in levels) < 1e-12 for v in q.values * q.scale)
    assert not LUQ().needs_grad_scale and LUQ().stochastic


def test_luq_is_unbiased():
    """4,096 keyed roundings (keys (5, step, 1), step = 0..4095) of values below alpha
    (stochastic underflow) and between levels: the mean is within gap/16 of each value (8
    standard deviations of the mean); fixed keys, so the test cannot flake."""
    x = np.array([6.4, 0.05, 0.3, 1.0, -2.5])
    gaps = np.array([1e-9, 0.1, 0.2, 0.8, 1.6])
    mean = sum(LUQ()(x, key=(5, step, 1)).real() for step in range(4096)) / 4096
    assert np.all(np.abs(mean - x) <= gaps / 16), (mean, x)


def _conv_net(rng):
    return _assign_roles(Sequential("net", [
        Conv2d("conv1", 1, 4, 3, rng), ReLU("r1"), Conv2d("conv2", 4, 8, 3, rng), ReLU("r2"), Flatten("f"),
        Linear("fc1", 8 * 4 * 4, 32, rng), ReLU("r3"), Linear("fc2", 32, 10, rng)]))


def _one_step(spec: str, threads: int | None) -> list[np.ndarray]:
    from fourbit.models.data import load_dataset

    ds = load_dataset("digits")
    rng = np.random.default_rng(3)
    net = _conv_net(rng)
    rec = get_recipe(spec)
    ctx = Context(rec, Recorder(), seed=7, step=11)
    x = ds.x_train[:32].reshape(-1, 1, 8, 8)
    before = numba.get_num_threads()
    try:
        if threads:
            numba.set_num_threads(threads)
        train_step(net, ctx, x, ds.y_train[:32], {}, grad_scales(net, rec), 0.05, TrainConfig())
    finally:
        numba.set_num_threads(before)
    return [p.value.copy() for layer in net.gemm_layers() for p in layer.params()]


@pytest.mark.parametrize("spec", ["nvfp4", "mxfp4", "int4-block", "luq", "bf16"])
def test_a_training_step_is_deterministic_and_independent_of_threads(spec):
    one, many, again = _one_step(spec, 1), _one_step(spec, None), _one_step(spec, None)
    for a, b, c in zip(one, many, again, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(b, c)


def test_the_trace_says_which_copy_each_gemm_reads(tmp_path):
    """nvfp4: bwd_weight reads its own copies of x (blocks along the batch, after the Hadamard
    transform) and of dy; bwd_data reads fwd's copy of the 2-D-blocked weights. mxfp4 (1-D
    weights): bwd_data reads the weights' second copy. The extra quantizations and the Hadamard
    transforms are in the ops table."""
    for spec, w_copy in (("nvfp4", 0), ("mxfp4", 1)):
        run = train("mlp", "digits", spec, epochs=1, progress=False, batch_size=32, out=tmp_path / spec)
        g = run.trace.gemms
        hidden = g[g.a_format == "fp4_e2m1"]
        rows = {ph: hidden[hidden.phase == ph].iloc[0] for ph in ("fwd", "bwd_data", "bwd_weight")}
        assert (rows["fwd"].a_copy, rows["fwd"].b_copy) == (0, 0)
        assert (rows["bwd_weight"].a_copy, rows["bwd_weight"].b_copy) == (0, 1)
        assert (rows["bwd_data"].a_copy, rows["bwd_data"].b_copy) == (1, w_copy)
        assert set(hidden.a_scale_kind) == {"block"} and set(hidden.a_block_axis) == {"K"}
        ops = run.trace.ops
        assert (ops.op == "hadamard").sum() > 0


def test_the_nvfp4_ablation_changes_one_part_at_a_time():
    from fourbit.analysis.ablation import NVFP4_PARTS, VARIANT_SETS

    assert VARIANT_SETS["nvfp4"] is NVFP4_PARTS
    base = get_recipe("nvfp4").describe()["hidden"]
    changed = {}
    for _label, spec in NVFP4_PARTS:
        if spec in ("nvfp4", "bf16"):
            continue
        d = get_recipe(spec)
        hidden = d.describe()["hidden"]
        diff = {k for k in ("weight", "act", "grad_data", "rht", "acc_fwd") if hidden[k] != base[k]}
        changed[spec] = diff or ({"last"} if d.last != get_recipe("nvfp4").last else set())
    assert changed == {"nvfp4:rht=0": {"rht"}, "nvfp4:stochastic=off": {"grad_data"},
                       "nvfp4:weights_2d=off": {"weight"}, "nvfp4:block=32": {"weight", "act", "grad_data", "acc_fwd"},
                       "nvfp4:scale=e8m0": {"weight", "act", "grad_data"}, "nvfp4:bf16_last=0": {"last"}}


def _lstm_step(spec: str, threads: int | None = None):
    """One forward and backward of an LSTM layer (B = 32, T = 3: every K a multiple of the
    Hadamard blocks 16 and 32) under ``spec``: (the gradients, the trace's GEMM table)."""
    from fourbit.models.layers import LSTM

    layer = LSTM("lstm", 16, 16, np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((32, 3, 16)).astype(np.float32)
    rec = Recorder()
    ctx = Context(get_recipe(spec), rec, seed=5, step=2)
    before = numba.get_num_threads()
    try:
        if threads:
            numba.set_num_threads(threads)
        rec.start(0)
        y = layer.forward(x, ctx)
        layer.backward(np.cos(np.arange(y.size, dtype=np.float32)).reshape(y.shape), ctx)
        rec.stop()
    finally:
        numba.set_num_threads(before)
    return [p.grad.copy() for p in layer.params()], rec.tables()[0]


@pytest.mark.parametrize("spec", ["nvfp4", "mxfp4"])
def test_lstm_block_recipes_quantize_each_tensor_along_each_gemms_k(spec):
    """The recurrent bwd_weight reads the step's h and gradient in copies along B (the second
    copies); the input GEMMs read the whole gradient's own copies (not the steps' stacked); the
    gradients point the way FP32's do; one step is deterministic whatever the thread count."""
    grads, gemms = _lstm_step(spec)
    rows = gemms.set_index(["layer", "phase"])
    ih_w, hh_w = rows.loc[("lstm.ih", "bwd_weight")], rows.loc[("lstm.hh", "bwd_weight")].iloc[0]
    assert (hh_w.a_copy, hh_w.b_copy) == (0, 1) and (ih_w.a_copy, ih_w.b_copy) == (0, 1)
    assert set(gemms.a_scale_kind) == {"block"} and set(gemms.b_scale_kind) <= {"block", "block2d"}
    ref, _ = _lstm_step("fp32")
    for g, r in zip(grads, ref, strict=True):
        cos = float(np.sum(g * r) / np.sqrt(np.sum(g * g) * np.sum(r * r)))
        assert cos > 0.9, cos
    one, _ = _lstm_step(spec, threads=1)
    for a, b in zip(one, grads, strict=True):
        np.testing.assert_array_equal(a, b)

"""SCALE-Sim topologies as training traces."""

from __future__ import annotations

import pytest

from fourbit.models.recipes import get_recipe
from fourbit.traces.errors import TraceError
from fourbit.traces.io import read
from fourbit.traces.scalesim import import_topology, read_topology, shipped_topologies

INT4 = get_recipe("int4").describe()


def test_resnet18_at_batch_32(tmp_path):
    trace = import_topology("resnet18", 32, INT4)
    g = trace.gemms
    layers = g.layer.unique()
    assert len(layers) == 21  # conv1, 16 3x3 convs, 3 downsample 1x1 convs, fc
    for name in layers:
        assert sorted(g[g.layer == name].phase) == ["bwd_data", "bwd_weight", "fwd"]
    fwd = g[g.phase == "fwd"]
    gmac = (fwd.M * fwd.N * fwd.K * fwd.groups).sum() / 32 / 1e9
    assert gmac == pytest.approx(1.814, abs=0.001)  # published: ~1.8 GMAC per 224x224 image
    conv1 = g[(g.layer == "conv1")].set_index("phase")
    assert tuple(conv1.loc["fwd", ["M", "N", "K"]]) == (32 * 112 * 112, 64, 147)
    assert tuple(conv1.loc["bwd_data", ["M", "N", "K"]]) == (32 * 112 * 112, 147, 64)
    assert tuple(conv1.loc["bwd_weight", ["M", "N", "K"]]) == (64, 147, 32 * 112 * 112)
    # per-layer formats follow the recipe: first and last FP16, the rest INT4 / FP4
    assert conv1.loc["fwd", "a_format"] == "fp16"
    mid = g[(g.layer == "layer2.0.conv1")].set_index("phase")
    assert (mid.loc["fwd", "a_format"], mid.loc["fwd", "b_format"]) == ("uint4", "int4")
    assert mid.loc["bwd_data", "a_format"] == "fp4_r4_e3" and mid.loc["bwd_weight", "a_format"] == "fp4_r4_e3_odd"
    assert g[g.layer == "fc"].a_format.iloc[0] == "fp16"
    back = read(trace.write(tmp_path / "r18"))
    assert len(back.gemms) == 63 and back.meta["batch_size"] == 32


def test_shipped_topologies_import():
    assert set(shipped_topologies()) >= {"resnet18", "resnet50", "mobilenet_v1", "gpt2_small"}
    for name, gmac in (("resnet50", 4.089), ("mobilenet_v1", 0.569)):
        g = import_topology(name, 1, INT4).gemms
        fwd = g[g.phase == "fwd"]
        assert (fwd.M * fwd.N * fwd.K * fwd.groups).sum() / 1e9 == pytest.approx(gmac, abs=0.001)
    mob = import_topology("mobilenet_v1", 2, INT4).gemms
    dw = mob[mob.layer == "block1_DP"]
    assert (dw.groups == 32).all() and (dw.layer_type == "dwconv2d").all()
    assert dw.a_format.iloc[0] == "fp16"  # depthwise layers stay FP16 ([P] section 5)
    gpt = import_topology("gpt2_small", 2, INT4).gemms
    head = gpt[(gpt.layer == "lm_head") & (gpt.phase == "fwd")].iloc[0]
    assert (head.M, head.N, head.K) == (2 * 1024, 50257, 768)


def test_conv_file_quirks(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,\n"
                 "\n  conv_a, 10, 10, 3, 3, 2, 4, 2,   # a comment\n\tconv_DP, 5, 5, 3, 3, 4, 1, 1\n"
                 "fc, 1, 1, 1, 1, 4, 10, 1,\n")
    name, layers = read_topology(f)
    assert name == "t" and [la.kind for la in layers] == ["conv2d", "dwconv2d", "conv2d"]
    assert layers[1].filters == 4 and layers[1].groups == 4  # Num Filter 1 means multiplier 1
    g = import_topology(f, 3, INT4).gemms
    a = g[(g.layer == "conv_a") & (g.phase == "fwd")].iloc[0]
    assert (a.M, a.N, a.K) == (3 * 4 * 4, 4, 18)  # floor((10 - 3)/2) + 1 = 4


@pytest.mark.parametrize("row, message", [
    ("c1, 10, 10, 3, 3, 2, 4\n", "line 2: 7 fields, expected 8"),
    ("c1, 10, 10, 3, 3, 2, four, 1\n", "line 2: num filter = 'four' is not a positive integer"),
    ("c1, 10, 10, 3, 3, 0, 4, 1\n", "line 2: channels = 0 must be >= 1"),
    ("c1, 10, 10, 3.5, 3, 2, 4, 1\n", "line 2: filter height = '3.5' is not a positive integer"),
    ("c1, 2, 2, 3, 3, 2, 4, 1\n", "line 2: filter 3x3 is larger than the input 2x2"),
    ("c_DP, 8, 8, 3, 3, 4, 6, 1\n", "line 2: depthwise layer with 4 channels needs Num Filter = 1 or a multiple of 4"),
])
def test_malformed_rows_name_the_line(tmp_path, row, message):
    f = tmp_path / "bad.csv"
    f.write_text("Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,\n" + row)
    with pytest.raises(TraceError, match=message):
        read_topology(f)


def test_gemm_topology_and_errors(tmp_path):
    f = tmp_path / "g.csv"
    f.write_text("Layer, M, N, K\nqkv,128,2304,768\nproj, 128, 768, 768,\n")
    g = import_topology(f, 4, INT4).gemms
    assert tuple(g[(g.layer == "qkv") & (g.phase == "fwd")][["M", "N", "K"]].iloc[0]) == (512, 2304, 768)
    f.write_text("Layer, M, N, K\nqkv,128,-1,768\n")
    with pytest.raises(TraceError, match="line 2: N = '-1' is not a positive integer"):
        read_topology(f)
    f.write_text("Name, Rows\nx, 1\n")
    with pytest.raises(TraceError, match="line 1: unrecognised header 'name, rows'; expected 'layer name, "):
        read_topology(f)
    f.write_bytes(b"\x00\x1b[31mred\xff,x\n")  # a binary file: its bytes escaped in the message, not echoed
    with pytest.raises(TraceError, match=r"line 1: unrecognised header '\\x00\\x1b\[31mred\\ufffd, x'"):
        read_topology(f)
    with pytest.raises(TraceError, match="neither a file nor a shipped topology"):
        read_topology("vgg99")
    with pytest.raises(TraceError, match="batch must be an integer >= 1"):
        import_topology("resnet18", 0, INT4)


CONV_NET = """Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,
conv1, 12, 12, 3, 3, 1, 8, 1,
conv2, 10, 10, 3, 3, 8, 16, 2,
fc, 4, 4, 4, 4, 16, 10, 1,
"""
STRUCTURE = ["layer", "layer_type", "phase", "M", "N", "K", "groups", "batch", "in_channels", "out_channels", "in_h",
             "in_w", "kernel_h", "kernel_w", "stride", "padding", "a_format", "b_format", "acc_format", "out_format",
             "a_role", "b_role", "out_role", "a_scale_kind", "b_scale_kind", "a_scale_format", "b_scale_format",
             "a_bits", "b_bits", "a_tensor", "a_copy", "b_tensor", "b_copy"]


@pytest.mark.parametrize("recipe", ["int4", "fp32", "int8", "hfp8", "int4-dw8", "int4:grad_scaling=none", "nvfp4",
                                    "mxfp4:rht=16", "int4-block:weights_2d=off,rht=0", "luq", "bf16"])
def test_a_trained_conv_net_and_its_topology_give_the_same_rows(tmp_path, recipe):
    """The emulator's layers (conv, BatchNorm, ReLU; the last a conv over the whole input) trained
    one step, and the SCALE-Sim topology of the same shapes imported: the same GEMM rows (all but
    the value statistics) and the same op rows, since both record through one registry."""
    import numpy as np

    from fourbit.models.layers import BatchNorm2d, Context, Conv2d, Flatten, ReLU, Sequential
    from fourbit.models.recorder import Recorder
    from fourbit.models.trainer import TrainConfig, grad_scales, train_step
    from fourbit.models.zoo import _assign_roles

    rng = np.random.default_rng(0)
    net = _assign_roles(Sequential("net", [
        Conv2d("conv1", 1, 8, 3, rng), BatchNorm2d("bn1", 8), ReLU("relu1"),
        Conv2d("conv2", 8, 16, 3, rng, stride=2), BatchNorm2d("bn2", 16), ReLU("relu2"),
        Conv2d("fc", 16, 10, 4, rng), Flatten("flatten")]))
    ctx = Context(get_recipe(recipe), Recorder())
    ctx.recorder.start(0)
    x = rng.standard_normal((4, 1, 12, 12)).astype(np.float32)  # conv2's bwd_weight: K = 4 x 4 x 4 = 64
    train_step(net, ctx, x, np.arange(4) % 10, {}, grad_scales(net, ctx.recipe), 0.01, TrainConfig())
    ctx.recorder.stop()
    gemms, ops = ctx.recorder.tables()
    (tmp_path / "net.csv").write_text(CONV_NET)
    imported = import_topology(tmp_path / "net.csv", 4, get_recipe(recipe).describe())
    import pandas as pd

    pd.testing.assert_frame_equal(imported.gemms[STRUCTURE], gemms[STRUCTURE])
    pd.testing.assert_frame_equal(imported.ops, ops)


HEADER = "Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,\n"


@pytest.mark.parametrize("row, message", [
    ("c1, 18, 18, 3, 3, 3, 16, " + "1" + "0" * 30 + ",\n",  # was an OverflowError from pandas
     " line 2: strides = 100000000000... (31 digits) must be <= 2^62 (4611686018427387904)"),
    ("c1, 18, 18, 3, 3, 3, 16, 1" + "0" * 5000 + "\n",  # was a ValueError: more digits than Python converts
     " line 2: strides = 100000000000... (5001 digits) must be <= 2^62 (4611686018427387904)"),
    # a strided layer whose GEMMs fit but whose input does not: was an OverflowError from pandas
    (f"c1, {2**31}, {2**31}, 1, 1, 1024, 1, {2**31},\n",
     " layer 'c1' at batch 8: its input has 3.78e+22 elements, beyond the 4.61e+18 (2^62) a trace counts exactly; "
     "use a smaller batch or layer"),
    ("c1, 65536, 65536, 1, 1, 65536, 65536, 1,\n",  # named the file's stem, not the file
     " layer 'c1' at batch 8: a GEMM of M=34359738368, N=65536, K=65536, groups=1 has 1.48e+20 MACs, beyond the "
     "4.61e+18 (2^62) a trace counts exactly; use a smaller batch or layer"),
])
def test_values_beyond_what_a_trace_counts_are_named_with_the_file(tmp_path, row, message):
    """Found by tests/test_fuzz_readers.py."""
    f = tmp_path / "big.csv"
    f.write_text(HEADER + row)
    with pytest.raises(TraceError) as info:
        import_topology(f, 8, INT4)
    assert str(info.value) == f"{f}{message}"

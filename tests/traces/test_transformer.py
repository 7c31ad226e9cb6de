"""Transformer descriptions lowered to a training step: shapes by hand, attention as activation x
activation GEMMs over (sequence, head) groups, LayerNorm, softmax and GELU on the vector unit, and
no weight update where the second operand is not a weight, in the trace or in the simulation."""

from __future__ import annotations

import pytest

from fourbit.hwsim.engine import simulate
from fourbit.models.recipes import get_recipe
from fourbit.traces.errors import TraceError
from fourbit.traces.io import Trace, read
from fourbit.traces.schema import WEIGHT_UPDATE_OPS
from fourbit.traces.transformer import import_transformer, read_transformer

TINY = """[transformer]
width = 32
heads = 4
layers = 2
context = 16
vocab = 50
mlp_ratio = 4
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt") / "tiny.toml"
    path.write_text(TINY)
    return path


def test_gpt2_small_shapes_by_hand():
    name, spec = read_transformer("gpt2_small")
    assert (name, spec.width, spec.heads, spec.layers, spec.context, spec.vocab) == ("gpt2_small", 768, 12, 12, 1024, 50257)
    g = import_transformer("gpt2_small", 2, get_recipe("int4").describe()).gemms
    rows = g[g.phase == "fwd"].set_index("layer")
    bt = 2 * 1024
    assert tuple(rows.loc["h0.attn.qkv", ["M", "N", "K", "groups"]]) == (bt, 3 * 768, 768, 1)
    assert tuple(rows.loc["h0.attn.scores", ["M", "N", "K", "groups"]]) == (1024, 1024, 64, 2 * 12)
    assert tuple(rows.loc["h0.attn.context", ["M", "N", "K", "groups"]]) == (1024, 64, 1024, 2 * 12)
    assert tuple(rows.loc["h11.mlp.fc", ["M", "N", "K"]]) == (bt, 4 * 768, 768)
    assert tuple(rows.loc["lm_head", ["M", "N", "K"]]) == (bt, 50257, 768)
    # forward MACs per token: 12 blocks x (12 D^2 weights + 2 T D attention) + the vocabulary projection
    macs = (rows.M * rows.N * rows.K * rows.groups).sum() / bt
    assert macs == 12 * (12 * 768**2 + 2 * 1024 * 768) + 50257 * 768
    # every layer has its three GEMMs; 4 linear + 2 attention per block, and the head
    assert len(g) == 3 * (12 * 6 + 1)


def test_attention_gemms_multiply_activations_and_update_no_weight(tiny):
    t = import_transformer(tiny, 2, get_recipe("int4").describe())
    g, ops = t.gemms, t.ops
    att = g[g.layer_type == "attention"]
    assert set(att.a_role[att.phase == "fwd"]) == {"activation"} and set(att.b_role) == {"activation"}
    assert set(att.out_role) == {"activation", "gradient"}  # no weight gradient among them
    assert set(att.a_format) == {"fp16"}  # the 4-bit recipes keep attention in 16 bits
    lin = g[(g.layer_type == "linear") & (g.phase == "bwd_weight")]
    assert set(lin.out_role) == {"weight_gradient"}
    hidden = g[(g.layer == "h0.attn.qkv") & (g.phase == "fwd")].iloc[0]
    assert (hidden.a_format, hidden.b_format) == ("int4", "int4")  # signed inputs: SAWB, not PACT
    on_attention = ops[ops.layer.isin(att.layer)]
    assert not on_attention.op.isin(WEIGHT_UPDATE_OPS).any()
    assert not ((on_attention.phase == "bwd_weight") & (on_attention.fused)).any()  # nothing on their update path
    counts = ops.groupby("op").elements.sum()
    b, tt, d, h = 2, 16, 32, 4
    assert counts["softmax"] == counts["softmax_bwd"] == 2 * b * h * tt * tt
    assert counts["layer_norm"] == counts["layer_norm_bwd"] == (2 * 2 + 1) * b * tt * d
    assert counts["gelu"] == counts["gelu_bwd"] == 2 * b * tt * 4 * d
    assert counts["sgd_momentum"] == 2 * (3 * d * d + d * d + 2 * 4 * d * d) + 50 * d  # weights only
    assert set(ops[ops.op == "softmax"].fused) == {False}


def test_the_simulation_puts_weight_traffic_only_on_weight_gemms(tiny, tmp_path):
    """Removing the optimizer's ops changes the rows of the weight GEMMs and leaves every
    attention row as it was: the master-weight traffic sits on weight gradients only."""
    t = read(import_transformer(tiny, 2, get_recipe("int4").describe()).write(tmp_path / "t"))
    full = simulate(t, "fourbit").to_frame().set_index(["layer", "phase"])
    bare_ops = t.ops[~t.ops.op.isin(WEIGHT_UPDATE_OPS)].reset_index(drop=True)
    bare = simulate(Trace(t.meta, t.gemms, bare_ops, t.metrics), "fourbit").to_frame().set_index(["layer", "phase"])
    att = [k for k in full.index if ".attn.scores" in k[0] or ".attn.context" in k[0]]
    cols = ["dram_read_bytes", "dram_write_bytes", "energy_pj"]
    assert full.loc[att, cols].equals(bare.loc[att, cols])
    assert (full.loc[("h0.mlp.fc", "bwd_weight"), "dram_write_bytes"]
            > bare.loc[("h0.mlp.fc", "bwd_weight"), "dram_write_bytes"])


@pytest.mark.parametrize("text, message", [
    ("[transformer]\nwidth = 30\nheads = 4\nlayers = 1\ncontext = 8\nvocab = 10\n", "width 30 is not divisible by heads 4"),
    ("[model]\nwidth = 32\n", "no \\[transformer\\] table"),
    ("[transformer]\nwidth = 0\nheads = 4\nlayers = 1\ncontext = 8\nvocab = 10\n", "width"),
    ("[transformer]\nwidth = 32\nheads = 4\nlayers = 1\ncontext = 8\n", "vocab"),
    ("[transformer\n", "not TOML"),
])
def test_bad_descriptions_are_refused_with_the_field(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(TraceError, match=message):
        read_transformer(path)


@pytest.mark.parametrize("recipe", ["int4", "fp32", "hfp8", "int4:attention_bits=4", "luq:attention_bits=4"])
def test_a_trained_transformer_and_its_description_give_the_same_rows(tiny, recipe):
    """The zoo's `gpt` (token and position embedding, pre-LayerNorm blocks of causal
    self-attention and a GELU MLP, final LayerNorm, vocabulary projection) trained one step, and
    the description of the same shapes imported: the same GEMM rows (all but the value
    statistics) and the same op rows, since both record through one registry."""
    import numpy as np
    import pandas as pd

    from fourbit.models.layers import Context
    from fourbit.models.recorder import Recorder
    from fourbit.models.trainer import TrainConfig, grad_scales, train_step
    from fourbit.models.zoo import gpt

    _, s = read_transformer(tiny)
    rng = np.random.default_rng(0)
    net = gpt((s.context,), s.vocab, rng, layers=s.layers, width=s.width, heads=s.heads, mlp_ratio=s.mlp_ratio)
    ctx = Context(get_recipe(recipe), Recorder())
    ids = rng.integers(0, s.vocab, (2, s.context))
    ctx.recorder.start(0)
    train_step(net, ctx, ids, np.roll(ids, -1, axis=1), {}, grad_scales(net, ctx.recipe), 0.01, TrainConfig())
    ctx.recorder.stop()
    gemms, ops = ctx.recorder.tables()
    imported = import_transformer(tiny, 2, get_recipe(recipe).describe())
    from tests.traces.test_scalesim import STRUCTURE

    cols = [c for c in STRUCTURE if c in gemms.columns and not c.startswith(("batch", "in_", "out_c", "kernel", "stride", "padding"))]
    pd.testing.assert_frame_equal(imported.gemms[cols], gemms[cols])
    pd.testing.assert_frame_equal(imported.ops, ops)


def test_every_bwd_data_of_a_transformer_is_simulated(tiny):
    """Token ids feed an embedding, so the first layer's bwd_data carries the embeddings'
    gradient: the trace says no layer's input is the data, and the simulation keeps it."""
    t = import_transformer(tiny, 2, get_recipe("int4").describe())
    assert t.meta["data_input_layer"] is None
    rows = simulate(t, "fourbit").to_frame()
    assert ("h0.attn.qkv", "bwd_data") in set(zip(rows.layer, rows.phase, strict=True))


def test_a_version_1_attention_row_keeps_activation_roles():
    from fourbit.traces.schema import upgrade_v1

    g = import_transformer("gpt2_small", 1, get_recipe("int4").describe()).gemms
    old = upgrade_v1(g.drop(columns=["a_role", "b_role", "out_role"]))
    cols = ["a_role", "b_role", "out_role"]
    assert old[cols].astype(str).values.tolist() == g[cols].astype(str).values.tolist()

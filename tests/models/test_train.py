"""The trainer: determinism, checkpoint/resume, overflow skipping, bad input, the zoo."""

from __future__ import annotations

import importlib
import zipfile

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from fourbit.models.data import Dataset, load_dataset
from fourbit.models.layers import Context
from fourbit.models.recipes import get_recipe
from fourbit.models.recorder import Recorder
from fourbit.models.trainer import TrainConfig, grad_scales, train, train_step
from fourbit.models.zoo import build_model
from fourbit.traces.errors import ConfigError, DataError
from fourbit.traces.io import read

train_mod = importlib.import_module("fourbit.models.trainer")  # the package re-exports train(), shadowing it



def _same_trace(a, b):
    pd.testing.assert_frame_equal(a.gemms, b.gemms, check_exact=True)
    pd.testing.assert_frame_equal(a.ops, b.ops, check_exact=True)
    pd.testing.assert_frame_equal(a.metrics, b.metrics, check_exact=True)


def test_same_seed_same_bits(digit_images):
    runs = [train("resnet", digit_images, "int4", epochs=1, batch_size=32, trace_every=10, seed=3,
                  progress=False, model_params={"width": 4}) for _ in range(2)]
    _same_trace(runs[0].trace, runs[1].trace)
    assert runs[0].trace.steps == [0, 10, 20, 30, 40, 43]  # every 10th and the last of 44
    for p, q in zip(runs[0].net.params(), runs[1].net.params(), strict=True):
        assert p.value.tobytes() == q.value.tobytes()
    other = train("resnet", digit_images, "int4", epochs=1, batch_size=32, seed=4, progress=False,
                  model_params={"width": 4})
    assert other.final != runs[0].final


def test_resume_after_a_kill_gives_the_uninterrupted_result(digit_images, tmp_path, monkeypatch):
    kw = dict(epochs=3, batch_size=32, seed=1, trace_every=15, progress=False, model_params={"width": 4})
    whole = train("resnet", digit_images, "int4", out=tmp_path / "whole", **kw)

    saves = []
    real_save = train_mod._save_checkpoint

    def killed_after_first_epoch(*args, **kwargs):
        real_save(*args, **kwargs)
        saves.append(1)
        if len(saves) == 1:
            raise KeyboardInterrupt  # the process dies right after the checkpoint of epoch 1

    monkeypatch.setattr(train_mod, "_save_checkpoint", killed_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train("resnet", digit_images, "int4", out=tmp_path / "cut", **kw)
    assert not (tmp_path / "cut" / "meta.json").exists()  # nothing final written half-way
    resumed = train("resnet", digit_images, "int4", out=tmp_path / "cut", resume=True, **kw)
    assert len(saves) == 3  # epochs 2 and 3 ran again after the resume
    assert resumed.final == whole.final
    _same_trace(resumed.trace, whole.trace)
    _same_trace(read(tmp_path / "cut"), read(tmp_path / "whole"))
    for p, q in zip(resumed.net.params(), whole.net.params(), strict=True):
        assert p.value.tobytes() == q.value.tobytes()


@pytest.mark.parametrize("recipe", ["int4", "nvfp4"])
def test_resume_inside_an_epoch_gives_the_uninterrupted_result(tmp_path, monkeypatch, recipe):
    """Checkpoints every 3 steps; the process dies after the one at step 6 of epoch 1 (of 2):
    resumed, the run draws epoch 1's data order again from the saved generator state, continues
    at its step 6 and ends bit for bit as the uninterrupted run (stochastic rounding included)."""
    ds = load_dataset("digits")
    kw = dict(epochs=2, batch_size=64, seed=3, trace_every=4, progress=False, checkpoint_every=3)
    whole = train("mlp", ds, recipe, out=tmp_path / "whole", **kw)
    real_save = train_mod._save_checkpoint
    positions = []

    def killed_inside_epoch(path, net, velocity, scales, shuffle_state, state, *rest):
        real_save(path, net, velocity, scales, shuffle_state, state, *rest)
        positions.append((state["epoch"], state["position"]))
        if positions[-1] == (0, 6):
            raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "_save_checkpoint", killed_inside_epoch)
    with pytest.raises(KeyboardInterrupt):
        train("mlp", ds, recipe, out=tmp_path / "cut", **kw)
    resumed = train("mlp", ds, recipe, out=tmp_path / "cut", resume=True, **kw)
    assert positions[:3] == [(0, 3), (0, 6), (0, 9)]  # the resumed run went on from step 6
    assert resumed.final == whole.final
    _same_trace(resumed.trace, whole.trace)
    for p, q in zip(resumed.net.params(), whole.net.params(), strict=True):
        assert p.value.tobytes() == q.value.tobytes()
    with pytest.raises(ConfigError, match="checkpoint_every = -1 is out of range"):
        train("mlp", ds, recipe, epochs=1, checkpoint_every=-1, progress=False)


def _damaged(tmp_path, how: str):
    """A one-epoch digits run (of two) stopped after its checkpoint, then damaged ``how``."""
    import json

    out = tmp_path / how
    kw = dict(epochs=2, batch_size=256, progress=False)
    real = train_mod._save_checkpoint

    def stop(*args):
        real(*args)
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_mod, "_save_checkpoint", stop)
        with pytest.raises(KeyboardInterrupt):
            train("mlp", "digits", "int4", out=out, **kw)
    ck = out / "checkpoint"
    arrays = dict(np.load(ck / "arrays.npz"))
    state = json.loads((ck / "state.json").read_text())
    if how == "truncated":
        (ck / "arrays.npz").write_bytes((ck / "arrays.npz").read_bytes()[:300])
    elif how in ("header", "huge"):  # an array header numpy cannot parse, or one announcing 4 TiB
        header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + ("(256, 64 }" if how == "header" else
                                                                         f"({2**40},), }}")
        header = header.encode() + b" " * (63 - (len(header) + 10) % 64) + b"\n"
        with zipfile.ZipFile(ck / "arrays.npz", "w") as z:
            z.writestr("param/fc1.weight.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header)
    elif how == "utf8":
        (ck / "state.json").write_bytes(b"\xff" + (ck / "state.json").read_bytes())
    elif how == "rows":
        pq.write_table(pq.read_table(ck / "ops.parquet").drop_columns(["fused"]), ck / "ops.parquet")
    elif how == "empty":
        (ck / "arrays.npz").write_bytes(b"")
    elif how in ("missing", "shape", "foreign", "ints", "nan"):
        name = next(k for k in arrays if k.startswith("param/"))
        if how == "missing":
            del arrays[name]
        elif how == "shape":
            arrays[name] = arrays[name][:1]
        elif how == "ints":
            arrays["velocity/fc1.bias"] = arrays["velocity/fc1.bias"].astype(np.int32)
        elif how == "nan":
            arrays[name][0, 0] = np.nan
        else:
            arrays["velocity/nothing"] = np.zeros(3, np.float32)
        np.savez(ck / "arrays.npz", **arrays)
    elif how == "scales":
        state["grad_scales"] = state["grad_scales"][:-1]
    elif how == "types":
        state["epoch"] = "1"
    elif how == "loss":
        state["epoch_loss"] = "nan"
    elif how == "position":
        state["position"] = 999
    elif how == "epoch":
        state["epoch"] = -1
    elif how == "metrics":
        state["metrics"] = [m for m in state["metrics"] if m["metric"] != "accuracy"]
    elif how == "metric":
        state["metrics"][0]["value"] = "x"
    elif how == "metric_entry":
        state["metrics"][0] = 5
    elif how == "exponent":
        state["grad_scales"][0]["exponent"] = 10**30
    elif how == "held":
        state["grad_scales"][0]["held"] = -1
    elif how == "shuffle":
        del state["shuffle"]["state"]
    if how in ("scales", "types", "loss", "position", "epoch", "metrics", "metric", "metric_entry", "exponent",
               "held", "shuffle"):
        (ck / "state.json").write_text(json.dumps(state))
    before = {f: f.read_bytes() for f in sorted(out.rglob("*")) if f.is_file()}
    return out, kw, before


@pytest.mark.parametrize("how, message", [
    ("truncated", r"checkpoint in .* is unreadable \(BadZipFile in arrays.npz: "),
    ("empty", r"checkpoint in .* is unreadable \((BadZipFile|EOFError|ValueError)"),
    ("missing", r"arrays.npz is damaged: no array 'param/"),
    ("shape", r"arrays.npz is damaged: 'param/.*' has shape \(1, .*the model's is"),
    ("foreign", r"arrays.npz is damaged: an array 'velocity/nothing' of shape \(3,\) that belongs to no parameter"),
    ("scales", r"state.json is damaged: \d+ GradScale entries for the model's \d+"),
    ("types", r"state.json is damaged: 'epoch' is '1', not an integer"),
    ("loss", r"state.json is damaged: 'epoch_loss' is 'nan', not a finite number"),
    ("position", r"state.json is damaged: epoch 1, step 999 lies outside this run \(2 epochs of 5 steps\)"),
    # found by tests/test_fuzz_readers.py; the comment says what happened before
    ("header", r"checkpoint in .* is unreadable \(TokenError in arrays.npz: \('EOF in multi-line"),  # TokenError
    ("huge", r"checkpoint in .* is unreadable \(MemoryError in arrays.npz: Unable to allocate 4.00 TiB"),  # same
    ("utf8", r"checkpoint in .* is unreadable \(UnicodeDecodeError in state.json: "),  # no file named
    ("rows", r"checkpoint in .*checkpoint is damaged: .*ops.parquet: table ops: missing column 'fused'"),  # TraceError
    ("ints", r"arrays.npz is damaged: 'velocity/fc1.bias' \(int32\) is not all finite floats$"),  # UFuncTypeError
    ("nan", r"arrays.npz is damaged: 'param/fc1.weight' \(float32\) is not all finite floats$"),  # TrainingError
    ("epoch", r"state.json is damaged: 'epoch' is -1, not an integer >= 0$"),  # 3 epochs trained (-10**9: no end)
    ("metrics", r"state.json is damaged: 'metrics' has no test accuracy of epoch 1$"),  # KeyError at the end
    ("metric", r"state.json is damaged: 'metrics': table metrics, column 'value': cannot be float64"),  # TraceError
    ("metric_entry", r"state.json is damaged: 'metrics' holds an entry that is not a mapping$"),  # TypeError
    ("exponent", r"state.json is damaged: GradScale entry 0 is \{'exponent': 10{30}, 'calibrated': True, 'held': 0\} "
                 r"\(exponent: an integer from -64 to 64, calibrated: true or false, held: an integer from 0 to 16\)$"),
    ("held", r"state.json is damaged: GradScale entry 0 is \{'exponent': -?\d+, 'calibrated': True, 'held': -1\}"),
    ("shuffle", r"state.json is damaged: the data order's generator state is not a PCG64 state \(KeyError: 'state'\)$"),
])
def test_a_damaged_checkpoint_is_refused_before_anything_changes(tmp_path, how, message):
    out, kw, before = _damaged(tmp_path, how)
    with pytest.raises(ConfigError, match=message):
        train("mlp", "digits", "int4", out=out, resume=True, **kw)
    assert {f: f.read_bytes() for f in sorted(out.rglob("*")) if f.is_file()} == before  # nothing written


def test_resume_refuses_another_run_or_no_checkpoint(digit_images, tmp_path):
    with pytest.raises(ConfigError, match="--resume: no checkpoint"):
        train("mlp", "digits", "int4", epochs=1, out=tmp_path / "none", resume=True, progress=False)
    train("mlp", "digits", "int4", epochs=1, out=tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match=r"checkpoint in .* is of another run: train_config.epochs is 1 in "
                                          r".*/a/checkpoint/state.json, 2 here$"):  # state.json: since the fuzz
        train("mlp", "digits", "int4", epochs=2, out=tmp_path / "a", resume=True, progress=False)
    with pytest.raises(ConfigError, match="is of another run: recipe"):
        train("mlp", "digits", "fp32", epochs=1, out=tmp_path / "a", resume=True, progress=False)
    with pytest.raises(ConfigError, match="--resume needs --out"):
        train("mlp", "digits", "int4", epochs=1, resume=True, progress=False)


def test_bad_input_is_named_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv("FOURBIT_DATA_DIR", raising=False)
    out = tmp_path / "run"
    cases = [
        (dict(model="mlp", dataset="digits", recipe="int4", batch_size=5000), ConfigError,
         "batch_size 5000 is larger than the training set"),
        (dict(model="vgg", dataset="digits", recipe="int4"), ConfigError, "unknown model 'vgg'; known models: mlp"),
        (dict(model="mlp", dataset="digits", recipe="int5"), ConfigError, "unknown recipe 'int5'"),
        (dict(model="lenet5", dataset="digits", recipe="int4"), ConfigError, "lenet5 takes images"),
        (dict(model="mlp", dataset="mnist", recipe="int4"), DataError, "dataset 'mnist' needs --data-dir"),
        (dict(model="mlp", dataset="mnist", recipe="int4", data_dir=str(tmp_path / "nope")), DataError,
         "is not a directory"),
        (dict(model="mlp", dataset="digits", recipe="int4:radix=8,tpr=on"), ConfigError, "radix 8 has no odd phase"),
        (dict(model="mlp", dataset="digits", recipe="int4", lr=-1.0), ConfigError, r"lr = -1.0 is out of range: allowed a finite number > 0"),
    ]
    for kw, err, msg in cases:
        with pytest.raises(err, match=msg):
            train(**kw, epochs=1, out=out, progress=False)
        assert not out.exists()


def test_overflowing_backward_gemm_skips_the_step_and_halves_the_scale():
    ds = load_dataset("digits")
    net = build_model("mlp", (64,), 10, 0, hidden=(32, 32))
    recipe = get_recipe("int4")
    scales = grad_scales(net, recipe)
    ctx = Context(recipe, Recorder())
    cfg = TrainConfig(batch_size=256, lr=0.1)
    # one sample 256 times: every bwd_weight sum over the batch adds 256 equal products
    x, y = np.repeat(ds.x_train[:1], 256, axis=0), np.repeat(ds.y_train[:1], 256)
    train_step(net, ctx, x, y, {}, scales, 0.1, cfg)  # calibrates every scale
    victim = net.gemm_layers()[1]  # fc2, the hidden layer
    victim.grad_scale.exponent += 24  # s*dY saturates FP4 (64)
    victim.alpha.value[0] = 1e-3  # and PACT clips every positive input to code 15: 256 x 64 x 15 > 65504
    before = {p.name: p.value.copy() for p in net.params()}
    exps = {id(s): s.exponent for s in scales}
    velocity: dict = {}
    loss, skipped = train_step(net, ctx, x, y, velocity, scales, 0.1, cfg, step=1)
    assert skipped and np.isfinite(loss)
    assert all((p.value == before[p.name]).all() and not p.grad.any() for p in net.params())
    assert victim.grad_scale.exponent == exps[id(victim.grad_scale)] - 1
    others = [s for s in scales if s is not victim.grad_scale]
    assert all(s.exponent == exps[id(s)] for s in others)


def test_overflow_skips_are_counted_in_the_metrics(digit_images, monkeypatch):
    real = train_mod.train_step
    calls = []

    def first_two_overflow(*args, **kwargs):
        calls.append(1)
        if len(calls) <= 2:
            return 1.0, True
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_step", first_two_overflow)
    run = train("mlp", "digits", "int4", epochs=1, progress=False)
    assert run.final["skipped_steps"] == 2
    m = run.trace.metrics
    assert m[m.metric == "skipped_steps"].value.tolist() == [2.0]

    monkeypatch.setattr(train_mod, "train_step", lambda *a, **k: (1.0, True))
    with pytest.raises(train_mod.TrainingError, match="overflowed their accumulators 33 steps in a row"):
        train("mlp", "digits", "int4", epochs=2, progress=False)


@pytest.mark.parametrize("model, params, shape", [
    ("mlp", {}, (64,)), ("lenet5", {}, (1, 28, 28)), ("resnet", {"depth": 14, "width": 4}, (3, 16, 16)),
    ("speech", {}, (1, 40, 61)), ("speech", {"head": "flatten"}, (1, 40, 61)),
])
def test_zoo_roles_and_shapes(model, params, shape):
    net = build_model(model, shape, 10, 0, **params)
    gemm = net.gemm_layers()
    assert gemm[0].role == "first" and gemm[-1].role == "last"
    assert {layer.role for layer in gemm[1:-1]} <= {"hidden", "depthwise"}
    assert not gemm[0].needs_input_grad and all(layer.needs_input_grad for layer in gemm[1:])
    x = np.random.default_rng(0).random((2, *shape), dtype=np.float32)
    assert net.forward(x, Context(get_recipe("int4"))).shape == (2, 10)


def test_lstm_language_model_trains_on_text(data_dir):
    ds = load_dataset("shakespeare", data_dir)
    small = Dataset("shakespeare", ds.x_train[:256, :16], ds.y_train[:256, :16], ds.x_test[:64, :16],
                    ds.y_test[:64, :16], ds.n_classes, ds.vocab)
    run = train("lstm", small, "int4", epochs=2, batch_size=32, progress=False,
                model_params={"embed": 16, "hidden": 32, "layers": 2})
    assert run.net.gemm_layers()[0].needs_input_grad  # its input gradient feeds the embedding
    assert run.final["test_loss"] < np.log(ds.n_classes)  # better than uniform over 65 characters
    g = run.trace.gemms
    assert set(g.layer) == {"lstm1.ih", "lstm1.hh", "lstm2.ih", "lstm2.hh", "fc"}
    assert (g[g.layer == "lstm1.hh"].groupby("phase").size() == 16).all()  # one per time step


@pytest.mark.parametrize("recipe", ["int4", "nvfp4"])
def test_gpt_trains_on_text(data_dir, recipe):
    """The zoo's character transformer learns (test loss below uniform over 65 characters) at 4
    bits; its GEMMs are the projections and, per block, the two attention GEMMs."""
    ds = load_dataset("shakespeare", data_dir)
    small = Dataset("shakespeare", ds.x_train[:256, :16], ds.y_train[:256, :16], ds.x_test[:64, :16],
                    ds.y_test[:64, :16], ds.n_classes, ds.vocab)
    run = train("gpt", small, recipe, epochs=2, batch_size=32, progress=False, lr=0.05,
                model_params={"layers": 1, "width": 32, "heads": 2})
    assert run.final["test_loss"] < np.log(ds.n_classes)
    assert set(run.trace.gemms.layer) == {"h0.attn.qkv", "h0.attn.scores", "h0.attn.context", "h0.attn.proj",
                                          "h0.mlp.fc", "h0.mlp.proj", "lm_head"}


@pytest.mark.parametrize("spec, formats", [
    ("int4", {("fwd", "fp16", "fp16"), ("bwd_data", "fp16", "fp16"), ("bwd_weight", "fp16", "fp16")}),
    ("int4:attention_bits=4", {("fwd", "int4", "int4"), ("bwd_data", "fp4_r4_e3", "int4"),
                               ("bwd_weight", "fp4_r4_e3_odd", "int4")}),
])
def test_attention_bits_set_the_attention_gemms_formats(spec, formats):
    """``attention_bits``: 16 keeps Q K^T and P V in FP16 (the first layer's precision); 4 gives
    them the hidden layers' (SAWB signed INT4 operands, TPR radix-4 gradients, GradScale aiming
    at FP4's maximum). One step of a one-block gpt records them so."""

    net = build_model("gpt", (8,), 65, 0, layers=1, width=16, heads=2)
    ctx = Context(get_recipe(spec), Recorder())
    ids = np.random.default_rng(0).integers(0, 65, (2, 8))
    scales = grad_scales(net, ctx.recipe)
    ctx.recorder.start(0)
    train_step(net, ctx, ids, np.roll(ids, -1, axis=1), {}, scales, 0.01, TrainConfig())
    ctx.recorder.stop()
    gemms, _ = ctx.recorder.tables()
    att = gemms[gemms.layer_type == "attention"]
    assert set(zip(att.phase, att.a_format, att.b_format, strict=True)) == formats
    # the attention layer's GradScale aims at FP16's target, or at radix-4 FP4's largest value
    assert net.gemm_layers()[1].grad_scale.target_max == (1.0 if spec == "int4" else 64.0)


def test_block_recipes_refuse_4_bit_attention():
    with pytest.raises(ConfigError, match="attention_bits=4 is not available with block scales"):
        get_recipe("nvfp4:attention_bits=4")


def test_a_cold_kernel_cache_is_announced_and_warmed_up_outside_the_run(monkeypatch, capsys):
    """On a machine whose kernels are not compiled yet, a run with a progress bar says so on one
    line and compiles them on a discarded step of a copy of the model: its results are those of
    a run without it, bit for bit."""
    import fourbit.models.trainer as trainer_mod

    ds = load_dataset("digits")
    small = Dataset("digits", ds.x_train[:256], ds.y_train[:256], ds.x_test[:64], ds.y_test[:64], ds.n_classes)
    quiet = train("mlp", small, "int4", epochs=1, batch_size=64, progress=False)
    monkeypatch.setattr(trainer_mod, "kernels_cached", lambda: False)
    shown = train("mlp", small, "int4", epochs=1, batch_size=64, progress=True)
    assert "compiling kernels: first run on this machine only" in capsys.readouterr().err
    assert shown.final == quiet.final
    assert all(np.array_equal(p.value, q.value) for p, q in zip(shown.net.params(), quiet.net.params(), strict=True))
    pd.testing.assert_frame_equal(shown.trace.gemms, quiet.trace.gemms)


def test_gpt_refuses_bad_shapes():
    with pytest.raises(ConfigError, match="gpt: width 30 is not divisible by heads 4"):
        build_model("gpt", (16,), 65, 0, width=30, heads=4)
    with pytest.raises(ConfigError, match="gpt: layers must be an integer >= 1, got 0"):
        build_model("gpt", (16,), 65, 0, layers=0)
    net = build_model("gpt", (16,), 65, 0, layers=1, width=8, heads=2, context=8)
    with pytest.raises(ConfigError, match="sequences of 16 tokens .* do not fit the model's context of 8 positions"):
        net.forward(np.zeros((2, 16), np.int64), Context(get_recipe("fp32")))


def test_inf_minus_inf_in_a_backward_gemm_is_an_overflow_not_a_crash():
    """Radix-16 FP4 gradients reach 16^4 = 65536 > 65504: two group sums of opposite sign
    overflow the FP16 accumulator to +inf and -inf, their sum is NaN. The GEMM flags the overflow (the
    trainer skips the step) and returns zeros there, so the rest of the step still runs and
    is recorded."""
    from fourbit.models.layers import run_gemm
    from fourbit.models.quantizers import QTensor
    from fourbit.traces.formats import Accumulator, get_format
    from fourbit.traces.lowering import GemmShape

    net = build_model("mlp", (64,), 10, 0, hidden=(32, 32))
    ctx = Context(get_recipe("int4:radix=16"), Recorder())
    grad_scales(net, ctx.recipe)
    layer = net.gemm_layers()[1]
    ctx.recorder.start(0)
    gs = layer.grad_scale
    big = 16.0**4  # group sums are rounded to FP16 once per 4 products: +inf, then -inf
    a = QTensor(np.array([[big, 0, 0, 0, -big, 0, 0, 0], [1, 0, 0, 0, 16, 0, 0, 0]]), get_format("fp4_r16_e3"))
    b = QTensor(np.ones((8, 1)), get_format("int4"))
    out = run_gemm(ctx, layer, "bwd_data", a, b, Accumulator("fp16", 4, 64), "fp16", GemmShape(2, 1, 8),
                   grad_scale=gs)
    assert gs.overflowed
    assert out.tolist() == [[0.0], [17.0]]
    assert len(ctx.recorder.gemm_rows) == 1


@pytest.mark.parametrize("radix, target", [(2, 8.0), (4, 64.0), (8, 64.0), (16, 16.0)])
def test_gradscale_target_is_the_largest_fp4_value_up_to_the_cap(radix, target):
    spec = f"int4:radix={radix}" + (",tpr=off" if radix in (2, 8) else "")
    assert get_recipe(spec).hidden.grad_target_max() == target


def test_clip_norm_scales_the_gradients_to_the_norm_and_records_the_op():
    net = build_model("mlp", (64,), 10, 0, hidden=(8,))
    rec = Recorder()
    ctx = Context(get_recipe("int4"), rec)
    params = net.params()
    for p in params:
        p.grad[...] = 0
    params[0].grad.flat[0], params[0].grad.flat[1] = 3.0, 4.0  # global norm 5
    rec.start(0)
    train_mod._clip_grads(net, ctx, 10.0)  # below the limit: untouched
    assert params[0].grad.flat[0] == 3.0 and params[0].grad.flat[1] == 4.0
    train_mod._clip_grads(net, ctx, 2.5)  # halved, exactly
    assert params[0].grad.flat[0] == 1.5 and params[0].grad.flat[1] == 2.0
    rec.stop()
    _, ops = rec.tables()
    norm_ops = ops[ops.op == "grad_norm"]
    assert set(norm_ops.layer) == {layer.name for layer in net.gemm_layers()}
    assert norm_ops.elements.sum() == 2 * sum(p.value.size for p in params)  # two calls, every parameter
    with pytest.raises(ConfigError, match=r"^train.clip_norm = -1.0 is out of range: allowed a finite number >= 0$"):
        TrainConfig(clip_norm=-1.0)

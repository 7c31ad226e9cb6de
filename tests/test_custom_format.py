"""A number format defined here and nowhere in the library: a 6-bit E3M2 float with one
power-of-two FP32 scale per block of 16. Quantize, train (every GEMM), write the trace, and read and
simulate it in a fresh process: what each part does comes from the format's properties."""

from __future__ import annotations

import json
import subprocess
import sys

import ml_dtypes
import numpy as np

from fourbit.models.quantizers import Block
from fourbit.models.recipes import LayerPrecision, Recipe
from fourbit.models.trainer import train
from fourbit.traces.block_formats import BlockFormat
from fourbit.traces.formats import Accumulator, FloatFormat, register_format

E3M2 = FloatFormat("test_fp6_e3m2", 6, exponent_bits=3, mantissa_bits=2, bias=3, has_inf=False, has_nan=False,
                   max_value=28.0, min_normal=0.25, saturates=True, numpy_type="float6_e3m2fn")


def test_a_format_defined_in_a_test_runs_quantize_gemm_trace_simulate(tmp_path):
    register_format(E3M2)
    # its values are ml_dtypes' float6_e3m2fn, as the format says
    ref = np.unique(np.arange(64, dtype=np.uint8).view(ml_dtypes.float6_e3m2fn).astype(np.float64))
    np.testing.assert_array_equal(np.unique(E3M2.values()), ref)
    q = Block(register_format(BlockFormat("test_e3m2_b16", 6, element=E3M2.name, block=16, scale_format="fp32",
                                          scale_rule="ceil")))
    acc = Accumulator("fp32", 16, None)
    layer = LayerPrecision(weight=q, act=q, grad_data=q, grad_weight=q, acc_fwd=acc, acc_bwd_data=acc,
                           acc_bwd_weight=acc, out="fp32")
    recipe = Recipe("e3m2-blocks", layer, layer, layer, layer)
    run = train("mlp", "digits", recipe, epochs=1, progress=False, out=tmp_path / "run", model_params={"hidden": (32,)})
    assert run.final["test_accuracy"] > 0.5  # it learns
    g = run.trace.gemms
    assert set(g.a_format) == set(g.b_format) == {"test_fp6_e3m2"}
    assert set(g.a_scale_kind) == {"block"} and set(g.a_block) == {16}
    assert set(g.a_bits) == {6 + 32 / 16}  # the element and its FP32 scale per 16 elements
    fwd = g[g.phase == "fwd"].iloc[0]
    assert (fwd.a_block_axis, fwd.b_block_axis) == ("K", "K")  # x along I; the weight (O, I) transposed: along K
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["formats"]["test_fp6_e3m2"]["mantissa_bits"] == 2
    # a fresh process has never heard of the format: the trace defines it
    code = ("import fourbit, json\n"
            f"r = fourbit.simulate({str(tmp_path / 'run')!r}, 'fourbit')\n"
            "f = r.to_frame()\n"
            "print(json.dumps({'units': sorted(set(f.unit)), 'cycles': float(r.totals()['total_cycles'])}))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["units"] == ["fp16"] and out["cycles"] > 0  # E3M2 values are FP16 values: FP16 FMAs

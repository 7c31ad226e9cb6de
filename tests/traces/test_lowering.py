"""The lowering of layers to GEMMs (hand-derived M, N, K)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fourbit.traces.errors import TraceError
from fourbit.traces.lowering import conv2d, conv_output_size, linear


def test_linear():
    g = linear(32, 512, 1000)
    assert (g["fwd"].M, g["fwd"].N, g["fwd"].K) == (32, 1000, 512)
    assert (g["bwd_data"].M, g["bwd_data"].N, g["bwd_data"].K) == (32, 512, 1000)
    assert (g["bwd_weight"].M, g["bwd_weight"].N, g["bwd_weight"].K) == (1000, 512, 32)


def test_conv_by_hand():
    # ResNet-18 conv1: B=32, C=3, 224x224, F=64, 7x7, stride 2, pad 3 -> P = Q = 112
    g = conv2d(32, 3, 224, 224, 64, 7, 7, stride=2, padding=3)
    bpq, crs = 32 * 112 * 112, 3 * 7 * 7
    assert (g["fwd"].M, g["fwd"].N, g["fwd"].K) == (bpq, 64, crs)
    assert (g["bwd_data"].M, g["bwd_data"].N, g["bwd_data"].K) == (bpq, crs, 64)
    assert (g["bwd_weight"].M, g["bwd_weight"].N, g["bwd_weight"].K) == (64, crs, bpq)
    assert conv_output_size(224, 7, 2, 3) == 112 and conv_output_size(7, 3, 2, 0) == 3


def test_depthwise_is_grouped():
    g = conv2d(8, 32, 112, 112, 32, 3, 3, stride=1, padding=1, groups=32)
    assert (g["fwd"].M, g["fwd"].N, g["fwd"].K, g["fwd"].groups) == (8 * 112 * 112, 1, 9, 32)
    assert g["fwd"].macs == 32 * 8 * 112 * 112 * 9


@given(st.integers(1, 8), st.integers(1, 16), st.integers(1, 20), st.integers(1, 20), st.integers(1, 16),
       st.integers(1, 5), st.integers(1, 3), st.integers(0, 2), st.sampled_from([1, 2, 4]))
def test_three_phases_have_the_same_macs(b, c, h, w, f, r, s, p, groups):
    c, f = c * groups, f * groups
    if h + 2 * p < r or w + 2 * p < r:
        with pytest.raises(TraceError, match="larger than the padded input"):
            conv2d(b, c, h, w, f, r, r, s, p, groups)
        return
    g = conv2d(b, c, h, w, f, r, r, s, p, groups)
    assert g["fwd"].macs == g["bwd_data"].macs == g["bwd_weight"].macs
    out_h, out_w = (h + 2 * p - r) // s + 1, (w + 2 * p - r) // s + 1
    assert g["fwd"].macs == b * out_h * out_w * f * (c // groups) * r * r


def test_bad_geometry():
    with pytest.raises(TraceError, match="not divisible by groups"):
        conv2d(1, 3, 8, 8, 4, 3, 3, groups=2)
    with pytest.raises(TraceError, match="batch must be an integer >= 1"):
        linear(0, 3, 4)

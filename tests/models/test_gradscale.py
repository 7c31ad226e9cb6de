"""GradScale (Sun et al. 2020, section 3.2, Fig. 3(a)): calibration, reports, updates, clamps."""

from __future__ import annotations

import numpy as np
import pytest

from fourbit.models.quantizers import GradScale


@pytest.mark.parametrize("max_abs, exponent", [
    (1.0, 6),          # 1 * 2^6 = 64 = MAX: in (32, 64]
    (32.0, 1),         # 32 would sit on the lower edge: one step up to 64
    (32.000001, 0),    # already in (32, 64]
    (64.0, 0),
    (64.5, -1),        # halve into (32, 64]
    (1e-5, 22),        # 1e-5 * 2^22 = 41.9
    (2.0**-100, 64),   # clamped at 2^64
])
def test_first_step_calibrates_into_the_top_binade(max_abs, exponent):
    g = GradScale(64.0)
    g.calibrate(max_abs)
    assert g.exponent == exponent and g.calibrated
    if exponent < 64:
        assert 32.0 < max_abs * g.scale <= 64.0


def test_reports_at_the_boundaries():
    g = GradScale(64.0)
    assert g.report(32.0) == +1          # <= MAX/2: underflow
    assert g.report(np.nextafter(32.0, 64)) == 0
    assert g.report(64.0) == 0
    assert g.report(np.nextafter(64.0, 65)) == -1
    assert g.report(np.inf) == -1 and g.report(np.nan) == -1
    assert g.report(0.0) == 0            # an all-zero gradient does not grow s


def test_updates_sum_worker_reports_and_apply_next_step():
    g = GradScale(64.0, exponent=10, calibrated=True)
    for scaled in (10.0, 10.0, 100.0):  # three data-parallel workers: +1 +1 -1 -> +1
        g.pending.append(g.report(scaled))
    assert g.exponent == 10  # nothing changes until the step ends
    assert g.update() == +1 and g.exponent == 11
    g.pending += [g.report(100.0), g.report(20.0)]  # -1 +1 -> 0
    assert g.update() == 0 and g.exponent == 11


def test_an_overflow_halves_s_and_holds_its_growth():
    """After its own GEMM overflowed, s halves and positive reports do not grow it for
    `GROWTH_HOLD_STEPS` steps (negative ones still shrink it); a back-off after another layer's
    overflow keeps s and starts no hold."""
    from fourbit.models.quantizers import GROWTH_HOLD_STEPS

    g = GradScale(64.0, exponent=10, calibrated=True)
    g.overflowed = True
    assert g.back_off() == -1 and g.exponent == 9 and g.held == GROWTH_HOLD_STEPS
    for _ in range(GROWTH_HOLD_STEPS - 1):
        g.observe(2.0**-9)  # 1 after scaling: +1, held
        assert g.update() == 0 and g.exponent == 9
    g.observe(2.0**-2)  # 128 after scaling: -1, shrinks even while held
    assert g.update() == -1 and g.exponent == 8 and g.held == 0
    g.observe(2.0**-8)
    assert g.update() == 1 and g.exponent == 9  # the hold is over
    other = GradScale(64.0, exponent=10, calibrated=True)
    assert other.back_off() == 0 and other.held == 0


def test_update_scales_follows_the_recipe_and_backs_off_on_overflow():
    """`update_scales` (the trainer's and the gradient diagnostics'): one global scale takes one
    report on the largest gradient, where per-layer voting would cancel; an overflow backs off."""
    from fourbit.models.recipes import get_recipe
    from fourbit.models.trainer import update_scales

    shared = GradScale(64.0, exponent=0, calibrated=True)
    shared.observe(8.0)   # a layer far below its target: +1
    shared.observe(100.0)  # another above it: -1 (votes would sum to 0)
    assert update_scales([shared], get_recipe("int4:grad_scaling=global")) is False
    assert shared.exponent == -1
    layer = GradScale(64.0, exponent=3, calibrated=True)
    layer.overflowed = True
    assert update_scales([layer], get_recipe("int4")) is True and layer.exponent == 2 and not layer.overflowed


def test_observe_calibrates_then_reports_on_the_scaled_value():
    g = GradScale(64.0)
    g.observe(0.5)  # calibrates to 2^7 (0.5 * 128 = 64), then reports 0
    assert g.exponent == 7 and g.pending == [0]
    g.update()
    g.observe(0.1)  # 0.1 * 128 = 12.8 <= 32: +1
    assert g.update() == 1 and g.exponent == 8


def test_clamped_to_plus_minus_64():
    g = GradScale(64.0, exponent=64, calibrated=True)
    g.observe(0.0 + 1e-300)
    g.update()
    assert g.exponent == 64
    g = GradScale(64.0, exponent=-64, calibrated=True)
    g.observe(np.inf)
    g.update()
    assert g.exponent == -64


def test_global_scale_reports_on_the_largest_layer():
    g = GradScale(64.0, exponent=0, calibrated=True)
    for layer_max in (1.0, 50.0, 3.0):  # one shared scale, three layers
        g.observe(layer_max)
    assert g.update_global() == 0 and g.exponent == 0  # max 50 is in (32, 64]


@pytest.mark.parametrize("recipe, target", [
    ("int4", 64.0),                      # radix 4: the largest FP4 value, as in [P] 3.2
    ("int4:radix=2,tpr=off", 8.0),       # radix 2, 3 exponent bits: 2^3 is the largest value
    ("int4:radix=8,tpr=off", 64.0),      # radix 8 reaches 8^3 = 512: capped at 64
    ("int4:radix=16", 16.0),             # radix 16 reaches 4096; the largest value <= 64 is 16
    ("int4:exponent_bits=4", 64.0),      # radix 4 with 4 exponent bits reaches 4^7: capped
    ("hfp8", 1.0),                       # float gradients: 1.0, headroom against FP16 overflow
])
def test_gradscale_target_is_the_largest_fp4_value_up_to_the_cap(recipe, target):
    from fourbit.models.recipes import GRAD_TARGET_CAP, get_recipe

    assert GRAD_TARGET_CAP == 64.0
    assert get_recipe(recipe).hidden.grad_target_max() == target

"""Learning-rate schedule shapes at the points that define them."""

import math

import pytest

from scratchlm.errors import ConfigError
from scratchlm.train.schedule import lr_factor


def test_warmup_is_linear_and_reaches_one():
    factors = [lr_factor(s, 4, 0.0, "cosine") for s in range(4)]
    assert factors == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 4, 0.0, "cosine") == 1.0


def test_cosine_key_points():
    assert lr_factor(10, 0, 0.0, "cosine", min_lr_ratio=0.1) == pytest.approx(1.0)
    assert lr_factor(10, 0, 0.5, "cosine", min_lr_ratio=0.1) == pytest.approx(0.55)
    assert lr_factor(10, 0, 1.0, "cosine", min_lr_ratio=0.1) == pytest.approx(0.1)
    quarter = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))
    assert lr_factor(10, 0, 0.25, "cosine", min_lr_ratio=0.1) == pytest.approx(quarter)
    # past the budget (a wall-clock budget overshooting by one step) stays at the floor
    assert lr_factor(10, 0, 1.3, "cosine", min_lr_ratio=0.1) == pytest.approx(0.1)


def test_cosine_is_monotone_after_warmup():
    values = [lr_factor(100, 10, p / 100, "cosine") for p in range(101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_wsd_is_flat_then_decays_linearly_to_floor():
    kw = dict(min_lr_ratio=0.0, decay_fraction=0.2)
    assert lr_factor(50, 5, 0.3, "wsd", **kw) == 1.0
    assert lr_factor(50, 5, 0.8, "wsd", **kw) == 1.0
    assert lr_factor(50, 5, 0.9, "wsd", **kw) == pytest.approx(0.5)
    assert lr_factor(50, 5, 1.0, "wsd", **kw) == pytest.approx(0.0)
    assert lr_factor(50, 5, 1.0, "wsd", min_lr_ratio=0.1) == pytest.approx(0.1)


def test_constant_after_warmup():
    assert lr_factor(0, 2, 0.0, "constant") == 0.5
    assert all(lr_factor(5, 2, p, "constant") == 1.0 for p in (0.0, 0.5, 1.0))


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="unknown schedule"):
        lr_factor(0, 0, 0.0, "linear")
    with pytest.raises(ConfigError, match="decay_fraction"):
        lr_factor(0, 0, 0.0, "wsd", decay_fraction=0.0)
    with pytest.raises(ConfigError, match="min_lr_ratio"):
        lr_factor(0, 0, 0.0, "cosine", min_lr_ratio=1.5)


def test_the_decay_starts_at_the_peak_where_warmup_ends():
    """W=200, N=300: the first update after warmup dropped from 1.0 to 0.325, the decay counting
    warmup's share of the budget as decayed already."""
    after_warmup = lr_factor(200, 200, 201 / 300, "cosine", min_lr_ratio=0.1, warmup_progress=200 / 300)
    assert after_warmup > 0.99
    assert lr_factor(299, 200, 300 / 300, "cosine", min_lr_ratio=0.1, warmup_progress=200 / 300) == 0.1
    halfway = lr_factor(250, 200, 250 / 300, "cosine", min_lr_ratio=0.1, warmup_progress=200 / 300)
    assert halfway == pytest.approx(0.55)


def test_wsd_decays_over_the_share_that_warmup_left():
    """Warmup past the stable phase's end (here 90% of the budget) jumped straight into the decay."""
    kw = dict(min_lr_ratio=0.1, decay_fraction=0.2, warmup_progress=0.9)
    assert lr_factor(90, 90, 0.91, "wsd", **kw) == 1.0
    assert lr_factor(98, 90, 0.99, "wsd", **kw) == pytest.approx(1 - 0.9 * 0.5)
    assert lr_factor(99, 90, 1.0, "wsd", **kw) == pytest.approx(0.1)
    assert lr_factor(99, 90, 1.0, "constant", **kw) == 1.0


def test_warmup_that_takes_the_whole_budget_leaves_the_floor():
    assert lr_factor(10, 10, 1.0, "cosine", min_lr_ratio=0.2, warmup_progress=1.0) == pytest.approx(0.2)

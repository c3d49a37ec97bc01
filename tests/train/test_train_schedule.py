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

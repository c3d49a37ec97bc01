"""Learning-rate schedules as a multiplier of the base learning rate.

After a linear warmup measured in steps, the shape is driven by `progress`, the fraction of the
training budget used once the update is made (steps, tokens or wall-clock seconds, whichever
budget binds). Driving the decay by progress rather than by step means a run with a wall-clock
budget still reaches the end of its decay when its time runs out. The decay spans the budget left
after warmup: it starts at the peak right where warmup ends (no jump down) and the last update
of the budget is made at the floor, `min_lr_ratio`.
"""

from __future__ import annotations

import math

from scratchlm.errors import ConfigError

SCHEDULES = ("cosine", "wsd", "constant")


def lr_factor(
    step: int,
    warmup_steps: int,
    progress: float,
    kind: str = "cosine",
    min_lr_ratio: float = 0.1,
    decay_fraction: float = 0.2,
    warmup_progress: float = 0.0,
) -> float:
    """Multiplier in [min_lr_ratio, 1] (or below 1 during warmup) for optimizer step `step`.

    `progress` is the share of the budget used once this update is made (1 for the last one);
    `warmup_progress` the share used when warmup ended. The shapes follow the decay's own
    progress, 0 where warmup ends and 1 at the end of the budget:

    - warmup: (step + 1) / warmup_steps for the first `warmup_steps` steps;
    - "cosine": half a cosine from 1 down to `min_lr_ratio`;
    - "wsd" (warmup-stable-decay): 1 until the last `decay_fraction` of the decay's span, then a
      linear decay to `min_lr_ratio`;
    - "constant": 1.
    """
    if kind not in SCHEDULES:
        raise ConfigError(f"unknown schedule {kind!r}; use one of {', '.join(SCHEDULES)}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ConfigError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    if not 0.0 < decay_fraction <= 1.0:
        raise ConfigError(f"decay_fraction must be in (0, 1], got {decay_fraction}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    decayed = decay_progress(progress, warmup_progress)
    if kind == "cosine":
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * decayed))
    decay_start = 1.0 - decay_fraction
    if decayed <= decay_start:
        return 1.0
    return 1.0 - (1.0 - min_lr_ratio) * (decayed - decay_start) / decay_fraction


def decay_progress(progress: float, warmup_progress: float) -> float:
    """How far the decay has gone, in [0, 1]: the budget's progress past the end of warmup, as a
    share of what warmup left. Counted from the whole budget instead, the decay would start
    partly done and the learning rate would drop at the end of warmup."""
    if warmup_progress >= 1.0:  # warmup took the whole budget: nothing is left to decay over
        return 1.0
    return min(max((progress - warmup_progress) / (1.0 - warmup_progress), 0.0), 1.0)

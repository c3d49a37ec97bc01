"""Learning-rate schedules as a multiplier of the base learning rate.

After a linear warmup measured in steps, the shape is driven by `progress`, the fraction of the
training budget already used (steps, tokens or wall-clock seconds, whichever budget binds). Driving
the decay by progress rather than by step means a run with a wall-clock budget still reaches the
end of its decay exactly when its time runs out.
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
) -> float:
    """Multiplier in [min_lr_ratio, 1] (or below 1 during warmup) for optimizer step `step`.

    - warmup: (step + 1) / warmup_steps for the first `warmup_steps` steps;
    - "cosine": half a cosine from 1 at progress 0 down to `min_lr_ratio` at progress 1;
    - "wsd" (warmup-stable-decay): 1 until the last `decay_fraction` of the budget, then a linear
      decay to `min_lr_ratio` at progress 1;
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
    progress = min(max(progress, 0.0), 1.0)
    if kind == "constant":
        return 1.0
    if kind == "cosine":
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    decay_start = 1.0 - decay_fraction
    if progress <= decay_start:
        return 1.0
    return 1.0 - (1.0 - min_lr_ratio) * (progress - decay_start) / decay_fraction

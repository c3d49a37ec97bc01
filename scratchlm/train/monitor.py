"""Stability monitor: judges every step before its update reaches the weights.

A non-finite loss or gradient norm is never applied. A spike is a loss (or gradient norm) far
above the rolling mean of recent good steps, measured in rolling standard deviations; the trainer
then skips that batch or rolls back to the last good checkpoint (see `MonitorSection.response`).
Fault injection lives here too, so the guards can be shown to work on a real run.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

from scratchlm.fsutil import is_json_int, is_json_number
from scratchlm.train.config import DebugSection, MonitorSection

# A floor on the rolling std, relative to the mean: a flat stretch must not make noise a spike.
LOSS_STD_FLOOR = 0.02
GRAD_STD_FLOOR = 0.1


class RollingStats:
    """Mean and standard deviation of the last `window` values."""

    def __init__(self, window: int) -> None:
        self.values: deque[float] = deque(maxlen=window)

    def push(self, value: float) -> None:
        self.values.append(float(value))

    def __len__(self) -> int:
        return len(self.values)

    def mean(self) -> float:
        return sum(self.values) / len(self.values) if self.values else 0.0

    def std(self) -> float:
        n = len(self.values)
        if n < 2:
            return 0.0
        m = self.mean()
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (n - 1))

    def zscore(self, value: float, rel_floor: float) -> float:
        m = self.mean()
        s = max(self.std(), rel_floor * abs(m), 1e-12)
        return (value - m) / s


@dataclass
class Verdict:
    kind: str  # "ok" | "nonfinite" | "spike" | "shift" (a lasting change of level: apply the step)
    detail: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.kind in ("ok", "shift")


class StabilityMonitor:
    """Judges each step's loss and gradient norm against the recent good steps."""

    def __init__(self, cfg: MonitorSection) -> None:
        self.cfg = cfg
        self.loss = RollingStats(cfg.window)
        self.grad = RollingStats(cfg.window)
        self.consecutive_nonfinite = 0
        self.consecutive_spikes = 0

    def judge(self, loss: float, grad_norm: float) -> Verdict:
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.consecutive_nonfinite += 1
            return Verdict("nonfinite", {"loss": loss, "grad_norm": grad_norm})
        self.consecutive_nonfinite = 0
        if len(self.loss) < self.cfg.min_history:
            return Verdict("ok", {})
        loss_z = self.loss.zscore(loss, LOSS_STD_FLOOR)
        grad_z = self.grad.zscore(grad_norm, GRAD_STD_FLOOR)
        # A gradient-norm jump while the loss keeps falling is a change of regime (new LR phase,
        # a plateau left behind), not a spike: only a rising loss makes it one.
        spiking = loss_z > self.cfg.loss_threshold or (grad_z > self.cfg.grad_threshold and loss_z > 0)
        if not spiking:
            self.consecutive_spikes = 0
            return Verdict("ok", {})
        detail = {
            "loss": loss,
            "grad_norm": grad_norm,
            "loss_mean": self.loss.mean(),
            "loss_zscore": loss_z,
            "grad_norm_mean": self.grad.mean(),
            "grad_zscore": grad_z,
        }
        self.consecutive_spikes += 1
        if self.consecutive_spikes > self.cfg.max_consecutive_spikes:
            # Batch after batch "spikes": the level itself moved. Skipping forever would freeze the
            # weights, so take the step and measure from here on.
            self.loss.values.clear()
            self.grad.values.clear()
            self.consecutive_spikes = 0
            return Verdict("shift", detail)
        return Verdict("spike", detail)

    def accept(self, loss: float, grad_norm: float) -> None:
        """Record a step whose update was applied."""
        self.loss.push(loss)
        self.grad.push(grad_norm)

    def last_loss(self) -> float | None:
        """The loss of the last applied step it holds (a checkpoint's, after a resume)."""
        return self.loss.values[-1] if len(self.loss) else None

    def state_dict(self) -> dict[str, Any]:
        return {
            "loss": list(self.loss.values),
            "grad_norm": list(self.grad.values),
            "consecutive_nonfinite": self.consecutive_nonfinite,
            "consecutive_spikes": self.consecutive_spikes,
        }

    @staticmethod
    def is_state(state: Any) -> bool:
        """Whether `state` is what `state_dict` writes (each key optional, as in older checkpoints):
        a damaged or hand-edited checkpoint is refused before anything is loaded from it."""
        if not isinstance(state, dict):
            return False
        windows = [state.get(key, []) for key in ("loss", "grad_norm")]
        numbers = all(isinstance(w, list) and all(is_json_number(v) for v in w) for w in windows)
        counts = [state.get(key, 0) for key in ("consecutive_nonfinite", "consecutive_spikes")]
        return numbers and all(is_json_int(c) and c >= 0 for c in counts)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss.values.clear()
        self.grad.values.clear()
        for v in state.get("loss", []):
            self.loss.push(v)
        for v in state.get("grad_norm", []):
            self.grad.push(v)
        self.consecutive_nonfinite = int(state.get("consecutive_nonfinite", 0))
        self.consecutive_spikes = int(state.get("consecutive_spikes", 0))


def inject_fault(loss: torch.Tensor, data_step: int, debug: DebugSection) -> torch.Tensor:
    """Turn the loss of one chosen batch into NaN or a spike (keyed on the batch, not the step,
    so a batch skipped after a rollback is not faulted again)."""
    if data_step == debug.inject_nan_at_step:
        return loss * float("nan")
    if data_step == debug.inject_spike_at_step:
        return loss * debug.spike_factor
    return loss

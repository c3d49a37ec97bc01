"""Diagnoses in plain words, drawn from the run itself.

Each check looks at one symptom and returns a sentence a user can act on, or None. The trainer
prints each diagnosis once and logs it as a `diagnosis` event in `metrics.jsonl`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from scratchlm.fsutil import is_json_int, is_json_number
from scratchlm.machine import usable_cores

# The most means a `LossHistory` keeps (even: neighbours merge in pairs). About 20 kB of
# train_state.json; the last quarter still averages over 128 means or more.
LOSS_HISTORY_CAP = 1024


@dataclass(frozen=True)
class Rates:
    """The learning rates a piece of advice names. The config's `train.lr` is not the rate a step
    trained at (warmup and decay scale it), and under Muon the hidden matrices train at
    `train.muon_lr` instead, so advice that names only `train.lr` sends a user to the wrong knob."""

    lr: float  # train.lr
    muon_lr: float | None = None  # train.muon_lr when the optimizer is Muon, else None
    factor: float = 1.0  # the schedule's multiplier at the step the advice is about

    def _named(self) -> dict[str, float]:
        return {"train.lr": self.lr} if self.muon_lr is None else {"train.lr": self.lr, "train.muon_lr": self.muon_lr}

    @property
    def noun(self) -> str:
        """"learning rate", or "learning rates" under Muon."""
        return "learning rate" if self.muon_lr is None else "learning rates"

    def settings(self) -> str:
        """The configured rates: `train.lr = 0.001` (and `train.muon_lr = 0.02` under Muon)."""
        return " and ".join(f"{key} = {value:g}" for key, value in self._named().items())

    def lower(self) -> str:
        """Advice to lower the rates, naming each setting and what the schedule made of it at this step."""
        now = " and ".join(f"{value * self.factor:g}" for value in self._named().values())
        return f"lower the {self.noun} ({self.settings()}; {now} at this step of the schedule)"


def _clip_hint(clip: float) -> str:
    return "turn on gradient clipping (train.grad_clip = 1.0)" if clip <= 0 else "clip harder (train.grad_clip)"


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _fp16_hint(precision: str) -> str:
    """Only an fp16 run gains from bf16's range; to any other run the hint would be noise."""
    if precision != "fp16":
        return ""
    return "; the run is in fp16, whose range is narrow: prefer bf16 (train.precision = \"bf16\") where the device has it"


@dataclass
class LossHistory:
    """The run's train losses across resumes, as `loss_not_decreasing` needs them: it compares the
    mean of the first quarter with that of the last, so means of equal runs of consecutive losses
    do as well as the losses. Saved in each checkpoint, because a resumed process that judged only
    its own losses saw the flat tail of a run whose loss had fallen fine, and blamed the learning
    rate. Bounded for long runs: at `LOSS_HISTORY_CAP` means, neighbours merge in pairs."""

    per_mean: int = 1  # losses each mean covers
    means: list[float] = field(default_factory=list)
    pending: list[float] = field(default_factory=list)  # the newest losses, fewer than per_mean

    @property
    def count(self) -> int:
        """Losses recorded (applied steps)."""
        return self.per_mean * len(self.means) + len(self.pending)

    def add(self, loss: float) -> None:
        self.pending.append(loss)
        if len(self.pending) < self.per_mean:
            return
        self.means.append(sum(self.pending) / self.per_mean)
        self.pending = []
        if len(self.means) >= LOSS_HISTORY_CAP:
            self.means = [(a + b) / 2 for a, b in zip(self.means[::2], self.means[1::2])]
            self.per_mean *= 2

    def judge(self, rates: Rates) -> str | None:
        """`loss_not_decreasing` over the whole means (the pending tail weighs less than one)."""
        return loss_not_decreasing(self.means, rates, steps=self.per_mean * len(self.means))

    def state_dict(self) -> dict[str, Any]:
        return {"per_mean": self.per_mean, "means": list(self.means), "pending": list(self.pending)}

    @classmethod
    def from_state(cls, state: Any) -> LossHistory | None:
        """The history `state_dict` wrote; an empty one for a checkpoint older than it (None), so
        its resume judges the losses since; None for anything else (damaged or hand-edited)."""
        if state is None:
            return cls()
        if not isinstance(state, dict):
            return None
        per_mean, means, pending = state.get("per_mean"), state.get("means"), state.get("pending")
        if not (is_json_int(per_mean) and per_mean >= 1 and isinstance(means, list) and isinstance(pending, list)):
            return None
        if len(pending) >= per_mean or not all(is_json_number(v) for v in means + pending):
            return None
        return cls(per_mean, [float(v) for v in means], [float(v) for v in pending])


def loss_not_decreasing(
    losses: Sequence[float], rates: Rates, min_steps: int = 20, steps: int | None = None
) -> str | None:
    """The last quarter of the losses is not clearly below the first quarter. `steps`: how many
    steps `losses` stands for, when each is a mean of several (`LossHistory`)."""
    if len(losses) < min_steps:
        return None
    q = max(1, len(losses) // 4)
    first = sum(losses[:q]) / q
    last = sum(losses[-q:]) / q
    if last < first * 0.98:
        return None
    direction = "rose" if last > first * 1.02 else "stayed flat"
    subject = f"{rates.noun} ({rates.settings()}) {'is' if rates.muon_lr is None else 'are'}"
    return (
        f"loss is not decreasing: it {direction} from {first:.4f} to {last:.4f} over {steps or len(losses)} steps. "
        f"The {subject} probably too high or too low; run `scratchlm sweep-lr` "
        "to try a grid of train.lr (3e-4 is the usual AdamW starting point)."
    )


def nonfinite_loss(step: int, loss: float, grad_norm: float, clip: float, rates: Rates, precision: str) -> str:
    return (
        f"the loss or gradient became non-finite at step {step} (loss {loss}, grad norm {grad_norm}): "
        f"the gradients are exploding. {_capital(_clip_hint(clip))} or {rates.lower()}{_fp16_hint(precision)}."
    )


def nonfinite_weights(step: int, found_by: str, clip: float, rates: Rates) -> str:
    return (
        f"the model's weights are no longer finite after step {step} ({found_by}): an update overflowed "
        f"although its loss was finite. {_capital(_clip_hint(clip))} or {rates.lower()}."
    )


def instability(
    step: int, rollbacks: int, loss: float, loss_mean: float, clip: float, rates: Rates, z_loss: float, precision: str
) -> str:
    """Spikes that rollbacks did not cure."""
    hints = [rates.lower(), _clip_hint(clip)]
    hints.append("add z-loss (train.z_loss = 1e-4)" if z_loss <= 0 else f"raise z-loss (train.z_loss = {z_loss:g})")
    if precision == "fp16":
        hints.append("use bf16 instead of fp16")
    return (
        f"loss spikes kept coming back after {rollbacks} rollbacks (last at step {step}, loss {loss:.4f} "
        f"vs mean {loss_mean:.4f}): the run is unstable. {_capital(', '.join(hints[:-1]))} or {hints[-1]}."
    )


def distinct_ngram_share(ids: Sequence[int], n: int = 4) -> float:
    """Distinct n-grams / all n-grams: 1.0 for text that never repeats itself, near 0 for a loop."""
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def repetitive_sample(ids: Sequence[int], threshold: float, n_params: int) -> str | None:
    if len(ids) < 16:
        return None
    share = distinct_ngram_share(ids)
    if share >= threshold:
        return None
    return (
        f"samples repeat themselves (only {share:.0%} of their 4-grams are distinct): the model "
        f"({n_params / 1e6:.2f}M parameters) is too small or undertrained for this data. Widen it "
        "(model.d_model, model.n_layer) or train longer."
    )


def low_throughput(mfu: float, threshold: float, device: torch.device, world_size: int) -> str | None:
    """Model FLOPs utilisation far below what the machine can do."""
    if mfu >= threshold:
        return None
    hints = []
    if device.type == "cpu" and torch.cuda.is_available():
        hints.append("a GPU is present but unused: set train.device = \"cuda\"")
    if device.type == "cpu":
        cores = usable_cores()
        used = torch.get_num_threads() * world_size  # each DDP process runs its own threads
        if used < cores:
            hints.append(f"the run uses {used} of {cores} cores: raise OMP_NUM_THREADS")
        hints.append("train on a GPU")
    if device.type == "cuda" and world_size < torch.cuda.device_count():
        hints.append(
            f"{torch.cuda.device_count()} GPUs are present and {world_size} in use: launch one process per GPU with torchrun"
        )
    hints.append("use larger micro batches or longer sequences so each step does more work")
    return (
        f"throughput is far below the machine: model FLOPs utilisation is {mfu:.2%}. "
        + "; ".join(hints)
        + "."
    )

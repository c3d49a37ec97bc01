"""Diagnoses in plain words, drawn from the run itself.

Each check looks at one symptom and returns a sentence a user can act on, or None. The trainer
prints each diagnosis once and logs it as a `diagnosis` event in `metrics.jsonl`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from scratchlm.machine import usable_cores


def loss_not_decreasing(losses: Sequence[float], lr: float, min_steps: int = 20) -> str | None:
    """The last quarter of the losses is not clearly below the first quarter."""
    if len(losses) < min_steps:
        return None
    q = max(1, len(losses) // 4)
    first = sum(losses[:q]) / q
    last = sum(losses[-q:]) / q
    if last < first * 0.98:
        return None
    direction = "rose" if last > first * 1.02 else "stayed flat"
    return (
        f"loss is not decreasing: it {direction} from {first:.4f} to {last:.4f} over {len(losses)} steps. "
        f"The learning rate ({lr:g}) is probably too high or too low; run `scratchlm sweep-lr` to try "
        "a grid (3e-4 is the usual AdamW starting point)."
    )


def nonfinite_loss(step: int, loss: float, grad_norm: float, clip: float, lr: float) -> str:
    clip_hint = "turn on gradient clipping (train.grad_clip = 1.0)" if clip <= 0 else "clip harder"
    return (
        f"the loss or gradient became non-finite at step {step} (loss {loss}, grad norm {grad_norm}): "
        f"the gradients are exploding. {clip_hint[0].upper() + clip_hint[1:]} or lower the learning "
        f"rate (now {lr:g}); in fp16, prefer bf16."
    )


def nonfinite_weights(step: int, found_by: str, clip: float, lr: float) -> str:
    clip_hint = "turn on gradient clipping (train.grad_clip = 1.0)" if clip <= 0 else "clip harder"
    return (
        f"the model's weights are no longer finite after step {step} ({found_by}): an update overflowed "
        f"although its loss was finite. {clip_hint[0].upper() + clip_hint[1:]} or lower the learning "
        f"rate (now {lr:g})."
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

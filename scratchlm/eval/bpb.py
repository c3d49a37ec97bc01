"""Validation loss and bits per byte.

Loss per token depends on the tokenizer: a tokenizer with longer tokens has fewer, harder
predictions. Bits per byte divides the total loss by the number of UTF-8 bytes the target tokens
stand for, which makes models with different tokenizers (or none) comparable:
bpb = Σ nats / (ln 2 · Σ bytes). Special tokens stand for no text and count 0 bytes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from scratchlm.device import Precision, autocast
from scratchlm.train.distributed import is_distributed


@torch.no_grad()
def evaluate_loss(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    token_bytes: torch.Tensor,
    precision: Precision,
    device: torch.device,
) -> dict[str, float]:
    """Mean loss in nats per target token (`val_loss`) and bits per byte (`val_bpb`) over `batches`.

    `model(x, targets=y).loss` must be the mean cross-entropy of the batch, as `GPT` returns
    it. `token_bytes[i]` is the UTF-8 length of token i. In a multi-process job every rank must call
    this; the sums are added across ranks, so ranks may evaluate the same or disjoint batches.
    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    token_bytes = token_bytes.to(device=device, dtype=torch.int64)
    sums_on = device if torch.device(device).type != "mps" else "cpu"  # MPS has no float64
    totals = torch.zeros(3, dtype=torch.float64, device=sums_on)  # nats, tokens, bytes
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            with autocast(device, precision):
                mean_nats = model(x, targets=y).loss  # fused head: no full logits tensor
            nats = mean_nats * y.numel()
            totals[0] += nats.double().to(sums_on)
            totals[1] += y.numel()
            totals[2] += token_bytes[y].sum().to(sums_on)
    finally:
        model.train(was_training)
    if is_distributed():
        torch.distributed.all_reduce(totals)
    nats, tokens, num_bytes = totals.tolist()
    return {
        "val_loss": nats / tokens if tokens else math.nan,
        "val_bpb": nats / (math.log(2) * num_bytes) if num_bytes else math.nan,
    }

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
from scratchlm.model.loss import IGNORE_INDEX
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

    `model(x, targets=y).loss` must be the mean cross-entropy over the batch's targets other than
    `IGNORE_INDEX` (padding, prompt tokens), as `GPT` returns it; those targets count no tokens
    and no bytes. `token_bytes[i]` is the UTF-8 length of token i. In a multi-process job every
    rank must call this; the sums are added across ranks, so ranks may evaluate the same or
    disjoint batches.
    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    token_bytes = token_bytes.to(device=device, dtype=torch.int64)
    sums_on = device if torch.device(device).type != "mps" else "cpu"  # MPS has no float64
    totals = torch.zeros(3, dtype=torch.float64, device=sums_on)  # nats, tokens, bytes
    try:
        for x, y in batches:
            totals += batch_sums(model, x.to(device), y.to(device), token_bytes, precision, sums_on)
    finally:
        model.train(was_training)
    if is_distributed():
        torch.distributed.all_reduce(totals)
    nats, tokens, num_bytes = totals.tolist()
    return {
        "val_loss": nats / tokens if tokens else math.nan,
        "val_bpb": nats / (math.log(2) * num_bytes) if num_bytes else math.nan,
    }


def batch_sums(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    token_bytes: torch.Tensor,
    precision: Precision,
    sums_on: torch.device | str,
) -> torch.Tensor:
    """(nats, tokens, bytes) of one batch as float64 on `sums_on`, counting only targets that are
    not ignored.

    The counts stay int64 on the model's device and become float64 only on `sums_on` (MPS has no
    float64). The loss is a mean over the counted targets alone, so it is scaled back by their
    count, not by `y.numel()`; an all-ignored batch adds nothing (whatever its "mean" is).
    """
    counted = y != IGNORE_INDEX
    with autocast(y.device, precision):
        mean_nats = model(x, targets=y).loss  # fused head: no full logits tensor
    num_bytes = (token_bytes[y.masked_fill(~counted, 0)] * counted).sum()
    tokens, num_bytes = torch.stack([counted.sum(), num_bytes]).to(sums_on).double()  # no host sync
    nats = torch.where(tokens > 0, mean_nats.to(sums_on).double() * tokens, 0.0)
    return torch.stack([nats, tokens, num_bytes])

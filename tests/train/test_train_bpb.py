"""Validation loss and bits per byte against hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.device import resolve_precision
from scratchlm.eval.bpb import evaluate_loss
from scratchlm.model import GPT, ModelConfig
from scratchlm.model.loss import IGNORE_INDEX, HeadLoss

CPU = torch.device("cpu")
FP32 = resolve_precision(CPU, "fp32")


class FixedDistribution(nn.Module):
    """Predicts the same next-token distribution `probs` at every position."""

    def __init__(self, probs):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(probs).log())

    def forward(self, idx, targets):
        """The model contract evaluate_loss relies on: a result whose `.loss` is the mean
        cross-entropy of `targets` (GPT returns a HeadLoss)."""
        logits = self.logits.expand(*idx.shape, -1)
        return HeadLoss(objective=None, loss=F.cross_entropy(logits.flatten(0, 1), targets.flatten()))


def test_uniform_model_hand_computed():
    model = FixedDistribution([0.25] * 4)
    token_bytes = torch.tensor([1, 2, 3, 0])  # id 3 is a special token: no bytes
    x = torch.zeros(1, 4, dtype=torch.long)
    y = torch.tensor([[0, 1, 2, 3]])
    result = evaluate_loss(model, [(x, y)], token_bytes, FP32, CPU)
    assert result["val_loss"] == pytest.approx(math.log(4))
    # 4 tokens x ln 4 nats over 1 + 2 + 3 + 0 = 6 bytes: 4 * 2 bits / 6 bytes
    assert result["val_bpb"] == pytest.approx(8 / 6)


def test_ignored_targets_count_neither_tokens_nor_bytes():
    """The loss is a mean over non-ignored targets; scaling it by y.numel() and indexing
    token_bytes with -100 (which wraps to another token) gave a wrong bpb."""
    model = FixedDistribution([0.1, 0.2, 0.3, 0.4] + [1e-9] * 100)  # -100 wraps to a real id here
    token_bytes = torch.tensor([1, 2, 3, 4] + [50] * 100)
    batches = [
        (torch.zeros(1, 4, dtype=torch.long), torch.tensor([[0, IGNORE_INDEX, 3, IGNORE_INDEX]])),
        (torch.zeros(1, 2, dtype=torch.long), torch.full((1, 2), IGNORE_INDEX)),  # its "mean" is NaN
    ]
    nats = -(math.log(0.1) + math.log(0.4))
    result = evaluate_loss(model, batches, token_bytes, FP32, CPU)
    assert result["val_loss"] == pytest.approx(nats / 2, rel=1e-6)
    assert result["val_bpb"] == pytest.approx(nats / (math.log(2) * (1 + 4)), rel=1e-6)


def test_sums_over_batches_not_mean_of_means():
    model = FixedDistribution([0.1, 0.2, 0.3, 0.4])
    token_bytes = torch.tensor([1, 1, 2, 4])
    batches = [
        (torch.zeros(1, 1, dtype=torch.long), torch.tensor([[0]])),
        (torch.zeros(1, 3, dtype=torch.long), torch.tensor([[3, 3, 2]])),
    ]
    nats = -(math.log(0.1) + 2 * math.log(0.4) + math.log(0.3))
    result = evaluate_loss(model, batches, token_bytes, FP32, CPU)
    assert result["val_loss"] == pytest.approx(nats / 4)
    assert result["val_bpb"] == pytest.approx(nats / (math.log(2) * (1 + 4 + 4 + 2)))


def test_restores_training_mode_and_takes_no_gradients():
    model = FixedDistribution([0.5, 0.5])
    model.train()
    batches = [(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long))]
    evaluate_loss(model, batches, torch.tensor([1, 1]), FP32, CPU)
    assert model.training
    assert model.logits.grad is None
    model.eval()
    evaluate_loss(model, batches, torch.tensor([1, 1]), FP32, CPU)
    assert not model.training


def test_bf16_autocast_is_close_to_fp32():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=16, n_layer=1, n_head=2, d_model=8, d_ff=16, max_seq_len=8))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, 16, (2, 5), generator=g), torch.randint(0, 16, (2, 5), generator=g))]
    token_bytes = torch.randint(1, 4, (16,), generator=g)
    exact = evaluate_loss(model, batches, token_bytes, FP32, CPU)
    approx = evaluate_loss(model, batches, token_bytes, resolve_precision(CPU, "bf16"), CPU)
    assert approx["val_loss"] == pytest.approx(exact["val_loss"], rel=2e-2)
    assert approx["val_bpb"] == pytest.approx(exact["val_bpb"], rel=2e-2)

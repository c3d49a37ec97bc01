"""Turning next-token logits into a token: greedy, temperature, top-k and nucleus (top-p)."""

from __future__ import annotations

import math

import torch

from scratchlm.errors import ConfigError


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Logits (B, V) with every token outside the top-k / top-p set masked to -inf.

    top-p keeps the smallest set of most likely tokens whose probabilities sum to at least
    `top_p`; the most likely token always survives both filters.
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above
        drop_sorted = mass_before >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def check_sampling(temperature: float, top_k: int | None = None, top_p: float | None = None) -> None:
    """One ConfigError for a setting that would otherwise fail deep inside torch (NaN
    probabilities in `multinomial`) or silently mean something else (a boolean top_k)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature):
        raise ConfigError(f"temperature must be a finite number, got {temperature!r}")
    if temperature < 0:
        raise ConfigError(f"temperature must be ≥ 0, got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ConfigError(f"top_k must be an integer ≥ 1, got {top_k!r}")
    if top_p is not None and (
        isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0
    ):
        raise ConfigError(f"top_p must be in (0, 1], got {top_p!r}")


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row of `logits` (B, V); greedy (argmax) when temperature is 0.

    A temperature so small that `logits / temperature` overflows float32 in a row is treated
    as its limit, 0: that row is greedy. (Sampling it would divide infinities into NaNs.)
    """
    check_sampling(temperature, top_k, top_p)
    logits = logits.float()
    greedy = logits.argmax(dim=-1)
    if temperature == 0:
        return greedy
    scaled = logits / temperature
    overflowed = (~scaled.isfinite() & logits.isfinite()).any(dim=-1)
    scaled = torch.where(overflowed[..., None], logits, scaled)  # a finite stand-in; its draw is discarded
    probs = filter_logits(scaled, top_k, top_p).softmax(dim=-1)
    sampled = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
    return torch.where(overflowed, greedy, sampled)

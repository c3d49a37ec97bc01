"""Turning next-token logits into a token: greedy, temperature, top-k and nucleus (top-p)."""

from __future__ import annotations

import torch

from scratchlm.config import integer_value, real_value, require_finite_number
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
        drop_sorted[..., 0] = False  # the likeliest token stays even when top_p rounds to 0 in float32
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def check_sampling(
    temperature: float, top_k: int | None = None, top_p: float | None = None
) -> tuple[float, int | None, float | None]:
    """The settings as Python numbers (NumPy and 0-d tensor scalars accepted), or one ConfigError
    for a setting that would otherwise fail deep inside torch (NaN probabilities in `multinomial`)
    or silently mean something else (a boolean top_k)."""
    temperature = require_finite_number("temperature", temperature)
    if temperature < 0:
        raise ConfigError(f"temperature must be ≥ 0, got {temperature}")
    if top_k is not None:
        checked_k = integer_value(top_k)
        if checked_k is None or checked_k < 1:
            raise ConfigError(f"top_k must be an integer ≥ 1, got {top_k!r}")
        top_k = checked_k
    if top_p is not None:
        checked_p = real_value(top_p)
        if checked_p is None or not 0.0 < checked_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {top_p!r}")
        top_p = checked_p
    return temperature, top_k, top_p


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row of `logits` (B, V); greedy (argmax) when temperature is 0.

    The settings are checked on every call; a decode loop checks them once with
    `check_sampling` and calls `sample_next_unchecked` per token instead.
    """
    temperature, top_k, top_p = check_sampling(temperature, top_k, top_p)
    return sample_next_unchecked(logits, temperature, top_k, top_p, generator)


def sample_next_unchecked(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """`sample_next` for settings already checked.

    Each row's largest logit is subtracted before dividing: the scaled logits are ≤ 0, so a tiny
    temperature can only push them to -inf (probability 0), never to +inf and NaN. Softmax is
    unchanged by the shift, and as temperature → 0 the draw tends to the argmax; below float32's
    smallest normal number the temperature is taken as that limit, greedy. Above float32's largest
    number it is taken as that number: as inf in float32 it made a masked logit's -inf / inf NaN
    and every other scaled logit 0 (no top-k cut).
    """
    logits = logits.float()
    if temperature < torch.finfo(torch.float32).tiny:
        return logits.argmax(dim=-1)
    temperature = min(temperature, torch.finfo(torch.float32).max)
    scaled = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    probs = filter_logits(scaled, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)

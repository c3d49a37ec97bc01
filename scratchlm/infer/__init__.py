"""Inference: sampling rules and KV-cached generation."""

from scratchlm.infer.generate import generate, stream_tokens
from scratchlm.infer.sampling import filter_logits, sample_next

__all__ = ["filter_logits", "generate", "sample_next", "stream_tokens"]

"""Byte-level BPE tokenizer: training (`bpe`), the `Tokenizer` (`tokenizer`), file formats."""

from scratchlm.tokenizer.patterns import GPT2_PATTERN, GPT4_PATTERN, PATTERNS
from scratchlm.tokenizer.tokenizer import DEFAULT_SPECIAL_TOKENS, Tokenizer

__all__ = ["DEFAULT_SPECIAL_TOKENS", "GPT2_PATTERN", "GPT4_PATTERN", "PATTERNS", "Tokenizer"]

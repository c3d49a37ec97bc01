"""Pre-tokenization patterns: the regexes that cut text into words before BPE sees it.

BPE never merges across a word boundary, so the pattern decides what a token can be (no token
spans a letter and a digit, a word and the following space, ...). `gpt2` is GPT-2's pattern;
`gpt4` is the cl100k pattern (case-insensitive contractions, digits in groups of at most three,
newlines kept apart from other whitespace). A custom regex must match every character of the text
(what it skips is lost), must not match the empty string, and must work in all three engines. Both are written without possessive quantifiers so
the same string works in Python's `regex`, in tiktoken (Rust `fancy-regex`) and in Hugging Face
`tokenizers` (Oniguruma).
"""

from __future__ import annotations

import regex
import tiktoken

from scratchlm.errors import TokenizerError

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

GPT4_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}

_BYTES = {bytes([i]): i for i in range(256)}


def resolve_pattern(pattern: str) -> str:
    """A preset name (`gpt2`, `gpt4`) or a custom regex, returned as a checked regex string."""
    if pattern in PATTERNS:
        return PATTERNS[pattern]
    if not pattern:
        raise TokenizerError("the pre-tokenization pattern is empty; use gpt2, gpt4 or a regex")
    try:
        compiled = regex.compile(pattern)
    except regex.error as e:
        raise TokenizerError(f"pattern {pattern!r} is not a valid regex: {e}") from None
    if compiled.match("") is not None:
        raise TokenizerError(f"pattern {pattern!r} matches the empty string; it would lose text")
    try:  # the encoder runs the pattern in tiktoken's regex engine, which must accept it too
        tiktoken.Encoding("check", pat_str=pattern, mergeable_ranks=_BYTES, special_tokens={})
    except ValueError as e:
        raise TokenizerError(
            f"pattern {pattern!r} is not supported by tiktoken's regex engine: {e}"
        ) from None
    return pattern


def pattern_name(pattern: str) -> str:
    """The preset name of a regex, or the regex itself when it is a custom one."""
    for name, value in PATTERNS.items():
        if value == pattern:
            return name
    return pattern

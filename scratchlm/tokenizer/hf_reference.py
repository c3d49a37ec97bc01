"""Hugging Face's Rust BPE trainer set up exactly like ours: the yardstick for speed and compression.

Same byte-level alphabet, same pre-tokenization regex, same vocabulary size and special tokens, so
any difference in bytes per token or training time is the trainers' own. Needs the optional
`tokenizers` package (part of the `hf` and `dev` extras).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def train_hf_reference(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str],
    pattern: str,
    min_frequency: int = 2,
) -> Any:
    """A `tokenizers.Tokenizer` trained by `BpeTrainer` with our settings (ByteLevel, `pattern`)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok

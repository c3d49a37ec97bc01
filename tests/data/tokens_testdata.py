"""Test inputs for the tokenize/loader/inspect tests: a real prepared dir and a real tiny tokenizer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from scratchlm.data.sources import write_prepared_dir as write_prepared
from scratchlm.tokenizer import Tokenizer

TRAIN_DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! Bonjour le monde. Grüße aus Köln — naïve café.",
    "def add(a, b):\n    return a + b\n",
    "Emoji and CJK: 🙂🚀 漢字 かな 한국어",
    "A document that mentions <|endoftext|> and <|im_start|> as plain text.",
    "   leading and trailing spaces   \n\n\n",
    "x",
    "Numbers 1234567890 and 3.14159 and -42.",
] + [f"Line {i}: the cat sat on the mat number {i * 7 % 13}." for i in range(40)]

VAL_DOCS = [
    "Validation text: the dog sat on the log.",
    "Another held-out document with tabs\tand\ttabs.",
    "¿Qué tal? Ça va bien.",
]

TOKENIZER_TEXT = " ".join(TRAIN_DOCS + VAL_DOCS) * 3


def write_prepared_dir(
    path: Path, train: Sequence[str], val: Sequence[str], rows_per_part: int = 20
) -> Path:
    """A `data prepare` output with small parts, so tests cross part boundaries."""
    return write_prepared(path, train, val, source="test", rows_per_part=rows_per_part)


def train_tiny_tokenizer(path: Path, vocab_size: int = 320) -> Tokenizer:
    tok = Tokenizer.train([TOKENIZER_TEXT], vocab_size=vocab_size)
    tok.save(path)
    return Tokenizer.load(path)


def save_validation_only(path: Path, docs: Sequence[str]) -> Path:
    """A `datasets.DatasetDict` saved with `save_to_disk` whose only split is 'validation'."""
    import pytest

    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict({"text": list(docs)})}).save_to_disk(str(path))
    return path

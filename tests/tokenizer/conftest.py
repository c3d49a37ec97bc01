"""Shared tokenizer fixtures: a small corpus every machine has and one tokenizer trained on it."""

from __future__ import annotations

import pytest
from tok_testdata import MIXED, stdlib_text

from scratchlm.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    text = stdlib_text(300_000)
    return [text[i : i + 10_000] for i in range(0, len(text), 10_000)] + MIXED


@pytest.fixture(scope="session")
def tok(corpus: list[str]) -> Tokenizer:
    return Tokenizer.train(corpus, 800, show_progress=False)

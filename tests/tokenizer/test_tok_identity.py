"""A tokenizer's sha256 is recorded in tokens dirs and checkpoints: it must never change.

The values were computed before the tokenizer.json layout changed (special tokens now also sit in
the model vocab); a tokenizer that hashed differently would make every existing tokens dir and
checkpoint refuse its own tokenizer.
"""

from __future__ import annotations

import pytest
from tok_testdata import MIXED, write_gpt2_pair

from scratchlm.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def mixed_tok() -> Tokenizer:
    return Tokenizer.train(MIXED * 3, 400, show_progress=False)


def test_trained_tokenizer_keeps_its_sha256(mixed_tok):
    assert mixed_tok.sha256 == "c34c0a5219bb93e98dcd68996c2ecb7b2e2540e310dc2d4b1c98771f67c54f08"


def test_trained_gpt2_pattern_tokenizer_keeps_its_sha256():
    tok = Tokenizer.train(MIXED * 3, 300, pattern="gpt2", special_tokens=["<|tool|>"], show_progress=False)
    assert tok.sha256 == "029e430196b9f9558bfa89bddc590b2206c8432c88f013dfdeb124a6d7f29fab"


def test_imported_gpt2_tokenizer_keeps_its_sha256(tmp_path):
    tok = Tokenizer.from_gpt2(*write_gpt2_pair(tmp_path))
    assert tok.sha256 == "e40ec242b07793968331c598a0e2cf3da94a474381b6363e54c352dd5bcb27c6"


def test_tokenizer_with_specials_first_keeps_its_sha256(mixed_tok, tmp_path):
    # The layout of imported Hugging Face tokenizers: special tokens take the first ids.
    ranks = {token: idx + 2 for token, idx in mixed_tok.ranks.items()}
    tok = Tokenizer(ranks, {"<|endoftext|>": 0, "<|pad|>": 1}, "gpt4")
    expected = "1ddaa6e82d37b8792f1b71e47c54baa6564fa8d026a59a2cc2dec3035566e257"
    assert tok.sha256 == expected
    assert Tokenizer.load(tok.save(tmp_path)).sha256 == expected

"""Encoding and decoding: round trips, the tiktoken fast path against the reference, specials."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tok_testdata import MIXED

from scratchlm.errors import TokenizerError
from scratchlm.tokenizer import reference

FAST = settings(max_examples=150, deadline=None)


@FAST
@given(st.text())
def test_roundtrip_arbitrary_unicode(tok, text):
    assert tok.decode(tok.encode_ordinary(text)) == text
    assert tok.decode_bytes(tok.encode_ordinary(text)) == text.encode("utf-8")


@FAST
@given(st.text(alphabet=st.sampled_from("ab c\n\t'sSdef_(){}0123456789.,é漢🤖")))
def test_tiktoken_matches_reference_on_dense_text(tok, text):
    assert tok.encode_ordinary(text) == reference.encode_ordinary(text, tok.pattern, tok.ranks)


@FAST
@given(st.text())
def test_tiktoken_matches_reference_on_random_unicode(tok, text):
    assert tok.encode_ordinary(text) == reference.encode_ordinary(text, tok.pattern, tok.ranks)


def test_tiktoken_matches_reference_on_corpus(tok, corpus):
    for text in corpus[:5] + MIXED:
        assert tok.encode_ordinary(text) == reference.encode_ordinary(text, tok.pattern, tok.ranks)


def test_lone_surrogates_become_replacement_characters(tok):
    assert tok.decode(tok.encode_ordinary("a\ud800b\udfffc")) == "a\ufffdb\ufffdc"


@FAST
@given(st.binary())
def test_any_bytes_decode_exactly(tok, data):
    ids = [tok.ranks[bytes([b])] for b in data]
    assert tok.decode_bytes(ids) == data
    assert tok.decode(ids) == data.decode("utf-8", errors="replace")


def test_special_token_text_is_an_error_by_default(tok):
    with pytest.raises(TokenizerError, match="disallowed special token"):
        tok.encode("end <|endoftext|>")


def test_special_tokens_when_allowed_and_as_plain_text(tok):
    text = "<|im_start|>user\nhi<|im_end|><|endoftext|>"
    ids = tok.encode(text, allowed_special="all")
    assert ids[0] == tok.special_tokens["<|im_start|>"] and ids[-1] == tok.eot_id
    assert ids[-2] == tok.special_tokens["<|im_end|>"]
    only_eot = tok.encode(text, allowed_special={"<|endoftext|>"}, disallowed_special=())
    assert only_eot[-1] == tok.eot_id and tok.special_tokens["<|im_start|>"] not in only_eot
    plain = tok.encode_ordinary(text)
    assert not set(plain) & set(tok.special_tokens.values())
    assert plain == tok.encode(text, disallowed_special=())
    assert tok.decode(plain) == text == tok.decode(ids)


def test_token_bytes(tok):
    lengths = tok.token_bytes()
    assert len(lengths) == tok.vocab_size
    assert all(lengths[i] == 0 for i in tok.special_tokens.values())
    assert all(lengths[i] == len(t) for t, i in tok.ranks.items())
    text = MIXED[1] + MIXED[3]
    assert sum(lengths[i] for i in tok.encode_ordinary(text)) == len(text.encode())


def test_encode_batch_equals_one_by_one(tok, corpus):
    texts = corpus[:6] + MIXED
    assert tok.encode_batch(texts, num_threads=2) == [tok.encode_ordinary(t) for t in texts]


@pytest.mark.parametrize("ids", [[-1], [800], [1, 2, 10**9]])
def test_decode_rejects_ids_out_of_range(tok, ids):
    with pytest.raises(TokenizerError, match="out of range"):
        tok.decode(ids)


def test_extending_specials_keeps_existing_ids(tok):
    more = tok.add_special_tokens(["<|tool|>", "<|endoftext|>"])
    assert more.special_tokens["<|tool|>"] == tok.vocab_size
    assert more.vocab_size == tok.vocab_size + 1
    assert all(more.special_tokens[k] == v for k, v in tok.special_tokens.items())
    assert more.encode("x<|tool|>", allowed_special="all")[-1] == tok.vocab_size
    assert more.encode_ordinary(MIXED[0]) == tok.encode_ordinary(MIXED[0])

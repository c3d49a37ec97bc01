"""Text tiktoken's regex engine gives up on (a run of a million blanks overflows its backtracking
stack, a Rust panic) still encodes, with the ids of an unbounded regex and of Hugging Face."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tok_testdata import MIXED

from scratchlm.cli import main
from scratchlm.tokenizer import Tokenizer, reference

LONG = "a" + " \t" * 500_000 + "b"  # overflows tiktoken's regex stack


@pytest.fixture(scope="module")
def hf(tok: Tokenizer):
    tokenizers = pytest.importorskip("tokenizers")
    return tokenizers.Tokenizer.from_str(tok.to_hf_json().decode())


def test_a_million_blanks_encode_as_hugging_face_encodes_them(tok, hf):
    ids = tok.encode_ordinary(LONG)
    assert ids == hf.encode(LONG).ids
    assert tok.encode(LONG) == tok.encode(LONG, allowed_special="all") == ids
    assert tok.encode_batch(["x", LONG]) == [tok.encode_ordinary("x"), ids]
    assert tok.decode(ids) == LONG


def test_specials_around_a_million_blanks_stay_control_tokens(tok, hf):
    text = "<|im_start|>" + LONG + "<|im_end|>"
    ids = tok.encode(text, allowed_special="all")
    assert ids == hf.encode(text).ids
    assert ids[0] == tok.special_tokens["<|im_start|>"] and ids[-1] == tok.special_tokens["<|im_end|>"]


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab c\n\t\r\u00a0\u2003'sé漢🤖.,0123")))
def test_the_word_by_word_path_gives_tiktoken_ids(tok, text):
    """The path taken where tiktoken's regex gives up, run on text where it does not."""
    assert tok._encode_by_words(text) == tok.encode_ordinary(text)


def test_the_word_by_word_path_matches_hugging_face_and_the_reference(tok, hf):
    for text in MIXED:
        assert tok._encode_by_words(text) == reference.encode_ordinary(text, tok.pattern, tok.ranks)
    for text in [*MIXED, "x" + " " * 50_000 + "y\n\n" + "\t \u00a0" * 20_000 + "z"]:
        assert tok._encode_by_words(text) == tok.encode_ordinary(text) == hf.encode(text).ids
    surrogates = "smile \ud83d\ude00 \ud800"  # repaired as tiktoken repairs them
    assert tok._encode_by_words(surrogates) == tok.encode_ordinary(surrogates)


def test_cli_encode_and_stats_take_a_million_blanks(capsys, monkeypatch, tok, tmp_path):
    folder = tok.save(tmp_path / "tok")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(LONG.encode())))
    assert main(["tokenizer", "encode", "--tokenizer", str(folder)]) == 0
    ids = json.loads(capsys.readouterr().out)
    assert ids == tok.encode_ordinary(LONG)
    (tmp_path / "blanks.txt").write_text(LONG)
    assert main(["tokenizer", "stats", "--tokenizer", str(folder), str(tmp_path / "blanks.txt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == len(ids)

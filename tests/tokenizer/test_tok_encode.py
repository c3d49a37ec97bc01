"""Encoding and decoding: round trips, the tiktoken fast path against the reference, specials."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tok_testdata import MIXED

from scratchlm.errors import TokenizerError
from scratchlm.tokenizer import Tokenizer, reference
from scratchlm.tokenizer.patterns import encodable_text

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
@given(st.text(alphabet=st.sampled_from("ab \ud800\ud83d\ude00\udfffé🤖")))
def test_surrogates_are_repaired_as_tiktoken_repairs_them(tok, text):
    # `encodable_text` is the text training cuts; the reference encoder uses it too.
    assert tok.encode_ordinary(text) == reference.encode_ordinary(text, tok.pattern, tok.ranks)
    assert tok.decode(tok.encode_ordinary(text)) == encodable_text(text)


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


@pytest.fixture(scope="module", params=[["[[A", "[[A]", "[[A]]"], ["[[A]]", "[[A]", "[[A"]])
def nested_specials(request, tmp_path_factory):
    """A tokenizer whose special tokens start one another, and Hugging Face's reading of it."""
    from tokenizers import Tokenizer as HFTokenizer

    tok = Tokenizer.train(MIXED * 3, 400, special_tokens=request.param, show_progress=False)
    folder = tok.save(tmp_path_factory.mktemp("nested"))
    return tok, HFTokenizer.from_file(str(folder / "tokenizer.json"))


@pytest.mark.parametrize("text", ["x[[A]]x", "x[[A]x", "[[[[A]]]][[A][[Ay", "[[A]]<|endoftext|>[[A"])
def test_longest_special_wins_like_hugging_face(nested_specials, text):
    tok, hf = nested_specials
    ids = tok.encode(text, allowed_special="all")
    assert ids == hf.encode(text, add_special_tokens=False).ids
    assert tok.decode(ids) == text
    if text == "x[[A]]x":
        assert ids[1] == tok.special_tokens["[[A]]"]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["[", "[[A", "]", "A", "x ", "<|endoftext|>"]), max_size=12).map("".join))
def test_nested_specials_agree_with_hugging_face_on_any_text(nested_specials, text):
    tok, hf = nested_specials
    assert tok.encode(text, allowed_special="all") == hf.encode(text, add_special_tokens=False).ids


def test_only_allowed_specials_become_control_tokens_when_nested(nested_specials):
    tok, _ = nested_specials
    ids = tok.encode("x[[A]]x", allowed_special={"[[A"}, disallowed_special=())
    assert ids[1] == tok.special_tokens["[[A"] and tok.decode(ids) == "x[[A]]x"
    with pytest.raises(TokenizerError, match=r"disallowed special token '\[\[A\]\]'"):
        tok.encode("x[[A]]x", allowed_special={"[[A"})
    # the longer special allowed: the shorter one inside it is part of its match, not a violation
    ids = tok.encode("x[[A]]x", allowed_special={"[[A]]"})
    assert ids[1] == tok.special_tokens["[[A]]"] and tok.decode(ids) == "x[[A]]x"
    with pytest.raises(TokenizerError, match=r"disallowed special token '\[\[A'"):
        tok.encode("x[[A]]x [[A", allowed_special={"[[A]]"})


@pytest.mark.parametrize("special", ["", "a", "é", "Ġ", "self"])
def test_special_token_that_is_also_an_ordinary_token_is_refused(tok, special):
    ranks = dict(tok.ranks)
    ranks.setdefault(b"self", len(ranks) + len(tok.special_tokens))  # a learned word
    with pytest.raises(TokenizerError, match="non-empty" if not special else "delimited form such as"):
        Tokenizer(ranks, {**tok.special_tokens, special: 10_000}, tok.pattern)


def test_special_token_in_byte_stand_ins_is_refused(tok):
    # "Ġzzq" in the vocab is how tokenizer.json writes " zzq": Hugging Face would read " zzq" as it.
    with pytest.raises(TokenizerError, match="byte stand-ins of tokenizer.json for ' zzq'"):
        tok.add_special_tokens(["Ġzzq"])


@pytest.mark.parametrize("name", ["<|é|>", "[ß]", "<|café|>"])
def test_a_special_hugging_face_decodes_as_other_bytes_is_refused(tok, tmp_path, name):
    """Each character is a byte stand-in (é for 0xE9), so Hugging Face decoded mojibake."""
    with pytest.raises(TokenizerError, match=r"byte stand-ins .*not UTF-8.*mojibake; use other characters"):
        tok.add_special_tokens([name])
    with pytest.raises(TokenizerError, match="byte stand-ins"):
        Tokenizer.train(iter(()), 300, special_tokens=[name], show_progress=False)
    # one saved before the rule still loads; Hugging Face decodes it as other text, as refused
    saved = Tokenizer(tok.ranks, {**tok.special_tokens, name: tok.vocab_size}, tok.pattern).save(tmp_path)
    assert Tokenizer.load(saved).decode([tok.vocab_size]) == name
    assert _hf(saved).decode([tok.vocab_size], skip_special_tokens=False) != name


@pytest.mark.parametrize("name", ["<|endoftext|>", "[PAD]", "<|im_start|>", "<|日本|>", "‹|é|>", "<|tool_call|>"])
def test_ordinary_specials_decode_as_their_text_in_hugging_face(tok, tmp_path, name):
    extended = tok.add_special_tokens([name])
    idx = extended.special_tokens[name]
    hf = _hf(extended.save(tmp_path))
    assert hf.decode([idx], skip_special_tokens=False) == extended.decode([idx]) == name
    assert hf.encode(f"a {name}b").ids == extended.encode(f"a {name}b", allowed_special="all")


def _hf(folder):
    tokenizers = pytest.importorskip("tokenizers")
    return tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))


class _CountingText(str):
    """A special's text that counts the `startswith` checks made on it."""

    calls = 0

    def startswith(self, *args):
        _CountingText.calls += 1
        return super().startswith(*args)


def test_finding_a_prefix_pair_takes_a_check_per_special_not_per_pair():
    """All pairs were compared: 4,000 specials took 1.7 s to load."""
    from scratchlm.tokenizer.tokenizer import _has_prefix_pair

    names = frozenset(_CountingText(f"<|s{i:04d}|>") for i in range(1000))
    _CountingText.calls = 0
    assert not _has_prefix_pair(names)
    assert _CountingText.calls < 2 * len(names)
    assert _has_prefix_pair(names | {_CountingText("<|s0500|>x")})


def test_one_prefix_pair_among_twenty_thousand_specials_is_found(tok):
    names = [f"<|s{i:05d}|>" for i in range(20_000)]
    many = tok.add_special_tokens([*names, "<|s12345|>x"])
    longest = many.special_tokens["<|s12345|>x"]
    assert many.encode("a<|s12345|>xb", allowed_special="all")[1] == longest
    assert many.encode("a<|s12345|>b", allowed_special="all")[1] == many.special_tokens["<|s12345|>"]


def test_byte_counts_are_the_bytes_the_tokens_spell_for_text_with_surrogates(tok):
    """A pair written as two code points (JSON `\\ud83d\\ude00`) encodes as the 4-byte 😀, a lone one
    as U+FFFD: counting their own bytes (6 and 3) would skew bytes per token and bits per byte."""
    from scratchlm.data.tokenize import encode_texts
    from scratchlm.tokenizer.stats import tokenizer_stats

    texts = ["smile \ud83d\ude00 and \ud800 alone", "plain ascii", "é and 😀"]
    spelled = [sum(tok.token_bytes()[i] for i in tok.encode_ordinary(t)) for t in texts]
    assert tokenizer_stats(tok, texts)["bytes"] == sum(spelled)
    assert encode_texts(tok, texts, "uint16").nbytes.tolist() == spelled

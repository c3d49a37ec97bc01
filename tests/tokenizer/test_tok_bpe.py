"""The BPE trainer: a merge sequence checked by hand, tie-breaking, and equality with naive BPE."""

from __future__ import annotations

import random
import re
import unicodedata
from collections import Counter

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st
from tok_testdata import MIXED, stdlib_text

from scratchlm.cli import main
from scratchlm.errors import TokenizerError
from scratchlm.tokenizer import GPT4_PATTERN, PATTERNS, Tokenizer, reference
from scratchlm.tokenizer.bpe import NoTextError, count_words, learn_merges
from scratchlm.tokenizer.patterns import PROBE_TEXTS, check_pattern, encodable_text

WORDS = {"hug": 10, "pug": 5, "pun": 12, "bun": 4, "hugs": 5}
TEXT = " ".join(w for w, n in WORDS.items() for _ in range(n))


def test_worked_example_merges_by_hand():
    # Pair counts: ug 20, pu 17, un 16, hu 15, ... -> ug; then un 16 -> un; h+ug 15; p+un 12;
    # then a tie at 5 between (hug, s) and (p, ug): b"hug" < b"p", so hugs comes first; pug; bun (4).
    tok = Tokenizer.train([TEXT], 1000, pattern=r"[a-z]+|[^a-z]", show_progress=False)
    new_tokens = sorted((i, t) for t, i in tok.ranks.items() if i >= 256)
    assert [t for _, t in new_tokens] == [b"ug", b"un", b"hug", b"pun", b"hugs", b"pug", b"bun"]
    assert tok.vocab_size == 256 + 7 + 4  # ran out of pairs before 1000
    assert tok.encode_ordinary("hugs bun hun") == [260, 32, 262, 32, 104, 257]
    assert tok.eot_id == 263 and tok.pad_id == 264


def test_min_frequency_stops_early():
    tok = Tokenizer.train([TEXT], 1000, pattern=r"[a-z]+|[^a-z]", min_frequency=5, show_progress=False)
    assert b"bun" not in tok.ranks and b"pug" in tok.ranks
    assert tok.vocab_size == 256 + 6 + 4


def naive_bpe(word_counts: dict[str, int], steps: int) -> list[bytes]:
    """Recount every pair at every step: slow, obviously right."""
    words = {tuple(bytes([b]) for b in w.encode()): n for w, n in word_counts.items()}
    made = []
    for _ in range(steps):
        pairs: Counter = Counter()
        for w, n in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p[0], p[1]))
        if pairs[best] < 2:
            break
        made.append(best[0] + best[1])
        merged = {}
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + n
        words = merged
    return made


def test_incremental_counts_match_naive_bpe(corpus):
    rng = random.Random(0)
    # Short words over a small alphabet force many overlapping pairs and repeated symbols (aaa).
    texts = [" ".join("".join(rng.choice("aab c") for _ in range(rng.randint(1, 9))) for _ in range(300))]
    texts.append(corpus[0])
    counts = count_words(texts, GPT4_PATTERN, show_progress=False)
    vocab, merges = learn_merges(counts, 150, show_progress=False)
    assert vocab[256:] == naive_bpe(counts, 150)
    assert all(vocab[a] + vocab[b] in vocab for a, b in merges)


def test_workers_and_chunking_do_not_change_the_result(corpus):
    one = count_words(corpus, GPT4_PATTERN, workers=1, show_progress=False)
    two = count_words(corpus, GPT4_PATTERN, workers=2, chunk_chars=20_000, show_progress=False)
    assert one == two
    a = Tokenizer.train(corpus[:8], 400, workers=1, show_progress=False)
    b = Tokenizer.train(corpus[:8], 400, workers=2, show_progress=False)
    assert a.ranks == b.ranks and a.sha256 == b.sha256


def _die(job):
    """Stands in for the word-counting worker: the process ends at once, as if killed."""
    import os

    os._exit(9)


def test_a_word_counting_worker_that_dies_is_a_one_line_error_not_a_hang(corpus, monkeypatch):
    """multiprocessing.Pool waited forever for a dead worker's chunk (and then hung in its own
    clean-up on SIGTERM); the pool used now reports the death."""
    import scratchlm.tokenizer.bpe as bpe
    from scratchlm.errors import ScratchLMError

    monkeypatch.setattr(bpe, "_count_job", _die)
    with pytest.raises(ScratchLMError, match="a word-counting worker process died"):
        count_words(corpus, GPT4_PATTERN, workers=2, chunk_chars=20_000, show_progress=False)


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_cutting_long_documents_changes_no_word(corpus, pattern):
    regex_text = PATTERNS[pattern]
    # One long document with every kind of line ending and indentation the cut points must respect.
    doc = "".join(corpus[:6]) + "\n".join(MIXED) + "  \n\n\tx\r\n y \n\n\n'll\n123\n"
    whole = Counter(regex.findall(regex_text, doc))
    assert count_words([doc], regex_text, chunk_chars=500, show_progress=False) == whole
    assert count_words([doc], regex_text, workers=2, chunk_chars=3000, show_progress=False) == whole


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from("ab1 :\n\t\r's\u00a0"), max_size=80),
    pattern=st.sampled_from(["gpt2", "gpt4"]),
)
def test_cut_points_are_word_boundaries(text, pattern):
    regex_text = PATTERNS[pattern]
    whole = Counter(regex.findall(regex_text, text))
    assert count_words([text], regex_text, chunk_chars=3, show_progress=False) == whole


def test_training_is_deterministic(corpus):
    first = Tokenizer.train(corpus[:5], 500, show_progress=False)
    second = Tokenizer.train(list(reversed(corpus[:5])), 500, show_progress=False)
    assert first.ranks == second.ranks


def test_user_special_tokens_follow_the_defaults():
    tok = Tokenizer.train(
        [TEXT], 300, pattern=r"[a-z]+|[^a-z]", special_tokens=["<|tool|>", "<|pad|>"], show_progress=False
    )
    names = sorted(tok.special_tokens, key=tok.special_tokens.get)
    assert names == ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>", "<|tool|>"]
    assert tok.vocab_size == 263 + 5


@pytest.mark.parametrize("vocab_size", [0, 255, 259])
def test_vocab_too_small_is_a_clear_error(vocab_size):
    with pytest.raises(TokenizerError, match="too small"):
        Tokenizer.train(["abc"], vocab_size, show_progress=False)


def test_bad_patterns_are_clear_errors():
    with pytest.raises(TokenizerError, match="not a valid regex"):
        Tokenizer.train(["abc"], 300, pattern="([a-z", show_progress=False)
    with pytest.raises(TokenizerError, match="empty string"):
        Tokenizer.train(["abc"], 300, pattern="a*", show_progress=False)
    with pytest.raises(TokenizerError, match="tiktoken"):  # valid for `regex`, not for tiktoken
        Tokenizer.train(["abc"], 300, pattern=r"\X|\s", show_progress=False)


def test_gpt2_pattern_preset(corpus):
    tok = Tokenizer.train(corpus[:3], 300, pattern="gpt2", show_progress=False)
    # GPT-2's pattern glues the space to the following word; gpt4 glues it to punctuation too.
    assert tok.pattern.startswith("'s|'t")
    assert tok.decode(tok.encode("x = 1  # ok\n")) == "x = 1  # ok\n"


def test_compresses_like_hugging_face_trainer(corpus, tok):
    """Same data, pattern, vocab and specials as Hugging Face's Rust trainer: bytes/token within 1%."""
    from scratchlm.tokenizer.hf_reference import train_hf_reference

    hf = train_hf_reference(corpus, tok.vocab_size, list(tok.special_tokens), GPT4_PATTERN)
    assert hf.get_vocab_size() == tok.vocab_size
    trained_on = len("".join(corpus[: -len(MIXED)]))
    held_out = stdlib_text(trained_on + 100_000)[trained_on:]  # the files after the training ones
    assert len(held_out) > 20_000
    ours = len(tok.encode_ordinary(held_out))
    theirs = len(hf.encode(held_out, add_special_tokens=False).ids)
    assert abs(ours / theirs - 1) < 0.01


@pytest.mark.parametrize(
    "pattern, message",
    [
        (r"(?s).", "not supported by Hugging Face"),  # Oniguruma has no (?s)
        (r"\w+", r"does not match every character \(it skips ', '\)"),  # 'hello, world!' -> 'helloworld'
        (r"\h+|\S+|\v", "does not match every character"),  # \h and \v differ between the engines
        (r"\p{N}{1,3}+|\p{L}+|\s+|[^\s\p{L}\p{N}]+", "differently in Hugging Face"),  # {1,3}+ repeats there
        (r"(?i:'s|'t)|\p{L}+|\p{N}|\s+(?!\S)|\s+|[^\s\p{L}\p{N}]+$|[^\s\p{L}\p{N}]", "differently"),  # `$`
    ],
)
def test_patterns_that_lose_text_or_split_differently_are_refused(pattern, message):
    pytest.importorskip("tokenizers")
    with pytest.raises(TokenizerError, match=message):
        Tokenizer.train(["abc"], 300, pattern=pattern, show_progress=False)


def test_presets_and_a_portable_custom_pattern_pass_the_probe():
    for regex_text in [*PATTERNS.values(), r"\p{L}+|\p{N}|\s+|[^\s\p{L}\p{N}]+"]:
        check_pattern.__wrapped__(regex_text)  # uncached: really runs every engine


@pytest.mark.parametrize("special", ["a", "é", "Ġ"])
def test_special_that_is_a_byte_token_is_refused_before_training(special):
    def no_training():
        raise AssertionError("the documents were read")
        yield

    with pytest.raises(TokenizerError, match=f"'<\\|{special}\\|>'"):
        Tokenizer.train(no_training(), 300, special_tokens=[special], show_progress=False)


def test_a_special_token_that_is_not_utf8_text_is_refused_before_training():
    """Bytes from argv that are not UTF-8 arrive as surrogate escapes; found after training, the
    error blamed the pattern."""
    def no_training():
        raise AssertionError("the documents were read")
        yield

    with pytest.raises(TokenizerError, match="is not valid text"):
        Tokenizer.train(no_training(), 300, special_tokens=["<|\udcff|>"], show_progress=False)


@pytest.mark.parametrize(("text", "special", "pattern"), [
    ("self self self self", "self", "gpt4"),  # was refused after training ("use a delimited form")
    ("hello world <|endoftext|> " * 20, "<|endoftext|>", r"\S+|\s+"),  # web text holds the literal
])
def test_training_never_learns_a_special_tokens_text(tmp_path, text, special, pattern):
    tok = Tokenizer.train([text], 400, pattern=pattern, special_tokens=[special], show_progress=False)
    assert special.encode() not in tok.ranks
    assert Tokenizer.load(tok.save(tmp_path)).ranks == tok.ranks  # tokenizer.json reads back
    plain = tok.encode_ordinary(text)
    assert tok.decode(plain) == text and tok.special_tokens[special] not in plain
    assert tok.encode(special, allowed_special="all") == [tok.special_tokens[special]]


def test_learn_merges_skips_only_the_forbidden_merge():
    vocab, _ = learn_merges({"abc": 5}, 10, show_progress=False, forbidden={b"ab"})
    assert vocab[256:] == [b"bc", b"abc"]  # a+b (first on the tie) skipped; a token holding "ab" is fine


SURROGATE_TEXTS = ["x\ud800y " * 30, "a\ud83d\ude00 " * 30 + "\udfff"]  # lone; a pair as two code points


@pytest.mark.parametrize("workers", [1, 2])
def test_training_reads_surrogates_as_encoding_does(workers):
    # JSON escapes make them; training crashed (UnicodeEncodeError) where encoding repairs them.
    tok = Tokenizer.train(SURROGATE_TEXTS, 400, workers=workers, show_progress=False)
    assert "\ufffdy".encode() in tok.ranks  # a lone surrogate is learned as the U+FFFD it encodes to
    assert "\U0001f600".encode() in tok.ranks and "\ufffd\ufffd".encode() not in tok.ranks  # a pair: its character
    for text in SURROGATE_TEXTS:
        assert tok.encode_ordinary(text) == tok.encode_ordinary(encodable_text(text))
        assert tok.decode(tok.encode_ordinary(text)) == encodable_text(text)
    assert tok.encode_ordinary("x\ud800y") == [tok.ranks[b"x"], tok.ranks["\ufffdy".encode()]]


@pytest.mark.parametrize("texts", [[], [""], ["  \n\t \n" * 50, " "]])
def test_training_on_no_text_but_whitespace_is_refused(texts):
    with pytest.raises(NoTextError, match="empty or whitespace"):
        Tokenizer.train(texts, 300, show_progress=False)


def test_the_probe_holds_every_general_category_but_surrogates():
    """A pattern built from categories must be tried on all of them, or what it skips is lost."""
    every = {unicodedata.category(chr(c)) for c in range(0x110000)}
    assert {unicodedata.category(c) for text in PROBE_TEXTS for c in text} == every - {"Cs"}


_BY_CATEGORY = r"[\p{L}\p{M}\p{N}]+|[\p{P}\p{S}]+|\s+|\p{Cf}+"


@pytest.mark.parametrize(("pattern", "first"), [
    (_BY_CATEGORY, "U+0000"),  # controls
    (_BY_CATEGORY + r"|\p{Cc}+", "U+E000"),  # private use
    (_BY_CATEGORY + r"|\p{Cc}+|\p{Co}+", "U+FDD0"),  # unassigned (a noncharacter)
])  # fmt: skip
def test_a_pattern_that_skips_controls_private_use_or_unassigned_is_refused(pattern, first):
    with pytest.raises(TokenizerError, match=f"does not match every character .*such as {re.escape(first)} would"):
        check_pattern.__wrapped__(pattern)
    check_pattern.__wrapped__(_BY_CATEGORY + r"|\p{C}+")  # every category covered: accepted


def test_cli_a_pattern_that_loses_text_is_one_line(capsys, tmp_path):
    (tmp_path / "a.txt").write_text("hello world " * 20)
    argv = ["tokenizer", "train", str(tmp_path / "a.txt"), "--out", str(tmp_path / "tok"), "--pattern", _BY_CATEGORY]
    assert main([*argv, "--vocab-size", "300", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "U+0000" in err
    assert not (tmp_path / "tok").exists()


# GPT-2's pattern with its contractions and letters in capturing groups: the same words.
_GROUPED = r"""'(s|t|re|ve|m|ll|d)| ?(\p{L}+)| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def test_a_pattern_with_capturing_groups_trains_on_its_whole_matches(corpus):
    """`findall` gave a group's text (or tuples of them) for each match: one group trained a vocab
    of bytes alone, two ended in an AttributeError; tiktoken encodes by whole matches."""
    docs = corpus[:3]
    grouped = Tokenizer.train(docs, 400, pattern=_GROUPED, show_progress=False)
    plain = Tokenizer.train(docs, 400, pattern="gpt2", show_progress=False)
    assert grouped.ranks == plain.ranks
    one_group = _GROUPED.replace(r"(\p{L}+)", r"\p{L}+")
    assert count_words(docs, one_group, workers=2, show_progress=False) == count_words(docs, PATTERNS["gpt2"], show_progress=False)
    text = MIXED[0]
    assert reference.encode_ordinary(text, grouped.pattern, grouped.ranks) == grouped.encode_ordinary(text)
    assert grouped._encode_by_words(text) == grouped.encode_ordinary(text)


def test_one_str_as_the_texts_is_refused_not_trained_char_by_char():
    """`Tokenizer.train(text, ...)` iterated the str: each character a document, so no merge was
    ever learned and a vocab of bytes alone came back with no error."""
    with pytest.raises(TokenizerError, match="not one str"):
        Tokenizer.train(TEXT, 300, show_progress=False)
    assert Tokenizer.train([TEXT], 300, show_progress=False).vocab_size > 260

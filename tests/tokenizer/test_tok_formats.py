"""Files: our tokenizer.json in Hugging Face tools, save/load identity, GPT-2 and HF import, tiktoken."""

from __future__ import annotations

import hashlib
import json

import pytest
import tiktoken
import tiktoken.load
from hypothesis import given, settings
from hypothesis import strategies as st
from tok_testdata import MIXED, hf_byte_level_bpe, write_gpt2_pair
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from scratchlm.errors import TokenizerError
from scratchlm.tokenizer import GPT4_PATTERN, Tokenizer, formats


def test_hf_tokenizers_gives_identical_ids(tok, corpus, tmp_path):
    tok.save(tmp_path)
    hf = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for text in corpus[-12:] + MIXED:
        ours = tok.encode_ordinary(text)
        assert hf.encode(text, add_special_tokens=False).ids == ours
        assert hf.decode(ours) == text
    chat = "<|im_start|>user\nhello<|im_end|>\n<|endoftext|>"
    assert hf.encode(chat, add_special_tokens=False).ids == tok.encode(chat, allowed_special="all")
    assert hf.get_vocab_size() == tok.vocab_size


@pytest.fixture(scope="module")
def hf_copy(tok, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_copy")
    tok.save(folder)
    return HFTokenizer.from_file(str(folder / "tokenizer.json"))


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_hf_tokenizers_agrees_on_arbitrary_unicode(tok, hf_copy, text):
    # `tokenizers` always turns special-token text into the special id, so the matching call on
    # our side is encode with every special allowed (hypothesis does draw "<|im_start|>").
    assert hf_copy.encode(text, add_special_tokens=False).ids == tok.encode(text, allowed_special="all")
    if not any(special in text for special in tok.special_tokens):
        assert tok.encode(text, allowed_special="all") == tok.encode_ordinary(text)


@pytest.mark.parametrize("special", ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"])
def test_hf_tokenizers_agrees_around_special_tokens(tok, hf_copy, special):
    text = f"Hello{special} world{special}{special}\n"
    assert hf_copy.encode(text, add_special_tokens=False).ids == tok.encode(text, allowed_special="all")
    assert tok.special_tokens[special] not in tok.encode_ordinary(text)


def test_transformers_reads_specials_and_chat_template(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    assert hf.eos_token_id == tok.eot_id and hf.pad_token_id == tok.pad_id
    messages = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}]
    text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert (
        text
        == "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert hf(text)["input_ids"] == tok.encode(text, allowed_special="all")


def test_save_load_roundtrip_and_hash(tok, tmp_path):
    tok.save(tmp_path / "a")
    data = (tmp_path / "a" / "tokenizer.json").read_bytes()
    vocab = json.loads(data)["model"]["vocab"]
    assert all(vocab[name] == idx for name, idx in tok.special_tokens.items())
    again = Tokenizer.load(tmp_path / "a")
    assert again.ranks == tok.ranks and again.special_tokens == tok.special_tokens
    assert again.pattern == tok.pattern and again.sha256 == tok.sha256
    again.save(tmp_path / "b")
    assert (tmp_path / "b" / "tokenizer.json").read_bytes() == data
    config = json.loads((tmp_path / "a" / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|endoftext|>" and "<|im_start|>" in config["chat_template"]


def test_files_with_specials_only_in_added_tokens_still_load(tok, tmp_path):
    # scratchlm's first layout; the sha256 is the hash of exactly these bytes.
    doc = formats.hf_tokenizer_json(tok.ranks, tok.special_tokens, tok.pattern, specials_in_vocab=False)
    data = formats.canonical_json_bytes(doc)
    (tmp_path / "tokenizer.json").write_bytes(data)
    old = Tokenizer.load(tmp_path)
    assert old.special_tokens == tok.special_tokens and old.ranks == tok.ranks
    assert old.sha256 == tok.sha256 == hashlib.sha256(data).hexdigest()


def test_gpt2_import_gives_gpt2_ids(tmp_path):
    enc, bpe = write_gpt2_pair(tmp_path)
    tok = Tokenizer.from_gpt2(enc, bpe)
    byte = lambda ch: 255 - ord(ch)  # noqa: E731
    # By hand: "lower" -> lo, low, er, low+er; " low" -> lo, low, Ġ+low; " lowest" stops at " low".
    assert tok.encode_ordinary("lower low new") == [263, 259, 262]
    assert tok.encode_ordinary(" lowest") == [259, byte("e"), byte("s"), byte("t")]
    assert tok.eot_id == 264 and tok.vocab_size == 265
    # Hugging Face's GPT-2 reader on the same two files agrees on everything.
    hf = HFTokenizer(models.BPE.from_file(str(enc), str(bpe)))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    for text in ["lower newer lowest renew", *MIXED]:
        assert tok.encode_ordinary(text) == hf.encode(text).ids


def test_imported_gpt2_exports_to_hf_with_same_ids(tmp_path):
    tok = Tokenizer.from_gpt2(*write_gpt2_pair(tmp_path))
    tok.save(tmp_path / "out")
    hf = HFTokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    for text in ["lower newer lowest renew", *MIXED]:
        assert hf.encode(text).ids == tok.encode_ordinary(text)


def test_import_hf_trained_tokenizer(corpus, tmp_path):
    hf = hf_byte_level_bpe(corpus[:10], 600)
    hf.save(str(tmp_path / "hf.json"))
    tok = Tokenizer.from_hf(tmp_path / "hf.json")
    assert tok.eot_id == 0 and tok.vocab_size == hf.get_vocab_size()
    for text in corpus[-10:] + MIXED:
        assert tok.encode_ordinary(text) == hf.encode(text).ids


def test_tiktoken_rank_file(tok, tmp_path):
    path = tok.export_tiktoken(tmp_path / "tok.tiktoken")
    ranks = tiktoken.load.load_tiktoken_bpe(str(path))
    assert ranks == tok.ranks
    enc = tiktoken.Encoding(
        "t", pat_str=tok.pattern, mergeable_ranks=ranks, special_tokens=tok.special_tokens
    )
    assert enc.encode(MIXED[0] + MIXED[2]) == tok.encode(MIXED[0] + MIXED[2])


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "not valid JSON"),
        ('{"model": {"type": "WordPiece", "vocab": {}}}', "is not BPE"),
        (
            '{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "ByteLevel"}}',
            "byte tokens are missing",
        ),
        (
            '{"model": {"type": "BPE", "vocab": {}, "merges": []}, "pre_tokenizer": {"type": "Whitespace"}}',
            "not supported",
        ),
        ("[1, 2]", "not a Hugging Face tokenizer.json"),
    ],
)
def test_foreign_or_corrupt_tokenizer_files(tmp_path, content, message):
    (tmp_path / "tokenizer.json").write_text(content)
    with pytest.raises(TokenizerError, match=message):
        Tokenizer.load(tmp_path)


def test_out_of_order_merges_are_rejected(tmp_path):
    enc, bpe = write_gpt2_pair(tmp_path)
    lines = bpe.read_text().splitlines()
    lines[1], lines[3] = lines[3], lines[1]  # "e r" (id 258) before "l o" (id 256)
    bpe.write_text("\n".join(lines) + "\n")
    with pytest.raises(TokenizerError, match="out of the order"):
        Tokenizer.from_gpt2(enc, bpe)


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer.json in this directory"):
        Tokenizer.load(tmp_path)


@pytest.fixture(scope="module")
def specials_first(corpus, tmp_path_factory):
    """A Hugging Face-trained tokenizer, imported: its special tokens have the first ids."""
    from scratchlm.tokenizer.hf_reference import train_hf_reference

    folder = tmp_path_factory.mktemp("specials_first")
    hf = train_hf_reference(corpus[:10], 600, ["<|endoftext|>", "<|pad|>", "<|im_start|>"], GPT4_PATTERN)
    hf.save(str(folder / "hf.json"))
    tok = Tokenizer.from_hf(folder / "hf.json")
    assert tok.special_tokens == {"<|endoftext|>": 0, "<|pad|>": 1, "<|im_start|>": 2}
    tok.save(folder / "saved")
    return tok, folder / "saved" / "tokenizer.json"


def test_saved_specials_first_tokenizer_keeps_its_ids_in_tokenizers(specials_first):
    tok, saved = specials_first
    hf = HFTokenizer.from_file(str(saved))
    for name, idx in tok.special_tokens.items():
        assert hf.token_to_id(name) == idx
    for text in [*MIXED, "<|im_start|>user\nhi<|pad|><|endoftext|>"]:
        assert hf.encode(text, add_special_tokens=False).ids == tok.encode(text, allowed_special="all")
    for idx in range(tok.vocab_size):
        assert hf.decode([idx], skip_special_tokens=False) == tok.decode([idx])


def test_saved_specials_first_tokenizer_keeps_its_ids_in_transformers(specials_first):
    transformers = pytest.importorskip("transformers")
    tok, saved = specials_first
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(saved), clean_up_tokenization_spaces=False)
    assert hf.convert_tokens_to_ids(list(tok.special_tokens)) == list(tok.special_tokens.values())
    text = "<|im_start|>user\n" + MIXED[0] + "<|endoftext|>"
    assert hf.encode(text, add_special_tokens=False) == tok.encode(text, allowed_special="all")
    for idx in range(tok.vocab_size):
        assert hf.decode([idx]) == tok.decode([idx])


def test_special_in_vocab_with_another_id_is_refused(tok, tmp_path):
    tok.save(tmp_path)
    doc = json.loads((tmp_path / "tokenizer.json").read_text())
    doc["model"]["vocab"]["<|pad|>"] = tok.vocab_size + 5
    (tmp_path / "tokenizer.json").write_text(json.dumps(doc))
    with pytest.raises(
        TokenizerError, match=r"special token '<\|pad\|>' has id 797 in added_tokens but id 805"
    ):
        Tokenizer.load(tmp_path)


def _corrupt(doc):
    """Ways a tokenizer.json can be malformed: each must be one TokenizerError naming the file."""
    return {
        "merges null": lambda: doc["model"].update(merges=None),
        "merges of numbers": lambda: doc["model"].update(merges=[[1, 2]]),
        "added_tokens a number": lambda: doc.update(added_tokens=5),
        "added token id huge": lambda: doc["added_tokens"][0].update(id=2**32),
        "added token id negative": lambda: doc["added_tokens"][0].update(id=-3),
        "added token empty": lambda: doc["added_tokens"].append({"id": 900, "content": ""}),
        "pretokenizers of strings": lambda: doc["pre_tokenizer"].update(pretokenizers=["x", "y"]),
        "pattern not a string": lambda: doc["pre_tokenizer"]["pretokenizers"][0].update(pattern={"Regex": 5}),
    }


@pytest.mark.parametrize("case", list(_corrupt({})))
def test_malformed_tokenizer_json_is_one_clear_error(tok, tmp_path, case):
    tok.save(tmp_path)
    file = tmp_path / "tokenizer.json"
    doc = json.loads(file.read_text())
    # The first layout (specials only in added_tokens), so that a bad added token is not caught
    # by its vocab entry instead.
    doc["model"]["vocab"] = {k: v for k, v in doc["model"]["vocab"].items() if k not in tok.special_tokens}
    _corrupt(doc)[case]()
    file.write_text(json.dumps(doc))
    with pytest.raises(TokenizerError) as raised:
        Tokenizer.load(tmp_path)
    assert str(raised.value).startswith(f"{file}: ") and "\n" not in str(raised.value)


def test_directory_named_tokenizer_json_is_a_clear_error(tmp_path):
    (tmp_path / "tokenizer.json").mkdir()
    with pytest.raises(TokenizerError, match="is a directory"):
        Tokenizer.load(tmp_path)
    with pytest.raises(TokenizerError, match="is a directory"):
        Tokenizer.from_gpt2(tmp_path / "tokenizer.json", tmp_path / "tokenizer.json")


def test_a_saved_tokenizer_loads_even_if_its_pattern_is_now_refused_where_patterns_are_chosen(tmp_path):
    """The probe guards training and import; tokens already made with a pattern must stay readable."""
    from scratchlm.errors import TokenizerError
    from scratchlm.tokenizer import Tokenizer

    lossy = "[a-z]+| "  # skips punctuation: refused for new tokenizers
    with pytest.raises(TokenizerError, match="does not match every character"):
        Tokenizer.train(["abc abc"], 300, pattern=lossy, show_progress=False)
    ranks = {bytes([b]): b for b in range(256)}
    Tokenizer(ranks, {"<|endoftext|>": 256}, lossy).save(tmp_path / "old")
    loaded = Tokenizer.load(tmp_path / "old")
    assert loaded.pattern == lossy and loaded.decode(loaded.encode_ordinary("ab ab")) == "ab ab"
    with pytest.raises(TokenizerError, match="does not match every character"):
        Tokenizer.from_hf(tmp_path / "old")


def test_an_ordinary_token_spelled_like_a_placeholder_saves_and_loads(tmp_path):
    """The merges went into every `"@MERGES@"` of the text, the vocab's entry of that spelling
    included: a corrupt tokenizer.json, its hash taken and reported saved."""
    text = "@MERGES@ a@MERGES@ @VOCAB@ b@VOCAB@ " * 200
    trained = Tokenizer.train([text], 300, pattern=r"[^\s]+|\s+", show_progress=False)
    assert b"@MERGES@" in trained.ranks and b"@VOCAB@" in trained.ranks
    again = Tokenizer.load(trained.save(tmp_path / "trained"))
    assert (again.ranks, again.special_tokens) == (trained.ranks, trained.special_tokens)
    hf = HFTokenizer.from_file(str(tmp_path / "trained" / "tokenizer.json"))
    assert hf.encode(text[:60]).ids == trained.encode_ordinary(text[:60])


@pytest.mark.parametrize("name", ["@VOCAB@", "@MERGES@"])
def test_a_special_named_like_a_placeholder_saves_and_loads(tok, tmp_path, name):
    """The vocab and merges were written into the first `"@VOCAB@"`/`"@MERGES@"` of the document,
    and `added_tokens` comes first: such a special corrupted tokenizer.json."""
    extended = tok.add_special_tokens([name, "@@" + name + "@@"])
    loaded = Tokenizer.load(extended.save(tmp_path / "extended"))
    assert (loaded.ranks, loaded.special_tokens) == (extended.ranks, extended.special_tokens)
    assert loaded.sha256 == extended.sha256
    hf = HFTokenizer.from_file(str(tmp_path / "extended" / "tokenizer.json"))
    assert hf.encode(f"x {name} y").ids == extended.encode(f"x {name} y", allowed_special="all")
    trained = Tokenizer.train(["hello world " * 20], 300, special_tokens=[name], show_progress=False)
    again = Tokenizer.load(trained.save(tmp_path / "trained"))
    assert (again.ranks, again.special_tokens) == (trained.ranks, trained.special_tokens)


def test_a_loaded_pattern_that_skips_characters_refuses_to_encode_what_it_would_lose(tmp_path):
    """Loading keeps such a tokenizer readable, but its encoding used to drop the skipped text
    without a word: a foreign tokenizer.json split by `\\p{L}+` encoded "hello world 123" as
    "helloworld"."""
    from scratchlm.errors import TokenizerError
    from scratchlm.tokenizer import Tokenizer

    lossy = "[a-z]+| "
    ranks = {bytes([b]): b for b in range(256)}
    Tokenizer(ranks, {"<|endoftext|>": 256}, lossy).save(tmp_path / "old")
    loaded = Tokenizer.load(tmp_path / "old")
    assert loaded.decode(loaded.encode_ordinary("ab ab")) == "ab ab"  # what it covers still encodes
    assert loaded.decode(loaded.encode("ab <|endoftext|>", allowed_special="all")) == "ab <|endoftext|>"
    for encode in (loaded.encode_ordinary, loaded.encode, lambda t: loaded.encode(t, allowed_special="all")):
        with pytest.raises(TokenizerError, match=r"skips ',' of the text"):
            encode("ab, ab")
    assert loaded.decode([97, 44]) == "a,"

"""Files: our tokenizer.json in Hugging Face tools, save/load identity, GPT-2 and HF import, tiktoken."""

from __future__ import annotations

import hashlib
import json

import pytest
import tiktoken
import tiktoken.load
from hypothesis import given, settings
from hypothesis import strategies as st
from tok_testdata import MIXED, write_gpt2_pair
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from scratchlm.errors import TokenizerError
from scratchlm.tokenizer import Tokenizer


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
    assert hashlib.sha256(data).hexdigest() == tok.sha256
    again = Tokenizer.load(tmp_path / "a")
    assert again.ranks == tok.ranks and again.special_tokens == tok.special_tokens
    assert again.pattern == tok.pattern and again.sha256 == tok.sha256
    again.save(tmp_path / "b")
    assert (tmp_path / "b" / "tokenizer.json").read_bytes() == data
    config = json.loads((tmp_path / "a" / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|endoftext|>" and "<|im_start|>" in config["chat_template"]


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
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(corpus[:10], trainer)
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
        ("not json", "not a valid JSON"),
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

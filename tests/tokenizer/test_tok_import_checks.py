"""Hugging Face and GPT-2 files scratchlm cannot encode alike are refused; what generation needs is kept.

Each refused file is a small variation of one tokenizer trained here with `tokenizers`, and each
refusal is backed by showing that `tokenizers` itself gives other ids than scratchlm would.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from tok_testdata import hf_byte_level_bpe, write_gpt2_pair
from tokenizers import Tokenizer as HFTokenizer

from scratchlm.cli import main
from scratchlm.errors import TokenizerError
from scratchlm.tokenizer import Tokenizer
from scratchlm.tokenizer.formats import bytes_to_unicode

TEXTS = ["say hello world", " lo llo lol", "x <mask> y", "a  <mask>  b", "foo<mask>bar", " w wo we"]


@pytest.fixture(scope="module")
def base_doc() -> dict:
    """A tiny byte-level BPE trained by `tokenizers`, as a tokenizer.json document."""
    return json.loads(hf_byte_level_bpe(["hello world, lo and below, we wow low owls"] * 20, 300).to_str())


def _variant(base_doc: dict, tmp_path, change) -> str:
    doc = json.loads(json.dumps(base_doc))
    change(doc)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(doc, ensure_ascii=False))
    return str(path)


def _add(doc: dict, content: str, idx: int | None = None, in_vocab: bool = True, **flags) -> None:
    if idx is None:  # the id tokenizers gives a token not in the vocab
        idx = max([len(doc["model"]["vocab"])] + [e["id"] + 1 for e in doc["added_tokens"]])
    entry = {"id": idx, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True, **flags}  # fmt: skip
    doc["added_tokens"].append(entry)
    if in_vocab:
        doc["model"]["vocab"][content] = idx


def _hf_differs(path: str, ours_if_accepted) -> bool:
    """Whether `tokenizers` gives other ids on TEXTS than `ours_if_accepted(text)` (what the old
    reader gave: the file read as if the refused option were absent)."""
    hf = HFTokenizer.from_file(path)
    return any(hf.encode(t, add_special_tokens=False).ids != ours_if_accepted(t) for t in TEXTS)


def test_non_special_added_tokens_are_refused_even_when_they_are_ordinary_tokens(base_doc, tmp_path):
    vocab = base_doc["model"]["vocab"]
    # "lo" is an ordinary token and encodes alone to its own id, yet tokenizers cuts " lo" and
    # "llo" at it before BPE, so its ids change around it.
    path = _variant(base_doc, tmp_path, lambda d: _add(d, "lo", vocab["lo"], special=False))
    plain = HFTokenizer.from_str(json.dumps(base_doc))
    assert HFTokenizer.from_file(path).encode("lo").ids == [vocab["lo"]]
    assert _hf_differs(path, lambda t: plain.encode(t).ids)
    with pytest.raises(TokenizerError, match=r"added token 'lo' is not special"):
        Tokenizer.from_hf(path)
    path = _variant(base_doc, tmp_path, lambda d: _add(d, "<tool>", special=False))
    with pytest.raises(TokenizerError, match=r"added token '<tool>' is not special"):
        Tokenizer.from_hf(path)


def test_a_special_token_merges_make_or_use_is_refused_as_such(base_doc, tmp_path):
    """tokenizers marks an ordinary token special when asked (`add_special_tokens(["lo"])`); the
    refusal used to say that a merge makes or uses a token "not in the vocab", which it is in."""
    vocab, text = base_doc["model"]["vocab"], "lo"
    path = _variant(base_doc, tmp_path, lambda d: _add(d, text, vocab[text]))
    assert HFTokenizer.from_file(path).encode(f"x{text}x").ids[1] == vocab[text]  # a file tokenizers reads
    with pytest.raises(TokenizerError, match=rf"makes or uses '{text}', which added_tokens makes a special token") as refused:
        Tokenizer.from_hf(path)
    assert "not in the vocab" not in str(refused.value)


@pytest.mark.parametrize("flag", ["lstrip", "rstrip", "single_word"])
def test_added_token_options_that_change_ids_are_refused(base_doc, tmp_path, flag):
    plain = _variant(base_doc, tmp_path, lambda d: _add(d, "<mask>"))
    ours = Tokenizer.from_hf(plain)
    path = _variant(base_doc, tmp_path, lambda d: _add(d, "<mask>", **{flag: True}))
    assert _hf_differs(path, lambda t: ours.encode(t, allowed_special="all"))
    with pytest.raises(TokenizerError, match=rf"added token '<mask>' has {flag}=true"):
        Tokenizer.from_hf(path)
    # `normalized` on a special token changes nothing without a normalizer: accepted, same ids.
    path = _variant(base_doc, tmp_path, lambda d: _add(d, "<mask>", normalized=True))
    assert not _hf_differs(path, lambda t: Tokenizer.from_hf(path).encode(t, allowed_special="all"))


def test_an_added_token_tokenizers_would_renumber_is_refused(base_doc, tmp_path):
    size = len(base_doc["model"]["vocab"])
    path = _variant(base_doc, tmp_path, lambda d: _add(d, "<mask>", 900, in_vocab=False))
    assert HFTokenizer.from_file(path).token_to_id("<mask>") == size  # not 900
    with pytest.raises(TokenizerError, match=rf"'<mask>' has id 900 but is not in the vocab, so Hugging Face gives it id {size}"):
        Tokenizer.from_hf(path)
    # Listed in added_tokens alone with the id tokenizers gives it: read with that id.
    path = _variant(base_doc, tmp_path, lambda d: _add(d, "<mask>", size, in_vocab=False))
    assert Tokenizer.from_hf(path).special_tokens["<mask>"] == size
    assert not _hf_differs(path, lambda t: Tokenizer.from_hf(path).encode(t, allowed_special="all"))


def test_bpe_dropout_is_refused(base_doc, tmp_path):
    path = _variant(base_doc, tmp_path, lambda d: d["model"].update(dropout=0.5))
    with pytest.raises(TokenizerError, match="BPE dropout 0.5 is not supported"):
        Tokenizer.from_hf(path)
    Tokenizer.from_hf(_variant(base_doc, tmp_path, lambda d: d["model"].update(dropout=0.0)))


def _drop_merge(doc: dict, pair: list[str]) -> None:
    doc["model"]["merges"] = [m for m in doc["model"]["merges"] if m != pair]


def _repeat_merge(doc: dict, again: bool) -> None:
    """Append the first merge again (`again`) or another split of a token made earlier."""
    merges, vocab = doc["model"]["merges"], doc["model"]["vocab"]
    if again:
        merges.append(merges[0])
        return
    for left, right in merges:  # a token of 3+ characters with a second split into vocab tokens
        token = left + right
        for cut in range(1, len(token)):
            pair = [token[:cut], token[cut:]]
            if pair != [left, right] and all(p in vocab for p in pair):
                merges.append(pair)
                return
    raise AssertionError("no token with a second split")


@pytest.mark.parametrize(
    "change, message, shown_to_differ",
    [
        (lambda d: _drop_merge(d, ["Ġ", "w"]), r"token 'Ġw' \(id \d+\) is not made by the merges", True),
        (lambda d: d["model"].update(merges=[]), "is not made by the merges", True),
        # tokenizers ranks a repeated line by its last copy, and a second way to make a token by
        # its own line, where merging by id ranks both with the token.
        (lambda d: _repeat_merge(d, True), r"repeats merge 1", False),
        (lambda d: _repeat_merge(d, False), r"again after merges of other tokens", False),
    ],
    ids=["one merge dropped", "no merges", "a merge repeated", "a token made again later"],
)  # fmt: skip
def test_merge_lists_that_would_not_give_hf_ids_are_refused(base_doc, tmp_path, change, message, shown_to_differ):
    ours = Tokenizer.from_hf(_variant(base_doc, tmp_path, lambda d: None))
    path = _variant(base_doc, tmp_path, change)
    if shown_to_differ:  # what the old reader gave: the vocab merged by id, as if nothing were wrong
        assert _hf_differs(path, ours.encode_ordinary)
    with pytest.raises(TokenizerError, match=message):
        Tokenizer.from_hf(path)


def test_a_tiktoken_vocabulary_written_with_ignore_merges_imports_with_tiktoken_ids(base_doc, tmp_path):
    """Llama 3's tokenizer.json lacks merges for 588 of its tokens and sets ignore_merges: it is a
    tiktoken vocabulary, whose original ids are tiktoken's rule, which scratchlm runs. Such a file
    imports (it was refused for a while this session), and so does scratchlm's own layout."""
    ours = Tokenizer.from_hf(_variant(base_doc, tmp_path, lambda d: None))
    dropped = _variant(base_doc, tmp_path, lambda d: (_drop_merge(d, ["Ġ", "w"]), d["model"].update(ignore_merges=True)))
    imported = Tokenizer.from_hf(dropped)
    assert imported.ranks == ours.ranks
    for text in TEXTS:
        assert imported.encode_ordinary(text) == ours.encode_ordinary(text)
    ours.save(tmp_path / "own")
    assert Tokenizer.from_hf(tmp_path / "own").sha256 == ours.sha256


def _hand_made(tmp_path, extra: dict[str, int], merges: list[list[str]], ignore_merges: bool = False) -> str:
    chars = bytes_to_unicode()
    doc = {
        "version": "1.0", "added_tokens": [], "normalizer": None, "post_processor": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "ignore_merges": ignore_merges,
                  "vocab": {**{chars[b]: b for b in range(256)}, **extra}, "merges": merges},
    }  # fmt: skip
    path = tmp_path / "hand.json"
    path.write_text(json.dumps(doc, ensure_ascii=False))
    return str(path)


def test_merges_whose_order_tiktoken_cannot_follow_are_refused(tmp_path):
    # "abc" (258) is made from "a bc", but "ab" is merged first, so tokenizers stops at "ab c"
    # where merging by id would make "abc": tokenizers gives [256, 99] for "abc".
    path = _hand_made(tmp_path, {"ab": 256, "bc": 257, "abc": 258}, [["a", "b"], ["b", "c"], ["a", "bc"]])
    assert HFTokenizer.from_file(path).encode("xabcd").ids == [ord("x"), 256, ord("c"), ord("d")]
    with pytest.raises(TokenizerError, match=r"token 'abc' \(id 258\) is not made by the merges .*'ab c'"):
        Tokenizer.from_hf(path)
    # With ignore_merges, a token that no two tokens make is looked up whole by both: accepted.
    path = _hand_made(tmp_path, {"ab": 256, "xyz": 257}, [["a", "b"]], ignore_merges=True)
    tok = Tokenizer.from_hf(path)
    hf = HFTokenizer.from_file(path)
    for text in ["xyz", "xyzab", "abxyz xyz", "xy"]:
        assert tok.encode_ordinary(text) == hf.encode(text).ids


def test_gpt2_tokens_no_merge_makes_are_refused_unless_delimited(tmp_path):
    enc, bpe = write_gpt2_pair(tmp_path)
    lines = bpe.read_text().splitlines()
    bpe.write_text("\n".join(line for line in lines if line != "ne w") + "\n")  # "new" is made by no merge
    with pytest.raises(TokenizerError, match=r"no merge makes token 'new' \(id 261\).*truncated"):
        Tokenizer.from_gpt2(enc, bpe)
    bpe.write_text("\n".join(lines[:4]) + "\n")  # cut short: "Ġlow" is GPT-2's stand-in text
    with pytest.raises(TokenizerError, match=r"no merge makes token 'Ġlow'.*truncated"):
        Tokenizer.from_gpt2(enc, bpe)


def test_gpt2_specials_in_square_brackets_import(tmp_path):
    """`tokenizers` writes specials such as [PAD] into vocab.json too, made by no merge on purpose."""
    enc, bpe = write_gpt2_pair(tmp_path)
    encoder = json.loads(enc.read_text())
    encoder["[PAD]"] = 265
    enc.write_text(json.dumps(encoder))
    tok = Tokenizer.from_gpt2(enc, bpe)
    assert tok.special_tokens == {"<|endoftext|>": 264, "[PAD]": 265}


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _llama_like(base_doc: dict, folder) -> None:
    """A source directory like Llama 3's: a begin-of-text template and an eos that is not <|endoftext|>."""
    doc = json.loads(json.dumps(base_doc))
    for name in ("<|begin_of_text|>", "<|eot_id|>"):
        _add(doc, name, in_vocab=False)
    bos = doc["added_tokens"][-2]["id"]
    doc["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        {"type": "TemplateProcessing",
         "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
         "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [bos], "tokens": ["<|begin_of_text|>"]}}},
    ]}  # fmt: skip
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps(doc, ensure_ascii=False))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def test_import_keeps_the_begin_of_text_template_and_the_eos_token(capsys, base_doc, tmp_path):
    from scratchlm.infer.text import eos_ids, prefix_ids

    src, out = tmp_path / "src", tmp_path / "out"
    _llama_like(base_doc, src)
    code, _, err = _run(capsys, "tokenizer", "import", "--hf", str(src), "--out", str(out))
    assert code == 0, err
    for text in TEXTS:
        original = HFTokenizer.from_file(str(src / "tokenizer.json")).encode(text).ids
        assert HFTokenizer.from_file(str(out / "tokenizer.json")).encode(text).ids == original
    tok = Tokenizer.load(out)
    for folder in (src, out):
        assert prefix_ids(folder / "tokenizer.json", tok) == [tok.special_tokens["<|begin_of_text|>"]]
        assert eos_ids(tmp_path / "no_model", folder, tok) == [tok.special_tokens["<|eot_id|>"]]
    # A template naming a token with another id than the tokenizer's is refused, nothing written.
    doc = json.loads((src / "tokenizer.json").read_text())
    doc["post_processor"]["processors"][1]["special_tokens"]["<|begin_of_text|>"]["ids"] = [5]
    (src / "tokenizer.json").write_text(json.dumps(doc))
    code, _, err = _run(capsys, "tokenizer", "import", "--hf", str(src), "--out", str(tmp_path / "bad"))
    assert code == 2 and err.count("\n") == 1 and "post_processor adds '<|begin_of_text|>'" in err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("where", ["the input", "inside out", "out itself", "parent a file", "parent missing"])
def test_a_tiktoken_path_that_would_lose_a_file_or_cannot_be_written_is_refused(capsys, tmp_path, where):
    enc, bpe = write_gpt2_pair(tmp_path)
    (tmp_path / "afile").write_text("keep")
    out = tmp_path / "out"
    target = {
        "the input": enc,
        "inside out": out / "tokenizer.json",
        "out itself": out,
        "parent a file": tmp_path / "afile" / "x.tiktoken",
        "parent missing": tmp_path / "missing" / "x.tiktoken",
    }[where]
    before = enc.read_bytes()
    code, _, err = _run(capsys, "tokenizer", "import", "--gpt2", str(enc), str(bpe), "--out", str(out),
                        "--tiktoken", str(target))  # fmt: skip
    assert code == 2 and err.count("\n") == 1, err
    assert enc.read_bytes() == before and not out.exists() and not (tmp_path / "missing").exists()


def test_a_tiktoken_file_may_go_beside_the_source_tokenizer(capsys, base_doc, tmp_path):
    """Only the files read are protected: a new file in the source's folder is fine, however the
    source is named (the folder or its tokenizer.json)."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "tokenizer.json").write_text(json.dumps(base_doc))
    for n, given in enumerate((source, source / "tokenizer.json")):
        target = source / f"ranks{n}.tiktoken"
        code, _, err = _run(capsys, "tokenizer", "import", "--hf", str(given), "--out", str(tmp_path / f"out{n}"),
                            "--tiktoken", str(target))  # fmt: skip
        assert code == 0, err
        assert target.is_file() and json.loads((source / "tokenizer.json").read_text()) == base_doc


def test_import_keeps_the_sources_chat_template_and_pad_token_not_chatml(capsys, base_doc, tmp_path):
    """Every import used to get scratchlm's ChatML template, whose markers this tokenizer does not
    have: transformers rendered `<|im_start|>` as plain pieces, and the source's template was lost."""
    transformers = pytest.importorskip("transformers")
    src = tmp_path / "src"
    _llama_like(base_doc, src)
    template = "{% for m in messages %}<|begin_of_text|>{{ m['role'] }}: {{ m['content'] }}<|eot_id|>{% endfor %}"
    config = json.loads((src / "tokenizer_config.json").read_text())
    (src / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template, "pad_token": "<|eot_id|>"}))
    code, _, err = _run(capsys, "tokenizer", "import", "--hf", str(src), "--out", str(tmp_path / "out"))
    assert code == 0, err
    messages = [{"role": "user", "content": "hello"}]
    rendered = {}
    for folder in (src, tmp_path / "out"):
        fast = transformers.PreTrainedTokenizerFast.from_pretrained(folder)
        rendered[folder.name] = fast.apply_chat_template(messages, tokenize=False)
        assert fast.pad_token == "<|eot_id|>"
    assert rendered["out"] == rendered["src"] == "<|begin_of_text|>user: hello<|eot_id|>"
    # without a template of its own, and without ChatML's markers, no template is written
    (src / "tokenizer_config.json").write_text(json.dumps(config))
    code, _, err = _run(capsys, "tokenizer", "import", "--hf", str(src), "--out", str(tmp_path / "plain"))
    assert code == 0, err
    assert "chat_template" not in json.loads((tmp_path / "plain" / "tokenizer_config.json").read_text())
    # transformers >= 4.50 keeps the template in a file of its own beside the config
    (src / "chat_template.jinja").write_text(template)
    code, _, err = _run(capsys, "tokenizer", "import", "--hf", str(src), "--out", str(tmp_path / "file"))
    assert code == 0, err
    assert json.loads((tmp_path / "file" / "tokenizer_config.json").read_text())["chat_template"] == template


def test_a_chat_template_file_wins_over_the_configs_template_as_in_transformers(capsys, base_doc, tmp_path):
    """A source holding both used to give the import the config's template, while transformers
    renders the source's chats with the file's (it reads chat_template.jinja over the config)."""
    transformers = pytest.importorskip("transformers")
    src = tmp_path / "src"
    _llama_like(base_doc, src)
    config = json.loads((src / "tokenizer_config.json").read_text())
    stale = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    (src / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": stale}))
    (src / "chat_template.jinja").write_text("{% for m in messages %}<|begin_of_text|>{{ m['content'] }}{% endfor %}")
    code, _, err = _run(capsys, "tokenizer", "import", "--hf", str(src), "--out", str(tmp_path / "out"))
    assert code == 0, err
    messages = [{"role": "user", "content": "hello"}]
    rendered = [
        transformers.PreTrainedTokenizerFast.from_pretrained(folder).apply_chat_template(messages, tokenize=False)
        for folder in (src, tmp_path / "out")
    ]
    assert rendered == ["<|begin_of_text|>hello", "<|begin_of_text|>hello"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"eos_token": ["<|eot_id|>"]}, "eos_token is ['<|eot_id|>'], not a token's text"),
        ({"bos_token": {"content": {"x": 1}}}, "bos_token is {'content': {'x': 1}}, not a token's text"),
        ({"pad_token": "<|nowhere|>"}, "pad_token '<|nowhere|>' is not a special token"),
        ({"chat_template": 5}, "chat_template is 5, not a template"),
    ],
)
def test_a_malformed_tokenizer_config_entry_is_a_one_line_error(capsys, base_doc, tmp_path, entry, message):
    """A list or a dict where a token's text belongs used to end the import with a TypeError traceback."""
    src = tmp_path / "src"
    _llama_like(base_doc, src)
    config = json.loads((src / "tokenizer_config.json").read_text())
    (src / "tokenizer_config.json").write_text(json.dumps({**config, **entry}))
    code, _, err = _run(capsys, "tokenizer", "import", "--hf", str(src), "--out", str(tmp_path / "out"))
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_a_tokens_dir_describes_its_tokens_not_an_imported_tokenizers_template(capsys, base_doc, tmp_path):
    """The tokens end each document with <|endoftext|> and add no begin-of-text token, so the
    tokenizer copy beside them (which every run and checkpoint carries) must say so: a model
    trained on them and generating with the source's eos (<|eot_id|>) and template would never stop
    and would be prompted with a token it never saw. (Copying the source's files, tried once,
    did exactly that.)"""
    from scratchlm.infer.text import eos_ids, prefix_ids

    src, tok_dir = tmp_path / "src", tmp_path / "tok"
    _llama_like(base_doc, src)
    code, _, err = _run(capsys, "tokenizer", "import", "--hf", str(src), "--out", str(tok_dir))
    assert code == 0, err
    (tmp_path / "doc.txt").write_text("say hello world")
    code, _, err = _run(capsys, "data", "tokenize", str(tmp_path / "doc.txt"), "--tokenizer", str(tok_dir),
                        "--out", str(tmp_path / "tokens"), "--workers", "1")
    assert code == 0, err
    copy = tmp_path / "tokens" / "tokenizer"
    tok = Tokenizer.load(copy)
    assert tok.sha256 == Tokenizer.load(tok_dir).sha256  # the same tokenizer
    assert prefix_ids(copy / "tokenizer.json", tok) == []
    assert eos_ids(tmp_path / "no_model", copy, tok) == [tok.eot_id]
    tokens = np.fromfile(tmp_path / "tokens" / "train.bin", dtype=np.uint16)
    assert tokens[-1] == tok.eot_id and tok.special_tokens["<|begin_of_text|>"] not in tokens

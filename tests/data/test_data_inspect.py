"""`data inspect`: counts, length histogram and a decoded sample of a tokens dir."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tokens_testdata import TRAIN_DOCS, VAL_DOCS, train_tiny_tokenizer, write_prepared_dir

from scratchlm.cli import main
from scratchlm.data.inspect import InspectConfig, inspect_tokens, length_histogram
from scratchlm.data.tokenize import TokenizeConfig, tokenize_dataset


@pytest.fixture(scope="module")
def tokens_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("inspect")
    train_tiny_tokenizer(base / "tokenizer")
    prepared = write_prepared_dir(base / "prepared", TRAIN_DOCS, VAL_DOCS)
    cfg = TokenizeConfig(inputs=[str(prepared)], tokenizer=str(base / "tokenizer"), out=str(base / "tokens"), workers=1)
    tokenize_dataset(cfg)
    return base / "tokens"


def test_length_histogram_uses_power_of_two_buckets() -> None:
    assert length_histogram(np.array([1, 2, 3, 4, 7, 8, 100])) == [(1, 1, 1), (2, 3, 2), (4, 7, 2), (8, 15, 1), (64, 127, 1)]
    assert length_histogram(np.zeros(0, dtype=np.int64)) == []


def test_inspect_reports_counts_histogram_and_sample(tokens_dir: Path) -> None:
    info = inspect_tokens(InspectConfig(path=str(tokens_dir), sample_chars=20))
    meta = json.loads((tokens_dir / "meta.json").read_text())
    assert info["tokenizer_note"] is None
    train = info["splits"]["train"]
    assert train["tokens"] == meta["splits"]["train"]["tokens"]
    assert train["documents"] == len(TRAIN_DOCS)
    assert sum(c for _, _, c in train["histogram"]) == len(TRAIN_DOCS)
    assert train["sample"] == TRAIN_DOCS[0][:20]
    # like `tokenizer stats`: the end-of-text marker closing each document encodes no bytes
    text_tokens = train["tokens"] - len(TRAIN_DOCS)
    assert train["bytes_per_token"] == pytest.approx(sum(len(t.encode()) for t in TRAIN_DOCS) / text_tokens)
    # the end-of-text token closes every document, so it is counted once per document
    eot = next(t for t in train["top_tokens"] if t["id"] == meta["eot_id"])
    assert eot["count"] == len(TRAIN_DOCS)
    assert train["document_tokens"]["min"] >= 2
    assert info["splits"]["val"]["documents"] == len(VAL_DOCS)


def test_cli_inspect_text_and_json(tokens_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "inspect", str(tokens_dir), "--split", "val"]) == 0
    text = capsys.readouterr().out
    assert f"{len(VAL_DOCS)} documents" in text and "[val]" in text and "[train]" not in text
    assert VAL_DOCS[0][:30] in text and "bytes/token (end-of-text left out)" in text
    assert main(["data", "inspect", str(tokens_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["splits"]) == {"train", "val"}


def test_cli_inspect_errors_are_one_line(tmp_path: Path, tokens_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no meta.json" in err and err.count("\n") == 1
    assert main(["data", "inspect", str(tokens_dir), "--split", "test"]) == 2
    assert "no 'test' split" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("tokenizer_sha256", 5, "'tokenizer_sha256' must be a string"),
        ("vocab_size", "abc", "'vocab_size' must be a positive integer"),
        ("eot_id", 10**9, "'eot_id' must be an id below vocab_size"),
        ("splits", {"train": {"tokens": "many", "documents": 3}}, "split 'train' needs 'tokens' and 'documents'"),
    ],
)
def test_cli_inspect_refuses_meta_fields_of_the_wrong_type(
    tmp_path: Path, tokens_dir: Path, capsys: pytest.CaptureFixture, key: str, value: object, message: str
) -> None:
    copy = tmp_path / "tokens"
    shutil.copytree(tokens_dir, copy)
    meta = json.loads((copy / "meta.json").read_text())
    (copy / "meta.json").write_text(json.dumps({**meta, key: value}))
    assert main(["data", "inspect", str(copy)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scratchlm: error: ") and message in err and err.count("\n") == 1


def test_one_document_and_no_splits_are_worded_so(tmp_path: Path, tokens_dir: Path, capsys) -> None:
    """`data inspect` said "1 documents"; a meta.json with no splits gave "(splits: )" and a bare header."""
    text = tmp_path / "a.txt"
    text.write_text("one short document", encoding="utf-8")
    one = tmp_path / "one"
    tokenize_dataset(TokenizeConfig(inputs=[str(text)], tokenizer=str(tokens_dir / "tokenizer"), out=str(one), workers=1))
    meta = json.loads((one / "meta.json").read_text())
    assert main(["data", "inspect", str(one)]) == 0
    assert "\n[train]  9 tokens  1 document  2.25 bytes/token" in capsys.readouterr().out
    (one / "meta.json").write_text(json.dumps({**meta, "splits": {}}))
    assert main(["data", "inspect", str(one)]) == 0
    assert capsys.readouterr().out.endswith("\nno splits\n")
    assert main(["data", "inspect", str(one), "--split", "train"]) == 2
    assert capsys.readouterr().err == f"scratchlm: error: {one}: no 'train' split (splits: none)\n"


def test_the_sample_decodes_only_the_head_of_a_long_first_document(tmp_path: Path, tokens_dir: Path) -> None:
    """A .txt input is one document: the whole of it was decoded to show `sample_chars` of it,
    memory and time in proportion to a book or a dump (here about 50 bytes a token)."""
    import tracemalloc

    from scratchlm.tokenizer import Tokenizer

    one = tmp_path / "one"
    one.mkdir()
    shutil.copytree(tokens_dir / "tokenizer", one / "tokenizer")
    meta = json.loads((tokens_dir / "meta.json").read_text())
    n = 1_000_000
    ids = (np.arange(n) % 50 + 257).astype(np.uint16)  # merged tokens: many bytes, ints Python allocates
    ids[-1] = meta["eot_id"]
    ids.tofile(one / "train.bin")
    np.zeros(1, dtype=np.int64).tofile(one / "train.idx")
    (one / "meta.json").write_text(json.dumps({**meta, "splits": {"train": {"tokens": n, "documents": 1}}}))
    expected = Tokenizer.load(one / "tokenizer").decode(ids[:1000].tolist())[:50]
    tracemalloc.start()
    try:
        info = inspect_tokens(InspectConfig(path=str(one), sample_chars=50, top_tokens=3))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info["splits"]["train"]["sample"] == expected and len(expected) == 50
    assert peak < 16 * n  # the token count's chunk, not a list and a string of the whole document


def test_tokens_that_are_part_of_a_character_are_told_apart(tokens_dir: Path, capsys: pytest.CaptureFixture) -> None:
    """Byte tokens of multi-byte characters (the CJK and emoji of TRAIN_DOCS) all read '\ufffd'."""
    info = inspect_tokens(InspectConfig(path=str(tokens_dir), split="train", top_tokens=320))
    partial = [t for t in info["splits"]["train"]["top_tokens"] if t["partial_utf8"]]
    assert len(partial) > 1 and len({t["text"] for t in partial}) == len(partial)
    lead = next(t for t in partial if t["id"] == 0xC3)  # a lone byte token is its byte: the lead of é, ü, ö
    assert lead["text"] == "\\xc3"
    assert main(["data", "inspect", str(tokens_dir), "--split", "train", "--top-tokens", "320"]) == 0
    out = capsys.readouterr().out
    assert "195 \\xc3 (bytes of a partial UTF-8 character) ×" in out and "\ufffd" not in out.split("first document:")[0]
    assert '32 " " ×' in out


def test_a_median_document_length_of_millions_is_shown_exactly(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The median was formatted with `:g`, six digits: 1000001.5 tokens read "median 1e+06"."""
    lengths = [1_000_001, 1_000_002]
    (tmp_path / "meta.json").write_text(json.dumps({
        "dtype": "uint16", "vocab_size": 256, "tokenizer_sha256": "ab" * 32, "eot_id": 0,
        "splits": {"train": {"tokens": sum(lengths), "documents": 2}},
    }))
    np.ones(sum(lengths), dtype=np.uint16).tofile(tmp_path / "train.bin")
    np.array([0, lengths[0]], dtype=np.int64).tofile(tmp_path / "train.idx")
    assert main(["data", "inspect", str(tmp_path)]) == 0
    assert "document tokens: min 1000001  median 1000001.5  mean 1000001.5  max 1000002" in capsys.readouterr().out

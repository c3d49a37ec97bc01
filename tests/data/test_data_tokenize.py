"""`data tokenize`: ordered, parallel, self-contained and atomic tokens dirs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokens_testdata import TRAIN_DOCS, VAL_DOCS, train_tiny_tokenizer, write_prepared_dir

from scratchlm.cli import main
from scratchlm.data.loader import TokenDataset
from scratchlm.data.tokenize import APPEND_MARKER, TokenizeConfig, dtype_for_vocab, tokenize_dataset
from scratchlm.errors import DataError
from scratchlm.tokenizer import Tokenizer

FILES = ("train.bin", "train.idx", "val.bin", "val.idx", "meta.json")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tiny_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_prepared_dir(tmp_path_factory.mktemp("prep") / "prepared", TRAIN_DOCS, VAL_DOCS)


def run(inputs, tokenizer_dir: Path, out: Path, **kw) -> dict:
    cfg = TokenizeConfig(inputs=[str(p) for p in inputs], tokenizer=str(tokenizer_dir), out=str(out), **kw)
    return tokenize_dataset(cfg)


def read_all(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in FILES}


def test_one_and_two_workers_write_identical_bytes(tmp_path: Path, prepared: Path, tokenizer_dir: Path) -> None:
    run([prepared], tokenizer_dir, tmp_path / "w1", workers=1, chunk_chars=200)
    run([prepared], tokenizer_dir, tmp_path / "w2", workers=2, chunk_chars=200)
    one, two = read_all(tmp_path / "w1"), read_all(tmp_path / "w2")
    assert one == two
    assert len(one["train.idx"]) == 8 * len(TRAIN_DOCS)


def test_documents_decode_back_between_offsets(tmp_path: Path, prepared: Path, tokenizer_dir: Path) -> None:
    meta = run([prepared], tokenizer_dir, tmp_path / "out", workers=1, chunk_chars=100)
    tok = Tokenizer.load(tokenizer_dir)
    for split, docs in (("train", TRAIN_DOCS), ("val", VAL_DOCS)):
        ds = TokenDataset.open(tmp_path / "out", split)
        assert ds.num_documents == len(docs) == meta["splits"][split]["documents"]
        assert len(ds) == meta["splits"][split]["tokens"]
        for i, text in enumerate(docs):
            ids = ds.document(i).tolist()
            assert ids[-1] == tok.eot_id
            assert tok.eot_id not in ids[:-1]  # "<|endoftext|>" inside a text stays plain text
            assert tok.decode(ids[:-1]) == text
        assert meta["splits"][split]["bytes"] == sum(len(t.encode()) for t in docs)


def test_meta_and_tokenizer_copy(tmp_path: Path, prepared: Path, tokenizer_dir: Path) -> None:
    meta = run([prepared], tokenizer_dir, tmp_path / "out", workers=1)
    tok = Tokenizer.load(tokenizer_dir)
    on_disk = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert on_disk == meta
    assert meta["dtype"] == "uint16"
    assert meta["vocab_size"] == tok.vocab_size and meta["eot_id"] == tok.eot_id
    assert meta["tokenizer_sha256"] == tok.sha256
    copy = Tokenizer.load(tmp_path / "out" / "tokenizer")
    assert copy.sha256 == tok.sha256
    assert (tmp_path / "out" / "tokenizer" / "tokenizer_config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_dtype_follows_vocab_size() -> None:
    assert dtype_for_vocab(50257) == "uint16"
    assert dtype_for_vocab(65536) == "uint16"
    assert dtype_for_vocab(65537) == "uint32"


def test_raw_inputs_split_every_nth_document(tmp_path: Path, tokenizer_dir: Path) -> None:
    lines = [{"text": f"record number {i} with some words"} for i in range(10)]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    meta = run([jsonl], tokenizer_dir, tmp_path / "out", workers=1, val_every=4)
    assert meta["splits"]["train"]["documents"] == 8 and meta["splits"]["val"]["documents"] == 2
    tok = Tokenizer.load(tokenizer_dir)
    val = TokenDataset.open(tmp_path / "out", "val")
    assert [tok.decode(val.document(i).tolist()[:-1]) for i in range(2)] == [lines[3]["text"], lines[7]["text"]]


def test_append_equals_tokenizing_everything_at_once(tmp_path: Path, tokenizer_dir: Path) -> None:
    a = write_prepared_dir(tmp_path / "a", TRAIN_DOCS[:20], VAL_DOCS[:2])
    b = write_prepared_dir(tmp_path / "b", TRAIN_DOCS[20:], VAL_DOCS[2:])
    run([a], tokenizer_dir, tmp_path / "grown", workers=1)
    grown = run([b], tokenizer_dir, tmp_path / "grown", workers=2, append=True)
    whole = run([a, b], tokenizer_dir, tmp_path / "whole", workers=1)
    assert read_all(tmp_path / "grown") == read_all(tmp_path / "whole")
    assert grown == whole
    assert not (tmp_path / "grown" / APPEND_MARKER).exists()


def test_append_refuses_another_tokenizer(tmp_path: Path, prepared: Path, tokenizer_dir: Path) -> None:
    run([prepared], tokenizer_dir, tmp_path / "out", workers=1)
    other = tmp_path / "other-tok"
    Tokenizer.train(["completely different text " * 50], vocab_size=280).save(other)
    before = read_all(tmp_path / "out")
    with pytest.raises(DataError, match="tokenizer sha256"):
        run([prepared], other, tmp_path / "out", workers=1, append=True)
    assert read_all(tmp_path / "out") == before


def test_failed_run_leaves_no_meta_and_old_data_intact(tmp_path: Path, prepared: Path, tokenizer_dir: Path) -> None:
    broken = write_prepared_dir(tmp_path / "broken", TRAIN_DOCS, VAL_DOCS)
    (broken / "train" / "part-00001.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="part-00001.parquet"):
        run([broken], tokenizer_dir, tmp_path / "fresh", workers=2, chunk_chars=50)
    assert not (tmp_path / "fresh").exists()
    assert not list(tmp_path.glob(".fresh*"))
    # a failure deep in the stream, while workers are busy with earlier chunks
    jsonl = tmp_path / "late-error.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in TRAIN_DOCS) + "{broken json\n")
    with pytest.raises(DataError, match=f"late-error.jsonl.*{len(TRAIN_DOCS) + 1}"):
        run([jsonl], tokenizer_dir, tmp_path / "fresh", workers=2, chunk_chars=50)
    assert not (tmp_path / "fresh").exists()
    assert not list(tmp_path.glob(".fresh*"))
    nulls = write_prepared_dir(tmp_path / "nulls", ["fine", "also fine"], [])
    pq.write_table(pa.table({"text": ["ok", None], "source": ["a", "b"]}), nulls / "train" / "part-00001.parquet")
    with pytest.raises(DataError, match="part-00001.parquet: the 'text' column has null values"):
        run([nulls], tokenizer_dir, tmp_path / "fresh", workers=1)
    assert not (tmp_path / "fresh").exists()
    # a failed re-run keeps the previous complete dataset; a failed append rolls back
    run([prepared], tokenizer_dir, tmp_path / "out", workers=1)
    before = read_all(tmp_path / "out")
    with pytest.raises(DataError):
        run([broken], tokenizer_dir, tmp_path / "out", workers=1)
    assert read_all(tmp_path / "out") == before
    with pytest.raises(DataError):
        run([broken], tokenizer_dir, tmp_path / "out", workers=1, append=True, chunk_chars=50)
    assert read_all(tmp_path / "out") == before
    assert not (tmp_path / "out" / APPEND_MARKER).exists()


def test_append_after_a_crash_rolls_the_half_append_back(tmp_path: Path, prepared: Path, tokenizer_dir: Path) -> None:
    out = tmp_path / "out"
    run([prepared], tokenizer_dir, out, workers=1)
    before = read_all(out)
    # what a killed append leaves: meta.json moved aside, files grown past the recorded sizes
    os.replace(out / "meta.json", out / APPEND_MARKER)
    with open(out / "train.bin", "ab") as f:
        f.write(b"\x01\x00" * 7)
    with pytest.raises(DataError, match="append to this tokens dir was interrupted; re-run .* with --append"):
        TokenDataset.open(out, "train")
    extra = write_prepared_dir(tmp_path / "extra", ["one more"], [])
    meta = run([extra], tokenizer_dir, out, workers=1, append=True)
    assert meta["splits"]["train"]["documents"] == len(TRAIN_DOCS) + 1
    after = read_all(out)
    assert after["train.bin"].startswith(before["train.bin"]) and after["val.bin"] == before["val.bin"]
    assert TokenDataset.open(out, "train").document(-1).size > 1


def test_refuses_to_replace_a_directory_that_is_not_a_tokens_dir(
    tmp_path: Path, prepared: Path, tokenizer_dir: Path
) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a tokens dir"):
        run([prepared], tokenizer_dir, precious, workers=1)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_cli_tokenize(tmp_path: Path, prepared: Path, tokenizer_dir: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "tokens"
    code = main(["data", "tokenize", str(prepared), "--tokenizer", str(tokenizer_dir), "--out", str(out),
                 "--workers", "1", "--set", "chunk_chars=64"])
    assert code == 0
    assert f"{len(TRAIN_DOCS)} documents" in capsys.readouterr().err
    assert np.fromfile(out / "train.idx", dtype=np.int64)[0] == 0
    code = main(["data", "tokenize", str(tmp_path / "missing"), "--tokenizer", str(tokenizer_dir), "--out",
                 str(tmp_path / "x")])
    assert code == 2
    assert "input not found" in capsys.readouterr().err


def decoded(out: Path, split: str, tokenizer_dir: Path) -> list[str]:
    tok = Tokenizer.load(tokenizer_dir)
    ds = TokenDataset.open(out, split)
    return [tok.decode(ds.document(i).tolist()[:-1]) for i in range(ds.num_documents)]


def test_prepared_dir_beside_raw_inputs_keeps_its_split_and_drops_nothing(
    tmp_path: Path, prepared: Path, tokenizer_dir: Path
) -> None:
    raw = [f"raw document {i}" for i in range(6)]
    first, second = tmp_path / "first.txt", tmp_path / "second.jsonl"
    first.write_text(raw[0])
    second.write_text("".join(json.dumps({"text": t}) + "\n" for t in raw[1:]))
    out = tmp_path / "out"
    run([first, prepared, second], tokenizer_dir, out, workers=1, val_every=3, chunk_chars=100)
    # raw documents: every 3rd of them, counted across both raw inputs, goes to val
    assert decoded(out, "train", tokenizer_dir) == [raw[0], *TRAIN_DOCS, raw[1], raw[3], raw[4]]
    assert decoded(out, "val", tokenizer_dir) == [*VAL_DOCS, raw[2], raw[5]]


def test_refuses_an_output_inside_an_input_before_any_work(
    tmp_path: Path, prepared: Path, tokenizer_dir: Path
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("some text")
    with pytest.raises(DataError, match="is inside the input"):
        run([corpus], tokenizer_dir, corpus / "tokens", workers=1)
    assert sorted(p.name for p in corpus.iterdir()) == ["a.txt"]
    # an append into a tokens dir inside an input is refused the same way, leaving it untouched
    run([prepared], tokenizer_dir, corpus / "tokens", workers=1)
    before = read_all(corpus / "tokens")
    with pytest.raises(DataError, match="is inside the input"):
        run([corpus], tokenizer_dir, corpus / "tokens", workers=1, append=True)
    assert read_all(corpus / "tokens") == before


def test_a_plain_run_replaces_a_dir_left_by_an_interrupted_append(
    tmp_path: Path, prepared: Path, tokenizer_dir: Path
) -> None:
    out = tmp_path / "out"
    run([prepared], tokenizer_dir, out, workers=1)
    before = read_all(out)
    os.replace(out / "meta.json", out / APPEND_MARKER)  # what a killed append leaves
    run([prepared], tokenizer_dir, out, workers=1)
    assert read_all(out) == before and not (out / APPEND_MARKER).exists()


def test_cli_hf_split_reads_the_named_split(tmp_path: Path, tokenizer_dir: Path) -> None:
    from tokens_testdata import save_validation_only

    saved = save_validation_only(tmp_path / "dict", VAL_DOCS)
    out = tmp_path / "tokens"
    code = main(["data", "tokenize", f"hf:{saved}", "--tokenizer", str(tokenizer_dir), "--out", str(out),
                 "--workers", "1", "--hf-split", "validation", "--val-every", "0"])  # fmt: skip
    assert code == 0
    assert decoded(out, "train", tokenizer_dir) == VAL_DOCS


def test_prepared_datasets_inside_a_directory_input_keep_their_split(tmp_path: Path, tokenizer_dir: Path) -> None:
    corpus = tmp_path / "corpus"
    write_prepared_dir(corpus / "a", TRAIN_DOCS[:5], VAL_DOCS[:1])
    write_prepared_dir(corpus / "b", TRAIN_DOCS[5:10], VAL_DOCS[1:])
    raw = [f"raw document {i}" for i in range(4)]
    (corpus / "z").mkdir()
    for i, text in enumerate(raw):  # two before the prepared datasets (files first), two after
        (corpus / ("" if i < 2 else "z") / f"r{i}.txt").write_text(text)
    out = tmp_path / "out"
    run([corpus], tokenizer_dir, out, workers=1, val_every=2, chunk_chars=100)
    # no val document reaches train; raw documents alone are numbered for --val-every
    assert decoded(out, "train", tokenizer_dir) == [raw[0], *TRAIN_DOCS[:10], raw[2]]
    assert decoded(out, "val", tokenizer_dir) == [raw[1], *VAL_DOCS, raw[3]]


def test_refuses_an_output_inside_a_local_hf_dataset(tmp_path: Path, tokenizer_dir: Path) -> None:
    from tokens_testdata import save_validation_only

    saved = save_validation_only(tmp_path / "dict", VAL_DOCS)
    before = sorted(p.name for p in saved.iterdir())
    with pytest.raises(DataError, match="is inside the input"):
        run([f"hf:{saved}"], tokenizer_dir, saved / "tokens", workers=1, hf_split="validation")
    assert sorted(p.name for p in saved.iterdir()) == before


def test_cli_an_empty_archive_is_one_line_error(
    tmp_path: Path, tokenizer_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    empty = tmp_path / "empty.txt.zst"
    empty.write_bytes(b"")
    out = tmp_path / "tokens"
    code = main(["data", "tokenize", str(empty), "--tokenizer", str(tokenizer_dir), "--out", str(out),
                 "--workers", "1"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "empty.txt.zst: cannot read: the file is empty, a truncated .zst archive" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_inputs_without_a_document_are_refused_and_an_append_of_nothing_changes_nothing(
    tmp_path: Path, prepared: Path, tokenizer_dir: Path
) -> None:
    """An empty input used to make a complete-looking tokens dir of 0 tokens; `data prepare`
    refuses the same inputs."""
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="no documents found in the inputs: .*empty.jsonl"):
        run([tmp_path / "empty.jsonl"], tokenizer_dir, tmp_path / "tokens")
    assert not (tmp_path / "tokens").exists()
    run([prepared], tokenizer_dir, tmp_path / "tokens")
    before = read_all(tmp_path / "tokens")
    with pytest.raises(DataError, match="no documents found"):
        run([tmp_path / "empty.jsonl"], tokenizer_dir, tmp_path / "tokens", append=True)
    assert read_all(tmp_path / "tokens") == before and not (tmp_path / "tokens" / APPEND_MARKER).exists()


def test_empty_texts_are_not_documents(tmp_path: Path, tokenizer_dir: Path, capsys: pytest.CaptureFixture) -> None:
    """An empty .txt made a complete-looking tokens dir of one lone <|endoftext|>, and an empty
    JSON record a document of nothing; `data prepare` drops both."""
    (tmp_path / "empty.txt").write_text("")
    args = ["--tokenizer", str(tokenizer_dir), "--workers", "1", "--val-every", "2"]
    assert main(["data", "tokenize", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "none"), *args]) == 2
    assert "no documents found" in capsys.readouterr().err and not (tmp_path / "none").exists()
    texts = ["one", "", "two", "three", ""]
    (tmp_path / "some.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    assert main(["data", "tokenize", str(tmp_path / "some.jsonl"), "--out", str(tmp_path / "out"), *args]) == 0
    assert decoded(tmp_path / "out", "train", tokenizer_dir) == ["one", "three"]
    assert decoded(tmp_path / "out", "val", tokenizer_dir) == ["two"]
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["raw_documents"] == 3


@pytest.mark.parametrize("workers", [1, 2])
def test_a_million_blanks_tokenize_in_a_worker_or_not(tmp_path: Path, tokenizer_dir: Path, workers: int) -> None:
    """tiktoken's regex engine overflowed on them: a Rust panic, unpicklable from a worker."""
    text = "a" + " \t" * 500_000 + "b"
    (tmp_path / "blanks.txt").write_text(text)
    run([tmp_path / "blanks.txt"], tokenizer_dir, tmp_path / "out", workers=workers, val_every=0)
    assert decoded(tmp_path / "out", "train", tokenizer_dir) == [text]


def _raw_files(tmp_path: Path) -> list[Path]:
    """Three JSONL files of three documents each: one at a time, none reaches every 4th alone."""
    paths = []
    for f in range(3):
        path = tmp_path / f"f{f}.jsonl"
        path.write_text("".join(json.dumps({"text": f"document {f}.{i}"}) + "\n" for i in range(3)))
        paths.append(path)
    return paths


@pytest.mark.parametrize("old_meta", [False, True])
def test_appending_raw_files_one_by_one_splits_them_as_tokenizing_them_together(
    tmp_path: Path, tokenizer_dir: Path, old_meta: bool
) -> None:
    """The val_every count restarted at 0 on every append, so val stayed empty. A meta.json from
    before `raw_documents` was kept continues from its document count."""
    files = _raw_files(tmp_path)
    whole = run(files, tokenizer_dir, tmp_path / "whole", workers=1, val_every=4)
    grown = tmp_path / "grown"
    run(files[:1], tokenizer_dir, grown, workers=1, val_every=4)
    if old_meta:
        meta = json.loads((grown / "meta.json").read_text())
        del meta["raw_documents"]
        (grown / "meta.json").write_text(json.dumps(meta))
    for path in files[1:]:
        meta = run([path], tokenizer_dir, grown, workers=1, val_every=4, append=True)
    assert decoded(grown, "val", tokenizer_dir) == ["document 1.0", "document 2.1"]
    assert read_all(grown) == read_all(tmp_path / "whole") and meta == whole
    assert meta["raw_documents"] == 9


def test_a_bad_raw_document_count_is_refused_before_appending(tmp_path: Path, tokenizer_dir: Path) -> None:
    files = _raw_files(tmp_path)
    out = tmp_path / "out"
    run(files[:1], tokenizer_dir, out, workers=1)
    before = read_all(out)
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "raw_documents": -1}))
    with pytest.raises(DataError, match="'raw_documents' must be a whole number"):
        run(files[1:], tokenizer_dir, out, workers=1, append=True)
    assert {k: v for k, v in read_all(out).items() if k != "meta.json"} == {
        k: v for k, v in before.items() if k != "meta.json"
    }


@pytest.mark.parametrize("extra", ["metrics.jsonl", "checkpoints/step_1.pt", ".cache/x", "tokenizer/notes.txt"])
def test_a_tokens_dir_that_also_holds_other_things_is_not_replaced(
    tmp_path: Path, prepared: Path, tokenizer_dir: Path, capsys: pytest.CaptureFixture, extra: str
) -> None:
    """A pretrain run written into a tokens dir was deleted with it by the next tokenize."""
    out = tmp_path / "out"
    run([prepared], tokenizer_dir, out, workers=1)
    (out / extra).parent.mkdir(exist_ok=True)
    (out / extra).write_text("keep me")
    argv = ["data", "tokenize", str(prepared), "--tokenizer", str(tokenizer_dir), "--out", str(out), "--workers", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "exists and is not a tokens directory" in err and len(err.strip().splitlines()) == 1
    assert (out / extra).read_text() == "keep me"
    meta = run([prepared], tokenizer_dir, out, workers=1, append=True)  # growing it loses nothing
    assert meta["splits"]["train"]["documents"] == 2 * len(TRAIN_DOCS) and (out / extra).exists()


def test_a_tokens_dir_with_hidden_files_is_still_replaced(tmp_path: Path, prepared: Path, tokenizer_dir: Path) -> None:
    out = tmp_path / "out"
    run([prepared], tokenizer_dir, out, workers=1)
    before = read_all(out)
    (out / ".DS_Store").write_text("finder")
    (out / "tokenizer" / ".DS_Store").write_text("finder")
    run([prepared], tokenizer_dir, out, workers=1)
    assert read_all(out) == before and not (out / ".DS_Store").exists()


def test_hidden_parquet_files_in_a_prepared_split_are_not_parts(tmp_path: Path, tokenizer_dir: Path) -> None:
    """An editor's or sync tool's hidden copy of a part used to be read as a part: its documents twice."""
    prepared = write_prepared_dir(tmp_path / "prepared", TRAIN_DOCS, VAL_DOCS)
    part = next((prepared / "train").glob("*.parquet"))
    (prepared / "train" / f".{part.name}").write_bytes(part.read_bytes())  # a backup copy
    (prepared / "train" / f"._{part.name}").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    meta = run([prepared], tokenizer_dir, tmp_path / "out", workers=1)
    assert meta["splits"]["train"]["documents"] == len(TRAIN_DOCS)
    assert decoded(tmp_path / "out", "train", tokenizer_dir) == list(TRAIN_DOCS)


def _replace_part(prepared: Path, table: pa.Table) -> Path:
    part = next((prepared / "train").glob("*.parquet"))
    pq.write_table(table, part)
    return part


@pytest.mark.parametrize("workers", [1, 2])
def test_a_foreign_prepared_part_is_a_one_line_error(
    tmp_path: Path, tokenizer_dir: Path, capsys: pytest.CaptureFixture, workers: int
) -> None:
    """A part without a `text` column, or whose strings are not UTF-8 (Arrow writers need not check),
    used to end `data tokenize` with a Python traceback; `data prepare` said only "index out of bounds"."""
    raw = pa.array([b"hello there", b"bad \xff byte"], pa.binary())
    not_utf8 = pa.StringArray.from_buffers(2, raw.buffers()[1], raw.buffers()[2])  # unvalidated strings
    cases = {
        "a prepared part needs a 'text' column (it has: body, source)": pa.table({"body": ["a"], "source": ["s"]}),
        "the 'text' column holds bytes that are not UTF-8 text": pa.table({"text": not_utf8, "source": ["s", "s"]}),
    }
    for i, (message, table) in enumerate(cases.items()):
        prepared = write_prepared_dir(tmp_path / f"prepared{i}", TRAIN_DOCS, VAL_DOCS)
        part = _replace_part(prepared, table)
        for argv in (
            ["data", "tokenize", str(prepared), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / f"t{i}"),
             "--workers", str(workers)],
            ["data", "prepare", str(prepared), "--out", str(tmp_path / f"p{i}"), "--workers", str(workers)],
        ):
            assert main(argv) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert err == [f"scratchlm: error: {part}: {message}"]
            assert not (tmp_path / f"t{i}").exists() and not (tmp_path / f"p{i}").exists()


def test_a_prepared_part_without_a_source_column_is_read(tmp_path: Path, tokenizer_dir: Path) -> None:
    prepared = write_prepared_dir(tmp_path / "prepared", TRAIN_DOCS, VAL_DOCS)
    part = _replace_part(prepared, pa.table({"text": ["a document with no source of its own"]}))
    assert main(["data", "prepare", str(prepared), "--out", str(tmp_path / "p"), "--workers", "1", "--no-filters"]) == 0
    rows = pq.read_table(tmp_path / "p" / "train").to_pylist() + pq.read_table(tmp_path / "p" / "val").to_pylist()
    assert {"text": "a document with no source of its own", "source": str(part)} in rows  # named after its part


@pytest.mark.parametrize("first_write", [False, True])
def test_a_second_run_into_a_tokens_dir_being_written_is_refused(
    tmp_path: Path, prepared: Path, tokenizer_dir: Path, capsys: pytest.CaptureFixture, first_write: bool
) -> None:
    """A second append used to take a live append's moved-aside meta.json for a dead one's, cut its
    files back while it wrote, and leave a meta.json counting tokens that were not on disk. A first
    write took no lock at all (there was no directory yet): a second run wrote its own tokens dir
    there, which the first then replaced, exit 0 both."""
    import subprocess
    import sys
    import time

    if not hasattr(os, "mkfifo"):
        pytest.skip("needs a named pipe (POSIX) to hold the first run mid-way")
    out = tmp_path / "tokens"
    if not first_write:
        run([prepared], tokenizer_dir, out, workers=1)
    source = tmp_path / "slow.txt"
    os.mkfifo(source)  # the first run waits here until the test writes its document
    first = subprocess.Popen(
        [sys.executable, "-m", "scratchlm", "data", "tokenize", str(source), "--tokenizer", str(tokenizer_dir),
         "--out", str(out), "--workers", "1", *([] if first_write else ["--append"])],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )

    def under_way() -> bool:  # the first run is writing: its temp dir, or its append marker
        return bool(list(tmp_path.glob(".tokens.*.partial"))) if first_write else (out / APPEND_MARKER).exists()

    try:
        deadline = time.monotonic() + 60
        while not under_way():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        extra = write_prepared_dir(tmp_path / "extra", ["a second writer's document"], [])
        busy = f"scratchlm: error: {out}: another `data tokenize` is writing this tokens dir now; wait for it to finish"
        for append in (["--append"], []):  # neither an append nor a replacement may go on
            argv = ["data", "tokenize", str(extra), "--tokenizer", str(tokenizer_dir), "--out", str(out), "--workers", "1"]
            assert main(argv + append) == 2
            assert capsys.readouterr().err.strip().splitlines() == [busy]
        with open(source, "w") as pipe:
            pipe.write("the first writer's document")
        _, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    documents = decoded(out, "train", tokenizer_dir)
    assert documents == (["the first writer's document"] if first_write else [*TRAIN_DOCS, "the first writer's document"])


def test_a_first_write_that_fails_leaves_no_directory(tmp_path: Path, tokenizer_dir: Path) -> None:
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(DataError):
        run([tmp_path / "bad.jsonl"], tokenizer_dir, tmp_path / "new" / "tokens", workers=1)
    assert not (tmp_path / "new" / "tokens").exists()


def test_encoding_arrow_text_counts_bytes_without_importing_pandas():
    """Arrow's lengths made into numpy imported pandas in each worker's first chunk: 0.15 s later
    to start and about 40 MB more per worker. Run apart: this process may hold pandas already."""
    import subprocess
    import sys

    probe = (
        "import array, sys; import pyarrow as pa\n"
        "from scratchlm.data.tokenize import encode_texts\n"
        "from scratchlm.tokenizer import Tokenizer\n"
        "tok = Tokenizer.train(['plain words and more words ' * 20], vocab_size=280)\n"
        # From raw buffers, as a parquet read makes it: pa.array() of a list imports pandas itself.
        "data = 'h\\u00e9llo' + 'w\\u00f6rld \\U0001f600'\n"
        "offsets = pa.py_buffer(array.array('i', [0, 6, 17, 17]).tobytes())\n"
        "texts = pa.StringArray.from_buffers(3, offsets, pa.py_buffer(data.encode()))\n"
        "assert 'pandas' not in sys.modules\n"
        "enc = encode_texts(tok, texts, 'uint16')\n"
        "print(enc.nbytes.tolist(), 'pandas' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[6,", "11,", "0]", "False"]


def test_counts_are_worded_for_one_and_an_append_into_a_new_dir_claims_no_earlier_data(
    tmp_path: Path, tokenizer_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    """`data tokenize` said "1 documents", and "(counts include the data already there)" after an
    --append that made a new tokens dir, where nothing was there."""
    text = tmp_path / "a.txt"
    text.write_text("one short document", encoding="utf-8")
    out = tmp_path / "tokens"
    argv = ["data", "tokenize", str(text), "--tokenizer", str(tokenizer_dir), "--out", str(out), "--workers", "1",
            "--val-every", "0", "--append"]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"wrote {out}: train 9 tokens / 1 document; val 0 tokens / 0 documents (uint16) in " in err
    assert "already there" not in err
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"wrote {out}: train 18 tokens / 2 documents; val 0 tokens / 0 documents (uint16) in " in err
    assert err.endswith("\n(counts include the data already there)\n")

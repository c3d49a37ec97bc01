"""Sources: every input kind yields its documents in order; every bad input is one clear error."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from tokens_testdata import save_validation_only, train_tiny_tokenizer

from scratchlm.cli import main
from scratchlm.data.sources import (
    SourceOptions,
    SourceStats,
    iter_documents,
    local_input_paths,
    write_prepared_dir,
)
from scratchlm.errors import DataError


def texts(inputs, **options) -> list[str]:
    return [d.text for d in iter_documents([str(i) for i in inputs], SourceOptions(**options))]


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_txt_is_one_document_or_split_on_a_separator(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first doc\n\nsecond doc\n\nthird", encoding="utf-8")
    assert texts([path]) == ["first doc\n\nsecond doc\n\nthird"]
    assert texts([path], separator="\n\n") == ["first doc", "second doc", "third"]


def test_separator_split_streams_across_read_chunks(tmp_path, monkeypatch):
    import scratchlm.data.sources as sources

    monkeypatch.setattr(sources, "_TEXT_CHUNK", 7)
    path = tmp_path / "a.txt"
    path.write_text("alpha<|sep|>beta gamma<|sep|>delta", encoding="utf-8")
    assert texts([path], separator="<|sep|>") == ["alpha", "beta gamma", "delta"]


@pytest.mark.parametrize("chunk", [3, 1 << 20])
def test_a_separator_typed_with_newlines_splits_windows_files_too(tmp_path, monkeypatch, chunk):
    """CRLF files were one document under --separator '\\n\\n': the split ran on the raw bytes,
    before cleaning turns CRLF into LF. Small chunks put a CR and its LF in different reads."""
    import scratchlm.data.sources as sources

    monkeypatch.setattr(sources, "_TEXT_CHUNK", chunk)
    path = tmp_path / "windows.txt"
    path.write_bytes(b"first doc\r\nline two\r\n\r\nsecond doc\n\nthird\r\n===\r\nfourth")
    assert texts([path], separator="\n\n") == ["first doc\r\nline two", "second doc", "third\r\n===\r\nfourth"]
    assert texts([path], separator="\n===\n") == ["first doc\r\nline two\r\n\r\nsecond doc\n\nthird", "fourth"]
    path.write_bytes(b"a\r\r\nb\r\nc\nd")  # a separator typed as CRLF is one line end too
    assert texts([path], separator="\r\n") == ["a\r", "b", "c", "d"]


def test_jsonl_json_and_parquet_with_configurable_field(tmp_path):
    jsonl = write_jsonl(tmp_path / "a.jsonl", [{"body": "one"}, {"body": "two"}])
    js = tmp_path / "b.json"
    js.write_text(json.dumps([{"body": "three"}, {"body": "four"}]), encoding="utf-8")
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": ["five", "six"], "id": [1, 2]}), parquet)
    assert texts([jsonl, js, parquet], text_field="body") == ["one", "two", "three", "four", "five", "six"]


def test_compressed_files(tmp_path):
    gz = tmp_path / "a.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"text": "from gzip"}\n{"text": "again"}\n'))
    zst = tmp_path / "b.txt.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(b"from zstd"))
    assert texts([gz, zst]) == ["from gzip", "again", "from zstd"]


def test_directories_recursive_sorted_with_include_and_exclude(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("b")
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "sub" / "c.txt").write_text("c")
    (tmp_path / "sub" / "skip.txt").write_text("skip")
    (tmp_path / "notes.md").write_text("markdown")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    assert texts([tmp_path]) == ["a", "b", "c", "skip"]
    assert texts([tmp_path], exclude=["skip*"]) == ["a", "b", "c"]
    assert texts([tmp_path], include=["*.md", "sub/*"]) == ["markdown", "c", "skip"]


def test_invalid_utf8_is_replaced_and_flagged(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good \xff\xfe bytes")
    (doc,) = iter_documents([str(path)])
    assert doc.text == "good \ufffd\ufffd bytes"
    assert doc.invalid_utf8


def test_prepared_directory_reads_its_splits(tmp_path):
    out = tmp_path / "prepared"
    for split, rows in (("train", ["t1", "t2"]), ("val", ["v1"])):
        (out / split).mkdir(parents=True)
        pq.write_table(
            pa.table({"text": rows, "source": ["s"] * len(rows)}), out / split / "part-00000.parquet"
        )
    (out / "stats.json").write_text("{}")
    assert texts([out]) == ["t1", "t2", "v1"]  # all by default: re-preparing it loses nothing
    assert texts([out], split="train") == ["t1", "t2"]
    assert texts([out], split="val") == ["v1"]
    assert texts([out], split="all") == ["t1", "t2", "v1"]


def test_hf_dataset_saved_to_disk_and_local_data_files(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"content": ["hf one", "hf two"]}).save_to_disk(str(saved))
    files = tmp_path / "files"
    files.mkdir()
    write_jsonl(files / "train.jsonl", [{"content": "local one"}, {"content": "local two"}])
    assert texts([f"hf:{saved}", f"hf:{files}"], text_field="content") == [
        "hf one",
        "hf two",
        "local one",
        "local two",
    ]
    with pytest.raises(DataError, match="no column 'text'"):
        texts([f"hf:{saved}"])


def test_a_streamed_hf_dataset_that_fails_while_read_is_a_data_error(tmp_path, monkeypatch):
    """A streamed dataset reads its files while iterated, outside the load's error handling: a bad
    line came out as pyarrow's traceback."""
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    files = tmp_path / "files"
    files.mkdir()
    (files / "train.jsonl").write_text('{"text": "a"}\n{"text": "b"\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"hf:.*files: cannot read dataset"):
        texts([f"hf:{files}"])


def test_bad_jsonl_lines_name_file_and_line_or_are_counted(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": "ok"}])
    with open(path, "a") as f:
        f.write("{not json\n")
        f.write(json.dumps({"body": "no text field"}) + "\n")
        f.write(json.dumps({"text": 3}) + "\n")
        f.write(json.dumps({"text": "last"}) + "\n")
    with pytest.raises(DataError, match=r"a\.jsonl:2: not valid JSON"):
        texts([path])
    stats = SourceStats()
    docs = list(iter_documents([str(path)], SourceOptions(skip_bad_records=True), stats))
    assert [d.text for d in docs] == ["ok", "last"]
    assert stats.bad_records == 3
    assert "a.jsonl:3: no field 'text'" in stats.bad_record_messages[1]
    assert "a.jsonl:4: field 'text' is int" in stats.bad_record_messages[2]


def test_missing_field_error_names_line(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": "ok"}, {"content": "x"}])
    with pytest.raises(DataError, match=r"a\.jsonl:2: no field 'text' \(keys: content\)"):
        texts([path])


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("broken.jsonl.gz", b"not gzip at all", "cannot read"),
        ("broken.txt.zst", b"not zstd at all", "cannot read"),
        ("broken.parquet", b"not parquet", "not a readable parquet file"),
        ("broken.json", b"[1, 2", "not valid JSON"),
        ("data.bin", b"\x00\x01", "unsupported file type"),
        # one layer is decompressed: the inner zstd frame used to be read as one garbage document
        ("twice.txt.zst.gz", gzip.compress(zstandard.ZstdCompressor().compress(b"text"), mtime=0), "unsupported file type"),
        ("twice.jsonl.gz.zst", zstandard.ZstdCompressor().compress(gzip.compress(b"{}", mtime=0)), "unsupported file type"),
    ],
)
def test_unreadable_files_give_one_clear_error(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        texts([path])
    assert name in str(info.value) and "\n" not in str(info.value)


def test_missing_path_empty_directory_and_no_inputs(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        texts([tmp_path / "missing.txt"])
    with pytest.raises(DataError, match="no files matching"):
        texts([tmp_path])
    with pytest.raises(DataError, match="no inputs"):
        texts([])
    with pytest.raises(DataError, match="unknown built-in corpus"):
        texts(["builtin:nope"])


def test_parquet_missing_column_lists_columns(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"body": ["x"]}), path)
    with pytest.raises(DataError, match=r"no column 'text' \(columns: body\)"):
        texts([path])


def zstd_text(n_lines: int = 4000) -> bytes:
    """Text that does not compress to nothing, so a cut-off file loses real content."""
    return "".join(f"line {i} holds the number {i * 7919 % 10007}\n" for i in range(n_lines)).encode()


@pytest.mark.parametrize("name", ["cut.txt.zst", "cut.jsonl.zst"])
def test_truncated_zst_is_one_error_naming_the_file(tmp_path, name):
    data = zstd_text()
    if name.endswith(".jsonl.zst"):
        data = b"".join(json.dumps({"text": line}).encode() + b"\n" for line in data.decode().splitlines())
    compressed = zstandard.ZstdCompressor().compress(data)
    path = tmp_path / name
    path.write_bytes(compressed[: len(compressed) * 6 // 10])
    with pytest.raises(DataError, match="ended before the end-of-frame marker") as info:
        texts([path], separator="\n")
    assert name in str(info.value) and "\n" not in str(info.value)


def test_zst_of_several_frames_reads_every_frame(tmp_path):
    first, second = zstd_text(3000), b"the second frame"
    path = tmp_path / "frames.txt.zst"
    compressor = zstandard.ZstdCompressor()
    path.write_bytes(compressor.compress(first) + compressor.compress(second))
    assert texts([path]) == [(first + second).decode()]


def test_separator_split_is_exact_across_any_chunk_boundary(tmp_path, monkeypatch):
    import scratchlm.data.sources as sources

    text = "<>a<><>bc<<>>d<>é<>" + "x" * 40 + "<><"
    path = tmp_path / "a.txt"
    path.write_text(text, encoding="utf-8")
    for chunk in range(1, 12):
        monkeypatch.setattr(sources, "_TEXT_CHUNK", chunk)
        for sep in ("<>", "<><", "x"):
            assert texts([path], separator=sep) == text.split(sep), (chunk, sep)


def test_json_counts_only_the_documents_with_invalid_utf8(tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes(b'[{"text": "fine"}, {"text": "bad \xff byte"}, "also fine", "caf\xe9"]')
    docs = list(iter_documents([str(path)]))
    assert [d.text for d in docs] == ["fine", "bad \ufffd byte", "also fine", "caf\ufffd"]
    assert [d.invalid_utf8 for d in docs] == [False, True, False, True]


@pytest.mark.parametrize("name", ["deep.json", "deep.jsonl"])
def test_deeply_nested_json_is_one_error(tmp_path, name):
    path = tmp_path / name
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(DataError, match=r"deep\.jsonl?(:1)?: not valid JSON \(nested too deeply\)"):
        texts([path])
    stats = SourceStats()
    if name.endswith(".jsonl"):  # like any bad line, it can be counted and skipped
        assert list(iter_documents([str(path)], SourceOptions(skip_bad_records=True), stats)) == []
        assert stats.bad_records == 1


def test_prepared_directory_with_a_null_text_is_one_error(tmp_path):
    from scratchlm.data.sources import write_prepared_dir

    out = write_prepared_dir(tmp_path / "prepared", ["fine"], ["also fine"])
    pq.write_table(pa.table({"text": ["ok", None], "source": ["a", "b"]}), out / "train" / "part-00001.parquet")
    for split in ("train", "all"):
        with pytest.raises(DataError, match=r"part-00001\.parquet: the 'text' column has null values"):
            texts([out], split=split)


def test_a_prepared_dataset_inside_a_directory_is_read_as_one(tmp_path):
    from scratchlm.data.sources import write_prepared_dir

    (tmp_path / "a.txt").write_text("loose")
    out = write_prepared_dir(tmp_path / "prepared", ["kept train"], ["kept val"])
    write_jsonl(out / "removed_examples.jsonl", [{"reason": "exact_dup", "source": "x", "text": "removed"}])
    assert texts([tmp_path]) == ["loose", "kept train", "kept val"]
    assert texts([tmp_path], split="val") == ["loose", "kept val"]
    assert texts([tmp_path], exclude=["prepared"]) == ["loose"]


def test_default_globs_ignore_case_user_globs_do_not(tmp_path):
    write_jsonl(tmp_path / "DATA.JSONL", [{"text": "upper"}])
    pq.write_table(pa.table({"text": ["mixed"]}), tmp_path / "x.Parquet")
    (tmp_path / "NOTES.MD").write_text("markdown")
    assert texts([tmp_path]) == ["upper", "mixed"]
    assert texts([tmp_path], include=["*.jsonl", "*.MD"]) == ["markdown"]


def test_linked_directories_are_followed_once_even_in_a_loop(tmp_path):
    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    (real / "sub" / "a.txt").write_text("linked")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "link").symlink_to(real)
    (real / "sub" / "loop").symlink_to(real)  # a link back up: must not recurse forever
    (corpus / "z.txt").write_text("own")
    assert texts([corpus]) == ["own", "linked"]


@pytest.mark.parametrize("compress", [lambda b: b, gzip.compress])
def test_a_leading_utf8_bom_is_dropped(tmp_path, compress):
    bom = b"\xef\xbb\xbf"
    suffix = ".gz" if compress is gzip.compress else ""
    files = {"a.txt": b"plain", "b.jsonl": b'{"text": "line"}\n', "c.json": b'["whole"]'}
    paths = []
    for name, data in files.items():
        paths.append(tmp_path / (name + suffix))
        paths[-1].write_bytes(compress(bom + data))
    assert texts(paths) == ["plain", "line", "whole"]
    assert texts(paths[:1], separator="|") == ["plain"]


def test_jsonl_counts_invalid_utf8_only_in_the_text_field(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"text": "fine", "id": "\xff"}\n{"text": "bad \xff byte"}\n')
    docs = list(iter_documents([str(path)]))
    assert [d.text for d in docs] == ["fine", "bad \ufffd byte"]
    assert [d.invalid_utf8 for d in docs] == [False, True]


def test_hf_split_of_a_saved_dataset_dict_and_a_single_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    saved = save_validation_only(tmp_path / "dict", ["held out"])
    assert texts([f"hf:{saved}"], hf_split="validation") == ["held out"]
    with pytest.raises(DataError, match="no split 'train' \\(splits: validation\\)"):
        texts([f"hf:{saved}"])
    single = tmp_path / "single"
    datasets.Dataset.from_dict({"text": ["only"]}).save_to_disk(str(single))
    assert texts([f"hf:{single}"]) == ["only"]
    with pytest.raises(DataError, match="single Dataset has no splits; cannot read split 'validation'"):
        texts([f"hf:{single}"], hf_split="validation")


@pytest.mark.parametrize("name", ["zero.txt.gz", "zero.jsonl.zst"])
def test_an_empty_archive_is_truncated_given_or_inside_a_directory(tmp_path, name):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / name).write_bytes(b"")
    for given in (corpus / name, corpus):
        with pytest.raises(DataError, match="the file is empty, a truncated") as info:
            texts([given])
        assert name in str(info.value) and "\n" not in str(info.value)


def test_a_prepared_dataset_inside_a_directory_tags_each_document_with_its_split(tmp_path):
    from scratchlm.data.sources import write_prepared_dir

    (tmp_path / "a.txt").write_text("loose")
    write_prepared_dir(tmp_path / "prepared", ["kept train"], ["kept val"])
    assert [d.split for d in iter_documents([str(tmp_path)])] == [None, "train", "val"]


def test_local_input_paths_include_hf_names_of_local_paths(tmp_path):
    saved = tmp_path / "saved"
    saved.mkdir()
    inputs = ["a.txt", f"hf:{saved}", "hf:someone/not-here", "builtin:python-docs"]
    assert local_input_paths(inputs) == ["a.txt", str(saved)]


def test_pieces_of_a_pipe_come_as_the_input_arrives_not_a_whole_chunk_later():
    """`read(1 MB)` on a pipe waits in C for the whole megabyte, and with it any Ctrl-C or SIGTERM
    the kernel handed to another thread (a stage fed by a slow pipe could not be stopped)."""
    import os
    import threading

    from scratchlm.data.sources import _split_stream

    read_end, write_end = os.pipe()
    with open(read_end, "rb") as reader, open(write_end, "wb", buffering=0) as writer:
        writer.write(b"first\n===\nsecond")  # the writer stays open: no EOF, far less than a chunk
        got = []
        thread = threading.Thread(target=lambda: got.append(next(_split_stream(reader, b"\n===\n"))), daemon=True)
        thread.start()
        thread.join(timeout=10)
        assert got == [b"first"]


def _prepared_with(path: Path, change) -> Path:
    """A real prepared dataset (as `write_prepared_dir` makes it) with one `change` applied."""
    from scratchlm.data.sources import write_prepared_dir

    write_prepared_dir(path, ["kept train"], ["kept val"])
    change(path)
    return path


@pytest.mark.parametrize(
    "change",
    [
        lambda p: (p / "precious.txt").write_text("mine"),
        lambda p: (p / "train" / "notes.txt").write_text("mine"),
        lambda p: (p / "train" / "nested").mkdir(),
        lambda p: (p / "stats.json").write_text("not json"),
        lambda p: (p / "stats.json").write_text("[1, 2]"),
        lambda p: (p / "stats.json").write_text('{"documents_out": 2, "accuracy": 0.9}'),
        lambda p: (p / "val" / "part-00000.parquet").replace(p / "val.parquet"),
    ],
    ids=["extra-file", "train-not-parquet", "train-subdir", "stats-not-json", "stats-not-object",
         "stats-foreign-key", "val-file"],  # fmt: skip
)
def test_only_what_data_prepare_writes_is_a_prepared_dataset(tmp_path, change):
    """A folder with stats.json beside train/ was taken for a prepared dataset whatever else it
    held; now it may be replaced only when it holds nothing else, and is read only then: anything
    else beside the prepared files is an error naming it, not a guess of either kind."""
    from scratchlm.data.sources import is_prepared_dir, is_replaceable_prepared_dir

    written = _prepared_with(tmp_path / "as-written", lambda p: None)
    assert is_prepared_dir(written) and is_replaceable_prepared_dir(written)
    changed = _prepared_with(tmp_path / "changed", change)
    assert not is_replaceable_prepared_dir(changed)
    with pytest.raises(DataError, match=r"changed: holds stats.json beside train/ like a prepared dataset, but also"):
        is_prepared_dir(changed)


def test_hidden_entries_leave_a_prepared_dataset_read_as_one(tmp_path):
    """Read as plain files, its stats and removed examples became documents and val joined train
    (a Jupyter `.ipynb_checkpoints/` or `hf download`'s `.cache/` was enough). A hidden folder
    still keeps `--out` from replacing it: the replacement would delete it."""
    from scratchlm.data.sources import is_prepared_dir, is_replaceable_prepared_dir

    def browsed(path):
        for folder in (path, path / "train", path / "val"):
            (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")

    browsed_dir = _prepared_with(tmp_path / "browsed", browsed)
    assert is_prepared_dir(browsed_dir) and is_replaceable_prepared_dir(browsed_dir)
    for hidden in (".git", ".ipynb_checkpoints", ".cache", "train/.ipynb_checkpoints"):
        folder = _prepared_with(tmp_path / hidden.replace("/", "-"), lambda p, h=hidden: (p / h).mkdir())
        assert is_prepared_dir(folder) and not is_replaceable_prepared_dir(folder)
        assert texts([folder]) == ["kept train", "kept val"]


def test_a_folder_merely_shaped_like_a_prepared_dataset_is_an_error_naming_what_else_it_holds(tmp_path):
    """Its .txt files were silently skipped: the folder was read as a prepared dataset of no parts."""
    sub = tmp_path / "corpus" / "sub"
    (sub / "train").mkdir(parents=True)
    (sub / "stats.json").write_text('{"documents_out": 1}')
    (sub / "train" / "a.txt").write_text("in train")
    (sub / "notes.txt").write_text("notes")
    for given in (tmp_path / "corpus", sub):
        with pytest.raises(DataError, match=r"sub: holds stats.json beside train/ .* but also notes.txt; move"):
            texts([given], include=["*.txt"])


def test_json_lines_named_json_are_read_line_by_line(tmp_path):
    """C4 (c4-train.*.json.gz) and Dolma ship JSON Lines as .json: it was "not valid JSON (Extra data)"."""
    records = [{"text": "first", "url": "u1", "timestamp": "t"}, {"text": "second", "url": "u2", "timestamp": "t"}]
    c4 = tmp_path / "c4-train.00000-of-01024.json.gz"
    c4.write_bytes(gzip.compress(b"\n" + "".join(json.dumps(r) + "\n" for r in records).encode()))
    assert texts([c4]) == ["first", "second"]
    plain = tmp_path / "dolma.json"
    plain.write_bytes(b'{"text": "ok"}\n{"text": "bad \xff"}\n{broken\n{"id": 3}\n')
    with pytest.raises(DataError, match=r"dolma\.json:3: not valid JSON"):
        texts([plain])
    stats = SourceStats()
    docs = list(iter_documents([str(plain)], SourceOptions(skip_bad_records=True), stats))
    assert [(d.text, d.invalid_utf8) for d in docs] == [("ok", False), ("bad \ufffd", True)]
    assert stats.bad_records == 2


def test_json_lines_named_json_with_a_damaged_first_line_are_still_read_line_by_line(tmp_path):
    """A bad first line made the file "one JSON value": read whole into memory (a C4 shard is
    gigabytes), then one error that --skip-bad-records could not skip."""
    damaged = tmp_path / "c4.json.gz"
    damaged.write_bytes(gzip.compress(b'{"text": "cut \x01 off\n{"text": "a"}\n{"text": "b"}\n'))
    with pytest.raises(DataError, match=r"c4\.json\.gz:1: not valid JSON"):
        texts([damaged])
    stats = SourceStats()
    docs = list(iter_documents([str(damaged)], SourceOptions(skip_bad_records=True), stats))
    assert [d.text for d in docs] == ["a", "b"] and stats.bad_records == 1
    one_item = tmp_path / "one-item.json"  # an array laid out over lines is still one value
    one_item.write_text('[\n{"text": "only"}\n]\n')
    assert texts([one_item]) == ["only"]


def test_whole_json_files_are_still_read_whole(tmp_path):
    one_line = tmp_path / "one.json"
    one_line.write_text('{"text": "single"}\n\n')
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps([{"text": "a"}, "b"], indent=2))
    assert texts([one_line, pretty]) == ["single", "a", "b"]
    two_pretty = tmp_path / "two.json"
    two_pretty.write_text(json.dumps({"text": "a"}, indent=2) + json.dumps({"text": "b"}, indent=2))
    with pytest.raises(DataError, match=r"two\.json: not valid JSON \(Extra data"):
        texts([two_pretty])


def test_json_lines_of_bare_strings_are_documents_as_a_whole_file_list_of_them_is(tmp_path, capsys, tiny_tokenizer):
    """A .json list of strings was read, one document each, but the same strings one per line (in
    a .jsonl or a .json file) failed with "expected a JSON object"."""
    strings = ["first doc", "second doc"]
    whole = tmp_path / "whole.json"
    whole.write_text(json.dumps(strings), encoding="utf-8")
    jsonl = write_jsonl(tmp_path / "lines.jsonl", strings)
    lines_json = write_jsonl(tmp_path / "lines.json", strings)
    assert texts([whole]) == texts([jsonl]) == texts([lines_json]) == strings
    mixed = write_jsonl(tmp_path / "mixed.jsonl", ["bare", {"body": "keyed"}, 7, None])
    with pytest.raises(DataError, match=r"mixed\.jsonl:3: expected a string or a JSON object with field 'body', got int"):
        texts([mixed], text_field="body")
    stats = SourceStats()
    docs = iter_documents([str(mixed)], SourceOptions(text_field="body", skip_bad_records=True), stats)
    assert [d.text for d in docs] == ["bare", "keyed"] and stats.bad_records == 2
    assert main(["tokenizer", "stats", "--tokenizer", str(tiny_tokenizer), str(jsonl), str(lines_json), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["documents"] == 4


@pytest.mark.parametrize("string_type", [pa.string(), pa.large_string()])
def test_invalid_utf8_in_a_parquet_text_column_is_repaired_and_flagged(tmp_path, string_type):
    """pyarrow raised UnicodeDecodeError for the one bad value and the whole file failed."""
    raw = pa.binary() if string_type == pa.string() else pa.large_binary()
    column = pa.array([b"fine", b"bad \xff byte", None], raw).view(string_type)
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"text": column}), path)  # a string column the writer does not check
    assert pq.read_schema(path).field("text").type == string_type
    stats = SourceStats()
    docs = list(iter_documents([str(path)], SourceOptions(skip_bad_records=True), stats))
    assert [(d.text, d.invalid_utf8) for d in docs] == [("fine", False), ("bad \ufffd byte", True)]
    assert stats.bad_records == 1  # the null row, as before


def test_a_binary_parquet_column_is_still_not_text(tmp_path):
    path = tmp_path / "bytes.parquet"
    pq.write_table(pa.table({"text": pa.array([b"raw"], pa.binary())}), path)
    with pytest.raises(DataError, match="row 1: column 'text' is bytes, not a string"):
        texts([path])


def test_excluding_a_folder_excludes_everything_below_it(tmp_path):
    """`--exclude sub` did nothing for a plain folder (only `sub/*` worked), and a prepared dataset
    inside was matched by its folder name only, so `--exclude 'prepared/*'` kept it."""
    from scratchlm.data.sources import write_prepared_dir

    (tmp_path / "a.txt").write_text("loose")
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "sub" / "b.txt").write_text("in sub")
    (tmp_path / "sub" / "deeper" / "c.txt").write_text("deeper")
    write_prepared_dir(tmp_path / "prepared", ["kept train"], ["kept val"])
    everything = ["loose", "kept train", "kept val", "in sub", "deeper"]
    assert texts([tmp_path]) == everything
    for pattern in ("sub", "sub/", "sub/*", "s?b"):
        assert texts([tmp_path], exclude=[pattern]) == ["loose", "kept train", "kept val"], pattern
    assert texts([tmp_path], exclude=["deeper"]) == ["loose", "kept train", "kept val", "in sub"]
    assert texts([tmp_path], exclude=["sub/deeper/*"]) == ["loose", "kept train", "kept val", "in sub"]
    for pattern in ("prepared", "prepared/", "prepared/*", "prep*"):
        assert texts([tmp_path], exclude=[pattern]) == ["loose", "in sub", "deeper"], pattern
    assert texts([tmp_path], exclude=["*.txt"]) == ["kept train", "kept val"]  # names, at any depth
    assert texts([tmp_path], exclude=["sub/*.txt"]) == ["loose", "kept train", "kept val"]  # `*` matches `/`


def test_a_tokens_dir_given_as_text_is_named_as_one(tmp_path):
    """Its meta.json was read as a JSON document: "no field 'text' (keys: format_version, ...)"."""
    tokens = tmp_path / "corpus" / "tokens"
    tokens.mkdir(parents=True)
    (tokens / "meta.json").write_text('{"format_version": 1}')
    (tokens / "train.bin").write_bytes(b"\0\0")
    (tmp_path / "corpus" / "a.txt").write_text("text")
    for given in (tokens, tmp_path / "corpus"):
        with pytest.raises(DataError, match=r"tokens: is a tokens dir \(already tokenized\), not text"):
            texts([given])
    assert texts([tmp_path / "corpus"], exclude=["tokens"]) == ["text"]
    assert texts([tmp_path / "corpus"], include=["*.txt"]) == ["text"]  # its meta.json is never read


def test_a_prepared_part_with_a_non_string_source_column_is_one_error(tmp_path, capsys):
    """A hand-made prepared part whose `source` column held integers was read, and `data prepare`
    then died with an AttributeError traceback writing them; now it is one error naming the part."""
    from scratchlm.cli import main
    from scratchlm.data.sources import write_prepared_dir

    out = write_prepared_dir(tmp_path / "prepared", ["fine"], ["also fine"])
    pq.write_table(pa.table({"text": ["numbered"], "source": [7]}), out / "train" / "part-00001.parquet")
    with pytest.raises(DataError, match=r"part-00001\.parquet: the 'source' column holds int64, not strings"):
        texts([out])
    assert main(["data", "prepare", str(out), "--out", str(tmp_path / "again"), "--no-filters"]) != 0
    assert "the 'source' column holds int64" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tiny_tokenizer(path)
    return path


def command(name: str, inputs: list[str], tmp_path: Path, tokenizer: Path) -> list[str]:
    """The argv of one of the commands that read inputs, writing (if it writes) under `tmp_path`."""
    out = ["--out", str(tmp_path / "out")]
    return {
        "prepare": ["data", "prepare", *inputs, *out],
        "train": ["tokenizer", "train", *inputs, "--vocab-size", "300", "--workers", "1", *out],
        "stats": ["tokenizer", "stats", "--tokenizer", str(tokenizer), *inputs],
        "tokenize": ["data", "tokenize", *inputs, "--tokenizer", str(tokenizer), "--workers", "1", *out],
    }[name]


@pytest.mark.parametrize(("name", "flag", "value"), [
    ("train", "--split", "val"),
    ("train", "--text-field", "body"),
    ("train", "--hf-split", "validation"),
    ("stats", "--text-field", "body"),
    ("stats", "--hf-split", "validation"),
    ("prepare", "--text-field", "body"),
    ("prepare", "--hf-split", "validation"),
    ("tokenize", "--text-field", "body"),
    ("tokenize", "--hf-split", "validation"),
])  # fmt: skip
def test_a_reading_flag_no_input_can_use_is_refused(tmp_path, capsys, tiny_tokenizer, name, flag, value):
    """`tokenizer train x.txt --split val`, `--text-field` on plain text and `--hf-split` without
    an hf: input exited 0 and the flag did nothing."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("plain words and more plain words", encoding="utf-8")
    (corpus / "b.txt").write_text("other words in another file", encoding="utf-8")
    assert main([*command(name, [str(corpus)], tmp_path, tiny_tokenizer), flag, value]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith(f"scratchlm: error: {flag} ")
    assert "leave it out" in captured.err and not captured.out
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("name", "toml", "override", "shown"), [
    ("prepare", '[source]\ntext_field = "body"\n', None, "source.text_field = 'body' names the field"),
    ("prepare", '[source]\nsplit = "val"\n', None, "source.split = 'val' picks the split of a prepared"),
    ("prepare", None, "source.hf_split=validation", "source.hf_split = 'validation' picks the split of an hf:"),
    ("tokenize", 'text_field = "body"\n', None, "text_field = 'body' names the field"),
    ("tokenize", None, "hf_split=validation", "hf_split = 'validation' picks the split of an hf:"),
    ("train", 'split = "val"\n', None, "split = 'val' picks the split of a prepared"),
    ("train", None, "text_field=body", "text_field = 'body' names the field"),
])  # fmt: skip
def test_a_reading_setting_from_a_config_file_or_set_no_input_can_use_is_refused(
    tmp_path, capsys, tiny_tokenizer, name, toml, override, shown
):
    """The flags were refused, but the same settings from a config file or `--set` were accepted
    and did nothing: `[source] text_field = "body"` on plain text exited 0."""
    text = tmp_path / "a.txt"
    text.write_text("plain words and more plain words", encoding="utf-8")
    extra = ["--set", override] if override else ["--config", str(tmp_path / "c.toml")]
    if toml:
        (tmp_path / "c.toml").write_text(toml, encoding="utf-8")
    assert main([*command(name, [str(text)], tmp_path, tiny_tokenizer), *extra]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith(f"scratchlm: error: {shown}")
    assert "leave it out" in captured.err and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("flags", "shown"), [
    (["--include", "*.txt"], "--include picks the files read inside directory inputs"),
    (["--exclude", "old"], "--exclude skips files and folders inside directory inputs"),
    (["--skip-bad-records"], "--skip-bad-records skips bad records of .jsonl"),
    (["--set", "source.include=['*.txt']"], "source.include = ['*.txt'] picks the files"),
    (["--set", "source.skip_bad_records=true"], "source.skip_bad_records = True skips bad records"),
])  # fmt: skip
def test_directory_globs_and_skip_bad_records_no_input_can_use_are_refused(tmp_path, capsys, flags, shown):
    """`data prepare a.txt --include '*.md'` (no directory input) and `--skip-bad-records` on plain
    text exited 0 and the setting did nothing."""
    text = tmp_path / "a.txt"
    text.write_text("plain words and more plain words", encoding="utf-8")
    assert main(["data", "prepare", str(text), "--out", str(tmp_path / "out"), *flags]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith(f"scratchlm: error: {shown}")
    assert "leave it out" in captured.err and not (tmp_path / "out").exists()


def test_directory_globs_and_skip_bad_records_are_taken_where_an_input_uses_them(tmp_path, capsys):
    """A directory input takes --include/--exclude; a JSONL input takes --skip-bad-records."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("plain words and more plain words", encoding="utf-8")
    data = write_jsonl(tmp_path / "b.jsonl", [{"text": "json words in a record"}, {"body": "no text field"}])
    flags = ["--include", "*.txt", "--exclude", "old", "--skip-bad-records"]
    out = ["--out", str(tmp_path / "out")]
    assert main(["data", "prepare", str(corpus), str(data), *out, *flags]) == 0, capsys.readouterr().err


def test_a_reading_setting_at_its_default_or_used_by_an_input_is_taken(tmp_path, capsys, tiny_tokenizer):
    """Only a setting that changes something is checked: the default written out, or one an input uses."""
    data = write_jsonl(tmp_path / "a.jsonl", [{"body": "json words under another key"}])
    toml = tmp_path / "c.toml"
    toml.write_text('[source]\ntext_field = "body"\nhf_split = "train"\n', encoding="utf-8")
    assert main([*command("prepare", [str(data)], tmp_path, tiny_tokenizer), "--config", str(toml)]) == 0, (
        capsys.readouterr().err
    )


def test_a_separator_with_no_text_file_is_refused(tmp_path, capsys):
    data = write_jsonl(tmp_path / "a.jsonl", [{"text": "one document"}])
    assert main(["data", "prepare", str(data), "--out", str(tmp_path / "out"), "--separator", "\\n"]) == 2
    assert "--separator splits .txt files" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["train", "stats", "prepare", "tokenize"])
def test_a_reading_flag_one_input_uses_is_taken(tmp_path, capsys, tiny_tokenizer, name):
    """Inputs of mixed kinds: the flag serves those that use it, here a JSONL file and a prepared
    dataset found in a folder with plain text beside them."""
    corpus = tmp_path / "corpus"
    write_prepared_dir(corpus / "prepared", ["train words in a prepared set"], ["val words in a prepared set"])
    (corpus / "a.txt").write_text("plain words and more plain words", encoding="utf-8")
    write_jsonl(corpus / "b.jsonl", [{"body": "json words under another key"}])
    flags = ["--text-field", "body"] + (["--split", "val"] if name == "train" else [])
    assert main([*command(name, [str(corpus)], tmp_path, tiny_tokenizer), *flags]) == 0, capsys.readouterr().err

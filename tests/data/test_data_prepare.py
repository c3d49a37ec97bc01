"""`data prepare` end to end: outputs, stats, split stability, atomic output, config and CLI."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from scratchlm.cli import main
from scratchlm.config import load_config
from scratchlm.data.prepare import PrepareConfig, prepare
from scratchlm.errors import ConfigError, DataError, ScratchLMError

STATS_KEYS = {
    "documents_in",
    "documents_out",
    "bytes_in",
    "bytes_out",
    "removed",
    "invalid_utf8_documents",
    "seconds",
}
_SYLLABLES = ["ka", "lo", "mi", "ren", "sta", "vor", "pel", "tun", "dra", "neh", "sol", "bri"]
_GLUE = ["the", "of", "and", "to", "with", "that", "a", "in"]


def prose(rng: random.Random, n_words: int = 120) -> str:
    """Distinct English-shaped documents that pass the default quality rules."""
    words = []
    for i in range(n_words):
        words.append(
            rng.choice(_GLUE) if i % 3 == 1 else "".join(rng.choices(_SYLLABLES, k=rng.randint(2, 3)))
        )
    sentences = [" ".join(words[i : i + 10]).capitalize() + "." for i in range(0, n_words, 10)]
    return "\n".join(" ".join(sentences[i : i + 3]) for i in range(0, len(sentences), 3))


def near_copy(text: str) -> str:
    words = text.split(" ")
    words[len(words) // 2] = "altered"
    return " ".join(words)


def make_corpus(root: Path, n: int = 40, seed: int = 0) -> tuple[Path, list[str]]:
    rng = random.Random(seed)
    docs = [prose(rng) for _ in range(n)]
    records = docs + [docs[0], near_copy(docs[1]), "This is too short to keep with the rest.", "   \n\t  "]
    corpus = root / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    (corpus / "a.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in records), encoding="utf-8"
    )
    (corpus / "b.txt").write_bytes(prose(rng).encode() + b" caf\xe9 latin-1 byte")
    return corpus, docs


def read_split(out: Path, split: str) -> list[dict]:
    rows = []
    for part in sorted((out / split).glob("*.parquet")):
        rows.extend(pq.read_table(part).to_pylist())
    return rows


def run(inputs, out, **kwargs) -> dict:
    return prepare(
        PrepareConfig(
            inputs=[str(i) for i in inputs], out=str(out), workers=kwargs.pop("workers", 1), **kwargs
        )
    )


def test_prepare_writes_shards_stats_and_examples(tmp_path):
    corpus, docs = make_corpus(tmp_path)
    out = tmp_path / "out"
    stats = run([corpus], out, val_fraction=0.2)
    assert set(stats) == STATS_KEYS
    assert json.loads((out / "stats.json").read_text()) == stats
    assert stats["documents_in"] == 45
    assert stats["documents_out"] == 41
    assert stats["removed"] == {
        "empty": 1,
        "exact_duplicate": 1,
        "near_duplicate": 1,
        "quality:word_count": 1,
    }
    assert stats["documents_in"] == stats["documents_out"] + sum(stats["removed"].values())
    assert stats["invalid_utf8_documents"] == 1
    train, val = read_split(out, "train"), read_split(out, "val")
    assert len(train) + len(val) == 41 and len(val) > 0 and len(train) > len(val)
    assert set(train[0]) == {"text", "source"}
    assert {r["text"] for r in train + val} >= set(docs)
    assert stats["bytes_out"] == sum(len(r["text"].encode()) for r in train + val)
    assert any("\ufffd" in r["text"] for r in train + val)
    examples = [json.loads(line) for line in (out / "removed_examples.jsonl").read_text().splitlines()]
    assert {e["reason"] for e in examples} == set(stats["removed"])
    assert all(e["source"].endswith("a.jsonl") for e in examples)


def test_split_is_stable_across_runs_workers_and_neighbours(tmp_path):
    corpus, docs = make_corpus(tmp_path, n=60)
    first, second, parallel = tmp_path / "first", tmp_path / "second", tmp_path / "parallel"
    run([corpus], first, val_fraction=0.3)
    run([corpus], second, val_fraction=0.3)
    run([corpus], parallel, val_fraction=0.3, workers=2, batch_bytes=2000)
    for split in ("train", "val"):
        assert read_split(first, split) == read_split(second, split) == read_split(parallel, split)
    val_texts = {r["text"] for r in read_split(first, "val")}
    assert 6 <= len(val_texts) <= 30
    # A document's split depends on its text alone, not on what else is in the corpus.
    subset = tmp_path / "subset.jsonl"
    subset.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs[::2]))
    run([subset], tmp_path / "sub", val_fraction=0.3)
    assert {r["text"] for r in read_split(tmp_path / "sub", "val")} == val_texts & set(docs[::2])


def test_val_fraction_zero_still_writes_an_empty_val_split(tmp_path):
    corpus, _ = make_corpus(tmp_path, n=5)
    run([corpus], tmp_path / "out", val_fraction=0.0)
    assert read_split(tmp_path / "out", "val") == []
    assert pq.read_schema(tmp_path / "out" / "val" / "part-00000.parquet").names == ["text", "source"]


def test_failed_run_leaves_no_output_and_keeps_the_old_one(tmp_path):
    corpus, _ = make_corpus(tmp_path)
    (corpus / "c.jsonl").write_text('{"text": "fine"}\n{broken\n')
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"c\.jsonl:2"):
        run([corpus], out)
    assert not out.exists()
    run([corpus / "a.jsonl"], out)
    before = (out / "stats.json").read_text()
    with pytest.raises(DataError):
        run([corpus], out)
    assert (out / "stats.json").read_text() == before  # the previous result is untouched
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_refuses_to_replace_a_directory_that_is_not_a_prepared_dataset(tmp_path):
    corpus, _ = make_corpus(tmp_path)
    out = tmp_path / "home"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a prepared dataset"):
        run([corpus], out)
    assert (out / "precious.txt").read_text() == "keep me"


def test_skip_bad_records_counts_them(tmp_path):
    corpus, _ = make_corpus(tmp_path)
    (corpus / "c.jsonl").write_text('{"text": "fine"}\n{broken\n{"body": 1}\n')
    config = PrepareConfig(inputs=[str(corpus)], out=str(tmp_path / "out"), workers=1)
    config.source.skip_bad_records = True
    stats = prepare(config)
    assert stats["removed"]["bad_record"] == 2
    assert stats["documents_in"] == stats["documents_out"] + sum(stats["removed"].values())


def test_no_documents_is_an_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="no documents"):
        run([empty], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_config_file_flags_and_overrides(tmp_path):
    toml = tmp_path / "prepare.toml"
    toml.write_text("val_fraction = 0.1\n[filters.word_count]\nmin = 5\n[dedup]\nnear = false\n")
    config = load_config(
        PrepareConfig, toml, ["dedup.threshold=0.9", "source.text_field=body"], base={"out": "x"}
    )
    assert config.val_fraction == 0.1 and config.filters.word_count.min == 5
    assert not config.dedup.near and config.dedup.threshold == 0.9 and config.source.text_field == "body"
    assert config.out == "x"
    with pytest.raises(ConfigError, match="valid keys in \\[filters.word_count\\]: enabled, min, max"):
        load_config(PrepareConfig, None, ["filters.word_count.minimum=5"])
    with pytest.raises(ConfigError, match="val_fraction"):
        load_config(PrepareConfig, None, ["val_fraction=1.5"])


def test_cli_prepare_and_its_errors(tmp_path, capsys):
    corpus, _ = make_corpus(tmp_path)
    out = tmp_path / "out"
    code = main(["data", "prepare", str(corpus / "a.jsonl"), "--out", str(out), "--val-fraction", "0",
                 "--no-dedup", "--set", "filters.word_count.min=3"])  # fmt: skip
    assert code == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["documents_out"] == 43 and stats["removed"] == {"empty": 1}
    assert "prepared 43 of 44 documents" in capsys.readouterr().out
    assert main(["data", "prepare", str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("scratchlm: error: ") and "missing.jsonl: no such file" in err and err.count("\n") == 1
    )


def test_cli_separator_include_and_text_field(tmp_path):
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "docs.md").write_text("first part\n\nsecond part\n\nthird")
    (corpus / "other.txt").write_text("ignored")
    (corpus / "rows.jsonl").write_text('{"body": "from json"}\n')
    out = tmp_path / "out"
    code = main(["data", "prepare", str(corpus), "--out", str(out), "--separator", r"\n\n", "--include", "*.md",
                 "--include", "*.jsonl", "--text-field", "body", "--no-filters", "--val-fraction", "0"])  # fmt: skip
    assert code == 0
    assert [r["text"] for r in read_split(out, "train")] == [
        "first part",
        "second part",
        "third",
        "from json",
    ]


def test_main_job_on_the_builtin_corpus(tmp_path):
    out = tmp_path / "prepared"
    assert main(["data", "prepare", "builtin:python-docs", "--out", str(out)]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["documents_out"] > 800 and stats["bytes_out"] > 800_000
    assert stats["removed"]["quality:word_count"] > 0


def test_prepared_directory_is_an_input_for_later_stages(tmp_path):
    from scratchlm.data.sources import SourceOptions, iter_documents

    corpus, _ = make_corpus(tmp_path)
    out = tmp_path / "out"
    run([corpus], out, val_fraction=0.2)
    train = [d.text for d in iter_documents([str(out)], SourceOptions(split="train"))]
    val = [d.text for d in iter_documents([str(out)], SourceOptions(split="val"))]
    assert train == [r["text"] for r in read_split(out, "train")]
    assert val == [r["text"] for r in read_split(out, "val")] and val
    assert [d.text for d in iter_documents([str(out)])] == train + val  # every document by default


def test_preparing_a_prepared_directory_again_keeps_every_document(tmp_path):
    corpus, _ = make_corpus(tmp_path)
    out = tmp_path / "out"
    run([corpus], out, val_fraction=0.2)
    before = read_split(out, "train") + read_split(out, "val")
    stats = run([out], tmp_path / "again", val_fraction=0.2)
    assert stats["documents_in"] == stats["documents_out"] == len(before) and stats["removed"] == {}
    after = read_split(tmp_path / "again", "train") + read_split(tmp_path / "again", "val")
    assert sorted(r["text"] for r in after) == sorted(r["text"] for r in before)
    # the split is a function of the text, so each document keeps its place
    assert read_split(tmp_path / "again", "val") == read_split(out, "val")


def test_a_filename_that_is_not_utf8_is_read_and_its_source_escaped(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = random.Random(1)
    with open(os.fsencode(corpus) + b"/caf\xe9.txt", "w", encoding="utf-8") as f:
        f.write(prose(rng))
    (corpus / "plain.txt").write_text(prose(rng), encoding="utf-8")
    stats = run([corpus], tmp_path / "out", val_fraction=0.0)
    assert stats["documents_out"] == 2
    sources = sorted(r["source"] for r in read_split(tmp_path / "out", "train"))
    assert sources == [f"{corpus}/caf\\xe9.txt", f"{corpus}/plain.txt"]


def test_invalid_utf8_documents_are_counted_per_document_in_a_json_file(tmp_path):
    rng = random.Random(2)
    good = [prose(rng).encode() for _ in range(3)]
    bad = prose(rng).encode() + b" caf\xe9"
    path = tmp_path / "docs.json"
    path.write_bytes(b"[" + b", ".join(b'{"text": "' + t.replace(b"\n", b"\\n") + b'"}' for t in [*good, bad]) + b"]")
    stats = run([path], tmp_path / "out", val_fraction=0.0)
    assert stats["documents_out"] == 4
    assert stats["invalid_utf8_documents"] == 1


def test_truncated_zst_input_is_a_one_line_cli_error(tmp_path, capsys):
    import zstandard

    rng = random.Random(3)
    data = "".join(json.dumps({"text": prose(rng)}) + "\n" for _ in range(50)).encode()
    compressed = zstandard.ZstdCompressor().compress(data)
    cut = tmp_path / "corpus.jsonl.zst"
    cut.write_bytes(compressed[: len(compressed) * 6 // 10])
    assert main(["data", "prepare", str(cut), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scratchlm: error: ") and err.count("\n") == 1
    assert "corpus.jsonl.zst: cannot read: Compressed file ended before the end-of-frame marker" in err
    assert not (tmp_path / "out").exists()


def _die(batch):
    """Stands in for the batch worker: the process ends at once, as if killed."""
    os._exit(9)


def test_a_worker_that_dies_is_a_one_line_error(tmp_path, monkeypatch):
    import scratchlm.data.prepare as prepare_module

    corpus, _ = make_corpus(tmp_path, n=5)
    monkeypatch.setattr(prepare_module, "_run_in_process", _die)  # spawned workers import it from here
    with pytest.raises(ScratchLMError, match="a prepare worker process died"):
        run([corpus], tmp_path / "out", workers=2)
    assert not (tmp_path / "out").exists()


def test_skipped_records_with_undecodable_keys_are_reported_not_a_crash(tmp_path):
    rng = random.Random(4)
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"text": prose(rng)}) + "\n" + '{"b\\udcff": 1}\n', encoding="utf-8")
    config = PrepareConfig(inputs=[str(path)], out=str(tmp_path / "out"), workers=1)
    config.source.skip_bad_records = True
    assert prepare(config)["removed"] == {"bad_record": 1}
    (example,) = [json.loads(line) for line in (tmp_path / "out" / "removed_examples.jsonl").read_text().splitlines()]
    assert "no field 'text' (keys: b\\udcff)" in example["source"]


def test_cli_reads_a_prepared_dataset_inside_a_directory_without_its_removed_examples(tmp_path, capsys):
    corpus, _ = make_corpus(tmp_path)
    parent = tmp_path / "parent"
    run([corpus], parent / "prepared", val_fraction=0.2)
    kept = read_split(parent / "prepared", "train") + read_split(parent / "prepared", "val")
    again = tmp_path / "again"
    assert main(["data", "prepare", str(parent), "--out", str(again)]) == 0
    stats = json.loads((again / "stats.json").read_text())
    assert stats["documents_in"] == len(kept) and stats["removed"] == {}


def test_cli_hf_split_reads_the_named_split(tmp_path):
    from tokens_testdata import save_validation_only

    rng = random.Random(5)
    saved = save_validation_only(tmp_path / "dict", [prose(rng), prose(rng)])
    out = tmp_path / "out"
    assert main(["data", "prepare", f"hf:{saved}", "--out", str(out), "--hf-split", "validation"]) == 0
    assert json.loads((out / "stats.json").read_text())["documents_out"] == 2


def test_an_output_folder_merely_shaped_like_a_prepared_dataset_is_not_replaced(tmp_path):
    """A folder holding stats.json and train/ was replaced whole, the user's other files with it."""
    corpus, _ = make_corpus(tmp_path, n=5)
    out = tmp_path / "home"
    (out / "train").mkdir(parents=True)
    (out / "stats.json").write_text('{"documents_out": 1}')
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="home: exists and is not a prepared dataset"):
        run([corpus], out)
    assert (out / "precious.txt").read_text() == "keep me"


def test_what_prepare_writes_is_recognised_as_a_prepared_dataset(tmp_path):
    """The recogniser knows the stats keys and entries prepare writes, so outputs stay replaceable."""
    from scratchlm.data.sources import PREPARED_STATS_KEYS, is_prepared_dir, is_replaceable_prepared_dir

    assert STATS_KEYS == PREPARED_STATS_KEYS
    corpus, _ = make_corpus(tmp_path, n=5)
    out = tmp_path / "out"
    run([corpus], out, val_fraction=0.0)
    assert is_prepared_dir(out) and is_replaceable_prepared_dir(out) and (out / "removed_examples.jsonl").is_file()
    run([corpus], out, val_fraction=0.5)  # replaced, not refused


def test_a_negative_dedup_seed_is_a_one_line_error(tmp_path, capsys):
    """numpy refused it deep inside MinHasher: a traceback, or "worker died" with workers=2."""
    from scratchlm.data.dedup import DedupConfig

    with pytest.raises(ConfigError, match="dedup.seed must be 0 or more, got -1"):
        DedupConfig(seed=-1).validate()
    corpus, _ = make_corpus(tmp_path, n=5)
    for workers in ("1", "2"):
        args = ["data", "prepare", str(corpus), "--out", str(tmp_path / "out"), "--workers", workers]
        assert main([*args, "--set", "dedup.seed=-1"]) == 2
        err = capsys.readouterr().err
        assert err == "scratchlm: error: dedup.seed must be 0 or more, got -1\n"
    assert not (tmp_path / "out").exists()


def test_cli_refuses_an_empty_or_non_utf8_separator(tmp_path, capsys):
    """An empty separator silently meant one document per file; a separator that is not UTF-8
    was blamed on the input file ("a.txt: cannot read: ...")."""
    (tmp_path / "a.txt").write_text("one\n\ntwo")
    out = tmp_path / "out"
    assert main(["data", "prepare", str(tmp_path / "a.txt"), "--out", str(out), "--separator", ""]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scratchlm: error: --separator is empty") and err.count("\n") == 1
    bad = "x\udcffy"  # how Python hands over argv bytes that are not UTF-8 (here 0xff)
    assert main(["data", "prepare", str(tmp_path / "a.txt"), "--out", str(out), "--separator", bad]) == 2
    err = capsys.readouterr().err
    assert err == "scratchlm: error: --separator is not UTF-8: byte 0xff at offset 1\n"
    with pytest.raises(ConfigError, match="source.separator is empty"):
        load_config(PrepareConfig, None, ["source.separator="], base={"out": str(out)})
    assert not out.exists()


def test_invalid_utf8_in_a_parquet_input_is_counted_not_fatal(tmp_path):
    import pyarrow as pa

    rng = random.Random(6)
    texts = [prose(rng).encode(), prose(rng).encode() + b" caf\xe9"]
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": pa.array(texts, pa.binary()).view(pa.string())}), path)
    stats = run([path], tmp_path / "out", val_fraction=0.0)
    assert stats["documents_out"] == 2 and stats["invalid_utf8_documents"] == 1


@pytest.mark.parametrize(("flags", "message"), [
    (["--hf-split", ""], "source.hf_split must name a split"),
    (["--include", ""], "--include and --exclude take non-empty globs"),
    (["--exclude", ""], "--include and --exclude take non-empty globs"),
])  # fmt: skip
def test_empty_split_or_glob_is_a_one_line_error(tmp_path, capsys, flags, message):
    """An empty --hf-split was taken (data tokenize and tokenizer train refuse it), and an empty
    --include ended in "no files matching  in this directory"."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a document")
    assert main(["data", "prepare", str(tmp_path / "in"), "--out", str(tmp_path / "out"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()

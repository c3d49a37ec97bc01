"""The `scratchlm tokenizer ...` commands, end to end through the real CLI entry point."""

from __future__ import annotations

import io
import json

import pytest
from tok_testdata import MIXED, stdlib_text, write_gpt2_pair

from scratchlm.cli import main
from scratchlm.tokenizer import Tokenizer


@pytest.fixture
def docs(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    text = stdlib_text(120_000)
    for i in range(0, len(text), 20_000):
        (folder / f"doc{i:07d}.txt").write_text(text[i : i + 20_000])
    (folder / "mixed.txt").write_text("\n".join(MIXED))
    return folder


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_encode_decode_stats(capsys, docs, tmp_path):
    out_dir = tmp_path / "tok"
    code, _, err = run(
        capsys,
        "tokenizer",
        "train",
        str(docs),
        "--vocab-size",
        "600",
        "--out",
        str(out_dir),
        "--special",
        "<|tool|>",
        "--workers",
        "1",
    )
    assert code == 0, err
    tok = Tokenizer.load(out_dir)
    assert tok.vocab_size == 600 and tok.special_tokens["<|tool|>"] == 599

    code, out, _ = run(
        capsys,
        "tokenizer",
        "encode",
        "--tokenizer",
        str(out_dir),
        "--text",
        "héllo<|tool|>",
        "--allow-special",
    )
    ids = json.loads(out)
    assert ids == tok.encode("héllo<|tool|>", allowed_special="all") and ids[-1] == 599

    code, out, _ = run(capsys, "tokenizer", "decode", "--tokenizer", str(out_dir), *map(str, ids))
    assert code == 0 and out == "héllo<|tool|>\n"

    code, out, _ = run(
        capsys, "tokenizer", "stats", "--tokenizer", str(out_dir), str(docs), "--json", "--top", "3"
    )
    stats = json.loads(out)
    assert code == 0 and stats["documents"] == len(list(docs.iterdir()))
    assert (
        stats["bytes_per_token"] == pytest.approx(stats["bytes"] / stats["tokens"])
        and stats["bytes_per_token"] > 2
    )
    assert len(stats["most_common"]) == 3 and stats["unused_merged_tokens"] < stats["merged_tokens"]


def test_config_file_and_overrides(capsys, docs, tmp_path):
    config = tmp_path / "tok.toml"
    config.write_text(f'inputs = ["{docs}"]\nvocab_size = 300\npattern = "gpt2"\nworkers = 1\n')
    out_dir = tmp_path / "tok"
    code, _, err = run(
        capsys,
        "tokenizer",
        "train",
        "--config",
        str(config),
        "--out",
        str(out_dir),
        "--set",
        "vocab_size=280",
    )
    assert code == 0, err
    tok = Tokenizer.load(out_dir)
    assert tok.vocab_size == 280 and tok.pattern.startswith("'s|'t")


def test_import_gpt2_and_export_tiktoken(capsys, tmp_path):
    enc, bpe = write_gpt2_pair(tmp_path)
    code, _, err = run(
        capsys,
        "tokenizer",
        "import",
        "--gpt2",
        str(enc),
        str(bpe),
        "--out",
        str(tmp_path / "g"),
        "--tiktoken",
        str(tmp_path / "g.tiktoken"),
    )
    assert code == 0, err
    code, out, _ = run(
        capsys, "tokenizer", "encode", "--tokenizer", str(tmp_path / "g"), "--text", "lower low new"
    )
    assert json.loads(out) == [263, 259, 262]
    assert len((tmp_path / "g.tiktoken").read_text().splitlines()) == 264


def test_user_errors_are_one_line(capsys, docs, tmp_path):
    code, _, err = run(
        capsys, "tokenizer", "train", str(docs), "--vocab-size", "100", "--out", str(tmp_path / "t")
    )
    assert code == 2 and err.count("\n") == 1 and "too small" in err
    small = Tokenizer.train(["abc abc"], 300, show_progress=False)
    small.save(tmp_path / "t")
    code, _, err = run(capsys, "tokenizer", "decode", "--tokenizer", str(tmp_path / "t"), "12345")
    assert code == 2 and "out of range" in err
    code, _, err = run(
        capsys, "tokenizer", "encode", "--tokenizer", str(tmp_path / "t"), "--text", "<|endoftext|>"
    )
    assert code == 2 and "disallowed special token" in err
    code, out, _ = run(
        capsys,
        "tokenizer",
        "encode",
        "--tokenizer",
        str(tmp_path / "t"),
        "--text",
        "<|endoftext|>",
        "--plain-special",
    )
    assert code == 0 and small.eot_id not in json.loads(out)
    code, _, err = run(
        capsys, "tokenizer", "import", "--hf", str(tmp_path / "missing.json"), "--out", str(tmp_path / "x")
    )
    assert code == 2 and "no such tokenizer file" in err


def test_extend_a_tokenizer_with_special_tokens(capsys, tmp_path):
    base = Tokenizer.train(["abc abd abe"] * 5, 300, pattern="gpt2", show_progress=False)
    base.save(tmp_path / "base")
    code, _, err = run(
        capsys, "tokenizer", "import", "--hf", str(tmp_path / "base"), "--special", "<|tool|>",
        "--out", str(tmp_path / "more"),
    )  # fmt: skip
    assert code == 0, err
    more = Tokenizer.load(tmp_path / "more")
    assert more.special_tokens == {**base.special_tokens, "<|tool|>": base.vocab_size}
    assert more.ranks == base.ranks and more.pattern == base.pattern


def test_train_reads_the_train_split_of_a_prepared_dir(capsys, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    prepared = tmp_path / "prepared"
    for split, text in [("train", "hello world " * 50), ("val", "VALIDATION " * 50)]:
        (prepared / split).mkdir(parents=True)
        table = pa.table({"text": [text], "source": [split]})
        pq.write_table(table, prepared / split / "part-00000.parquet")
    (prepared / "stats.json").write_text("{}")
    code, _, err = run(
        capsys, "tokenizer", "train", str(prepared), "--vocab-size", "270", "--out", str(tmp_path / "t")
    )
    assert code == 0, err
    learned = {t for t, i in Tokenizer.load(tmp_path / "t").ranks.items() if i >= 256}
    assert b" worl" in learned and not any(b"VAL" in t or b"ION" in t for t in learned)


@pytest.fixture
def small_dir(tmp_path):
    Tokenizer.train(["abc abc"], 300, show_progress=False).save(tmp_path / "t")
    return tmp_path / "t"


def stdin_bytes(monkeypatch, data: bytes) -> None:
    """Stdin as Python sets it up in a UTF-8 locale (bytes that are not UTF-8 surrogate-escaped)."""
    monkeypatch.setattr(
        "sys.stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="surrogateescape")
    )


def test_encode_refuses_text_that_is_not_utf8(capsys, monkeypatch, small_dir):
    stdin_bytes(monkeypatch, b"ab\xffc")
    code, out, err = run(capsys, "tokenizer", "encode", "--tokenizer", str(small_dir))
    assert code == 2 and out == "" and err.count("\n") == 1 and "byte 0xff at offset 2" in err
    # Python hands argv bytes that are not UTF-8 over as lone surrogates (surrogateescape).
    code, out, err = run(capsys, "tokenizer", "encode", "--tokenizer", str(small_dir), "--text", "é\udcffb")
    assert code == 2 and out == "" and err.count("\n") == 1 and "byte 0xff at offset 2" in err


@pytest.mark.parametrize("ids", [["1_0"], ["1", " \u0663"], ["+5"]])
def test_decode_accepts_only_ascii_decimal_ids(capsys, small_dir, ids):
    code, out, err = run(capsys, "tokenizer", "decode", "--tokenizer", str(small_dir), *ids)
    assert code == 2 and out == "" and "is not a token id" in err


@pytest.mark.parametrize("data", ['["65"]', "[65.0]"])
def test_decode_accepts_only_json_integers(capsys, monkeypatch, small_dir, data):
    stdin_bytes(monkeypatch, data.encode())
    code, out, err = run(capsys, "tokenizer", "decode", "--tokenizer", str(small_dir))
    assert code == 2 and out == "" and "is not a token id" in err
    stdin_bytes(monkeypatch, b"[97, 98]")
    code, out, _ = run(capsys, "tokenizer", "decode", "--tokenizer", str(small_dir))
    assert code == 0 and out == "ab\n"


@pytest.mark.parametrize("special", ["a", "abc"])
def test_import_refuses_a_special_that_is_an_ordinary_token(capsys, small_dir, tmp_path, special):
    code, _, err = run(
        capsys,
        "tokenizer",
        "import",
        "--hf",
        str(small_dir),
        "--special",
        special,
        "--out",
        str(tmp_path / "x"),
    )
    assert code == 2 and err.count("\n") == 1 and f"<|{special}|>" in err
    assert not (tmp_path / "x").exists()


def test_a_directory_named_tokenizer_json_is_one_line(capsys, tmp_path):
    (tmp_path / "t" / "tokenizer.json").mkdir(parents=True)
    code, _, err = run(capsys, "tokenizer", "encode", "--tokenizer", str(tmp_path / "t"), "--text", "a")
    assert code == 2 and err.count("\n") == 1 and "is a directory" in err


def test_tokenizer_output_never_replaces_a_model_directory_holding_a_tokenizer(capsys, small_dir, tmp_path):
    """Model and checkpoint directories carry a tokenizer.json; only a tokenizer directory may be replaced."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model_dir / name).write_bytes((small_dir / name).read_bytes())
    (model_dir / "model.safetensors").write_bytes(b"weights")
    (model_dir / "config.json").write_text("{}")
    assert main(["tokenizer", "import", "--hf", str(small_dir), "--out", str(model_dir)]) == 2
    assert "is not a tokenizer directory" in capsys.readouterr().err
    assert (model_dir / "model.safetensors").read_bytes() == b"weights"
    again = tmp_path / "again"
    assert main(["tokenizer", "import", "--hf", str(small_dir), "--out", str(again)]) == 0
    assert main(["tokenizer", "import", "--hf", str(small_dir), "--out", str(again)]) == 0  # a tokenizer dir: replaced


def test_a_file_browsers_hidden_file_does_not_stop_a_tokenizer_dir_being_replaced(capsys, small_dir, tmp_path):
    """A `.DS_Store` made the earlier tokenizer 'not a tokenizer directory' (tokens and model dirs
    let hidden files pass); a hidden folder such as `.git/` still refuses, as it would be lost."""
    out = tmp_path / "tok"
    assert main(["tokenizer", "import", "--hf", str(small_dir), "--out", str(out)]) == 0
    (out / ".DS_Store").write_bytes(b"finder")
    assert main(["tokenizer", "import", "--hf", str(small_dir), "--out", str(out), "--special", "<x>"]) == 0
    assert "<x>" in Tokenizer.load(out).special_tokens
    (out / ".git").mkdir()
    assert main(["tokenizer", "import", "--hf", str(small_dir), "--out", str(out)]) == 2
    assert "is not a tokenizer directory" in capsys.readouterr().err
    assert (out / ".git").is_dir() and "<x>" in Tokenizer.load(out).special_tokens


@pytest.mark.parametrize("extra", [
    ["encode", "--text", "hi", "--allow-special", "--plain-special"],  # contradictory: one wins silently
    ["stats", "x.txt", "--top", "-2"],  # a negative slice bound listed nearly every token
    ["encode", "--text", "hi", "--set", "bogus.key=1"],  # accepted and ignored before
])
def test_contradictory_or_meaningless_options_are_refused(small_dir, extra):
    with pytest.raises(SystemExit) as stopped:
        main(["tokenizer", extra[0], "--tokenizer", str(small_dir), *extra[1:]])
    assert stopped.value.code == 2


def test_train_refuses_inputs_without_documents(capsys, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    empty = tmp_path / "zero.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), empty)
    assert main(["tokenizer", "train", str(empty), "--vocab-size", "300", "--out", str(tmp_path / "tok")]) == 2
    assert "no documents in the inputs" in capsys.readouterr().err
    assert not (tmp_path / "tok").exists()


@pytest.mark.parametrize("text", ["", " \n\t\n" * 100])
def test_train_refuses_inputs_of_whitespace_alone(capsys, tmp_path, text):
    data = tmp_path / "blank.txt"
    data.write_text(text)  # one document, empty or blank: a tokenizer of bytes alone was saved
    assert main(["tokenizer", "train", str(data), "--vocab-size", "300", "--out", str(tmp_path / "tok")]) == 2
    err = capsys.readouterr().err
    assert "no text but whitespace in the inputs" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "tok").exists()


def test_train_and_stats_read_the_text_field_named(capsys, tmp_path):
    data = tmp_path / "body.jsonl"
    data.write_text("".join(json.dumps({"body": f"words and more words {i}"}) + "\n" for i in range(30)))
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", str(data), "--text-field", "body", "--vocab-size", "300", "--out", str(out)]) == 0
    assert main(["tokenizer", "stats", "--tokenizer", str(out), str(data), "--text-field", "body", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["documents"] == 30


def test_train_and_stats_read_the_hf_split_named(capsys, tmp_path):
    datasets = pytest.importorskip("datasets", reason="hf: inputs need the optional datasets library")
    saved = tmp_path / "dict"
    docs = [f"held out words and more words {i}" for i in range(30)]
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict({"text": docs})}).save_to_disk(str(saved))
    out = tmp_path / "tok"
    argv = ["tokenizer", "train", f"hf:{saved}", "--vocab-size", "300", "--out", str(out), "--workers", "1"]
    code, _, err = run(capsys, *argv, "--hf-split", "validation")
    assert code == 0, err
    code, out_text, err = run(capsys, "tokenizer", "stats", "--tokenizer", str(out), f"hf:{saved}", "--hf-split", "validation", "--json")
    assert code == 0, err
    assert json.loads(out_text)["documents"] == 30
    for command in (argv, ["tokenizer", "stats", "--tokenizer", str(out), f"hf:{saved}"]):  # train by default
        code, _, err = run(capsys, *command)
        assert code == 2 and "no split 'train'" in err and len(err.strip().splitlines()) == 1


def test_a_vocabulary_smaller_than_asked_says_why(capsys, tmp_path):
    """--vocab-size 400 gave 332 with exit 0 and only the number to notice it by."""
    data = tmp_path / "small.txt"
    data.write_text("the cat sat on the mat " * 30)
    code, _, err = run(capsys, "tokenizer", "train", str(data), "--vocab-size", "400", "--out", str(tmp_path / "t"),
                       "--workers", "1")
    vocab = Tokenizer.load(tmp_path / "t").vocab_size
    assert code == 0 and vocab < 400
    assert f"vocab {vocab} (asked for 400: no pair left seen at least 2 times; more text or a lower" in err
    code, _, err = run(capsys, "tokenizer", "train", str(data), "--vocab-size", str(vocab), "--out",
                       str(tmp_path / "t2"), "--workers", "1")
    assert code == 0 and "asked for" not in err


def test_a_short_vocabulary_at_min_frequency_1_suggests_no_lower_min_frequency(capsys, tmp_path):
    """At --min-frequency 1 the note said 'no pair left seen at least 1 times; more text or a lower
    --min-frequency gives more': there is no lower value, every word was one token already."""
    data = tmp_path / "small.txt"
    data.write_text("the cat sat on the mat")
    code, _, err = run(capsys, "tokenizer", "train", str(data), "--vocab-size", "400", "--out", str(tmp_path / "t"),
                       "--workers", "1", "--min-frequency", "1")
    vocab = Tokenizer.load(tmp_path / "t").vocab_size
    assert code == 0 and f"vocab {vocab} (asked for 400: no pair left to merge; more text gives more)" in err
    assert "--min-frequency" not in err


def test_stats_shows_each_partial_utf8_byte_token_by_its_bytes(capsys, tmp_path):
    """`tokenizer stats` printed every byte token that is part of a character as "\ufffd", so its
    common-token list showed different tokens as the same one."""
    data = tmp_path / "words.txt"
    data.write_text(" ".join(f"plain words {i}" for i in range(30)), encoding="utf-8")
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", str(data), "--vocab-size", "300", "--workers", "1", "--out", str(out)]) == 0
    accents = tmp_path / "accents.txt"
    accents.write_text("é€€", encoding="utf-8")  # bytes c3 a9, then e2 82 ac twice: no merges
    code, text, err = run(capsys, "tokenizer", "stats", "--tokenizer", str(out), str(accents))
    assert code == 0, err
    assert "\ufffd" not in text
    for shown in (r"\xe2", r"\x82", r"\xac", r"\xc3", r"\xa9"):
        assert f"  {shown} (bytes of a partial UTF-8 character)\n" in text
    code, text, err = run(capsys, "tokenizer", "stats", "--tokenizer", str(out), str(accents), "--json")
    rows = {row["token"]: (row["count"], row["partial_utf8"]) for row in json.loads(text)["most_common"]}
    assert rows == {r"\xe2": (2, True), r"\x82": (2, True), r"\xac": (2, True), r"\xc3": (1, True), r"\xa9": (1, True)}

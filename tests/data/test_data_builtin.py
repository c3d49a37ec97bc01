"""The built-in corpus: real prose from the Python install, deterministic, cached after extraction."""

from __future__ import annotations

import json
from itertools import islice

from scratchlm.data.builtin import cache_path, extract_python_docs
from scratchlm.data.sources import Document, iter_documents


def test_builtin_corpus_is_sized_ordered_and_cached():
    docs = list(iter_documents(["builtin:python-docs"]))
    assert cache_path().is_file()  # the first read extracted and cached it
    size = sum(len(d.text.encode("utf-8")) for d in docs)
    assert 1_500_000 <= size <= 2_500_000
    assert len(docs) > 1000
    assert docs[0].source.startswith("builtin:python-docs/topic/")
    assert any(d.source.startswith("builtin:python-docs/json.") for d in docs)
    assert not any(".test." in d.source or d.source.startswith("builtin:python-docs/test.") for d in docs)
    assert all(d.text.strip() == d.text and d.text for d in docs)
    # Reading again comes from the cache and gives the same documents in the same order.
    again = list(iter_documents(["builtin:python-docs"]))
    assert [(d.text, d.source) for d in again] == [(d.text, d.source) for d in docs]


def test_extraction_is_deterministic():
    first = [(d.text, d.source) for d in islice(extract_python_docs(), 1500)]
    second = [(d.text, d.source) for d in islice(extract_python_docs(), 1500)]
    assert first == second


def test_a_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    import scratchlm.data.builtin as builtin

    monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path))
    corpus = [Document("first document", "builtin:python-docs/a"), Document("second", "builtin:python-docs/b")]
    monkeypatch.setattr(builtin, "extract_python_docs", lambda: iter(corpus))
    for damage in (b'{"text": "first document", "source": "builtin:pyth', b"\xff\xfe", b'{"text": 1}\n'):
        cache_path().parent.mkdir(parents=True, exist_ok=True)
        cache_path().write_bytes(damage)
        assert list(iter_documents(["builtin:python-docs"])) == corpus
        rewritten = [json.loads(line) for line in cache_path().read_text().splitlines()]
        assert rewritten == [{"text": d.text, "source": d.source} for d in corpus]  # whole again


def test_a_cache_that_cannot_be_written_does_not_end_the_run(tmp_path, monkeypatch, capsys):
    """The cache is a shortcut: when it cannot be written (here its folder would be below a file,
    as with a read-only or missing home) the corpus is still read, with a note, not an error."""
    import scratchlm.data.builtin as builtin

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SCRATCHLM_CACHE", str(blocker / "cache"))
    corpus = [Document("first document", "builtin:python-docs/a"), Document("second", "builtin:python-docs/b")]
    monkeypatch.setattr(builtin, "extract_python_docs", lambda: iter(corpus))
    assert list(iter_documents(["builtin:python-docs"])) == corpus
    assert "cannot cache the built-in corpus" in capsys.readouterr().err
    assert blocker.read_text() == "not a folder"

"""The built-in corpus: real prose from the Python install, deterministic, cached after extraction."""

from __future__ import annotations

from itertools import islice

from scratchlm.data.builtin import cache_path, extract_python_docs
from scratchlm.data.sources import iter_documents


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

"""The built-in corpus `builtin:python-docs`: English prose that ships with every Python install.

It is the documentation topics of `pydoc_data.topics` (the text behind `help("if")`) followed by
the docstrings of the standard library's modules, classes and functions, read with `ast` (nothing
is imported or run), tests and installed packages excluded. One document per topic or docstring,
in a fixed order, so the main job needs no download. Extraction takes a few seconds, so the result
is cached as JSONL in the user cache directory, keyed by the Python version.
"""

from __future__ import annotations

import ast
import json
import os
import platform
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from scratchlm.data.sources import Document
from scratchlm.errors import DataError
from scratchlm.fsutil import atomic_write_text

CORPORA = ("python-docs",)
_FORMAT_VERSION = 1
# Directories of the standard library that hold tests, IDE internals, deprecated tools, build
# leftovers or third-party packages.
_SKIP_DIRS = {
    "test", "tests", "idle_test", "idlelib", "lib2to3", "distutils", "turtledemo",
    "__pycache__", "site-packages", "dist-packages", "lib-dynload", "_bundled",
}  # fmt: skip


def cache_dir() -> Path:
    """Where scratchlm caches derived files: $SCRATCHLM_CACHE, else $XDG_CACHE_HOME/scratchlm, else ~/.cache."""
    explicit = os.environ.get("SCRATCHLM_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "scratchlm"


def cache_path(name: str = "python-docs") -> Path:
    version = ".".join(map(str, sys.version_info[:3]))
    impl = platform.python_implementation().lower()
    return cache_dir() / "builtin" / f"{name}-{impl}-{version}-v{_FORMAT_VERSION}.jsonl"


def iter_builtin(name: str) -> Iterator[Document]:
    """The documents of built-in corpus `name`, extracted once and then read from the cache."""
    if name not in CORPORA:
        raise DataError(
            f"builtin:{name}: unknown built-in corpus; available: {', '.join('builtin:' + c for c in CORPORA)}"
        )
    path = cache_path(name)
    documents = _read_cache(path)
    if documents is None:  # not cached yet, or the cache is damaged: extract again
        documents = list(extract_python_docs())
        _write_cache(path, documents)
    yield from documents


def _write_cache(path: Path, documents: list[Document]) -> None:
    """Cache the extracted documents; a cache that cannot be written (a read-only or missing home,
    a full disk) is noted and skipped, since the corpus is already in hand: it used to end the run."""
    lines = (json.dumps({"text": d.text, "source": d.source}, ensure_ascii=False) for d in documents)
    try:
        atomic_write_text(path, "\n".join(lines) + "\n")
    except OSError as e:
        print(
            f"scratchlm: note: cannot cache the built-in corpus at {path} ({e.strerror or e}); "
            "it is extracted again next time (set SCRATCHLM_CACHE to a writable folder)",
            file=sys.stderr,
        )


def _read_cache(path: Path) -> list[Document] | None:
    """The cached documents, or None when there is no readable, well-formed cache.

    Read whole (about 2 MB) before the first document is used, so a damaged cache is rebuilt
    instead of ending the corpus part way through.
    """
    try:
        with open(path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):  # missing, or damaged
        return None
    if not records or not all(_is_cached_document(r) for r in records):
        return None
    return [Document(r["text"], r["source"]) for r in records]


def _is_cached_document(record: object) -> bool:
    return isinstance(record, dict) and isinstance(record.get("text"), str) and isinstance(record.get("source"), str)


def extract_python_docs() -> Iterator[Document]:
    """Topics first (sorted by name), then docstrings of the standard library (sorted by path)."""
    from pydoc_data.topics import topics

    for key in sorted(topics):
        text = topics[key].strip()
        if text:
            yield Document(text, f"builtin:python-docs/topic/{key}")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in _stdlib_sources(stdlib):
        module = ".".join(path.relative_to(stdlib).with_suffix("").parts)
        yield from _docstrings(path, module.removesuffix(".__init__"))


def _stdlib_sources(stdlib: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(stdlib):
        dirnames[:] = sorted(
            d for d in dirnames if d not in _SKIP_DIRS and not d.startswith((".", "config-"))
        )
        for name in sorted(filenames):
            if name.endswith(".py") and not name.startswith("test_"):
                found.append(Path(dirpath) / name)
    return sorted(found, key=lambda p: p.relative_to(stdlib).as_posix())


def _docstrings(path: Path, module: str) -> Iterator[Document]:
    """Module, class and function docstrings of one file, in source order, indentation removed."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):  # a few stdlib files are data or target other versions
        return

    def walk(node: ast.AST, qualname: str) -> Iterator[Document]:
        doc = ast.get_docstring(node, clean=True) if isinstance(node, _DOC_NODES) else None
        if doc and doc.strip():
            yield Document(doc.strip(), f"builtin:python-docs/{qualname}")
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                yield from walk(child, f"{qualname}.{child.name}")

    yield from walk(tree, module)


_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)

"""Look inside a tokens dir: what was tokenized, how long the documents are, what the ids say.

A quick way to catch a wrong tokenizer or a broken input before spending compute on training:
token and document counts, bytes per token, a document-length histogram, the most frequent
tokens and a decoded sample, all read from the memory-mapped files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scratchlm.data.loader import TokenDataset, check_tokenizer_match, read_meta
from scratchlm.errors import ConfigError, DataError, TokenizerError
from scratchlm.tokenizer import Tokenizer
from scratchlm.tokenizer.stats import token_label, token_text
from scratchlm.wording import counted

SCAN_CHUNK = 1 << 24  # tokens counted per step, so memory stays flat on any dataset size


@dataclass
class InspectConfig:
    path: str = ""  # the tokens dir
    split: str = "all"  # "train", "val" or "all"
    sample_chars: int = 400  # how much of the first document to decode and show
    top_tokens: int = 10  # how many of the most frequent tokens to list

    def validate(self) -> None:
        if not self.path:
            raise ConfigError("inspect: 'path' (a tokens dir) is required")
        if self.sample_chars < 0 or self.top_tokens < 0:
            raise ConfigError("inspect: sample_chars and top_tokens must be >= 0")


def length_histogram(lengths: np.ndarray) -> list[tuple[int, int, int]]:
    """Counts of document lengths in power-of-two buckets: (low, high inclusive, count)."""
    if not lengths.size:
        return []
    buckets = np.floor(np.log2(np.maximum(lengths, 1))).astype(np.int64)
    counts = np.bincount(buckets)
    return [(1 << b, (1 << (b + 1)) - 1, int(c)) for b, c in enumerate(counts) if c]


def token_counts(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """How often each id below `vocab_size` occurs; ids at or above it are left out (the caller
    compares the sum with the length), and never size a count table of their own: one damaged
    uint32 id would ask for gigabytes."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, len(tokens), SCAN_CHUNK):
        chunk = np.asarray(tokens[start : start + SCAN_CHUNK])
        if chunk.size and int(chunk.max()) >= vocab_size:
            chunk = chunk[chunk < vocab_size]
        counts += np.bincount(chunk, minlength=vocab_size)
    return counts


def _bytes_per_text_token(text_bytes: int, text_tokens: int) -> float | None:
    """Bytes per token without the one end-of-text marker per document, which encodes no bytes:
    the same measure as `tokenizer stats`, so the two numbers compare."""
    return text_bytes / text_tokens if text_tokens > 0 and text_bytes else None


def _split_report(ds: TokenDataset, tokenizer: Tokenizer | None, config: InspectConfig) -> dict[str, Any]:
    lengths = ds.document_lengths()
    recorded_bytes = int(ds.meta["splits"][ds.split].get("bytes", 0))
    report: dict[str, Any] = {
        "tokens": len(ds),
        "documents": ds.num_documents,
        "bytes": recorded_bytes,
        "bytes_per_token": _bytes_per_text_token(recorded_bytes, len(ds) - ds.num_documents),
        "document_tokens": None,
        "histogram": length_histogram(lengths),
    }
    if lengths.size:
        report["document_tokens"] = {
            "min": int(lengths.min()),
            "median": float(np.median(lengths)),
            "mean": float(lengths.mean()),
            "max": int(lengths.max()),
        }
    vocab_size = int(ds.meta["vocab_size"])
    counts = token_counts(ds.tokens, vocab_size)
    if int(counts.sum()) != len(ds):
        raise DataError(f"{ds.path}/{ds.split}.bin: holds ids >= vocab_size {vocab_size}")
    report["distinct_tokens"] = int(np.count_nonzero(counts))
    top = np.argsort(-counts, kind="stable")[: config.top_tokens]
    report["top_tokens"] = [
        {"id": int(i), "count": int(counts[i]), **_shown_token(tokenizer, int(i))} for i in top if counts[i]
    ]
    if tokenizer is not None and ds.num_documents and config.sample_chars:
        report["sample"] = _document_head(tokenizer, ds.document(0), config.sample_chars)
    return report


def _shown_token(tokenizer: Tokenizer | None, token_id: int) -> dict[str, Any]:
    """A token's text as `tokenizer stats` shows it: a byte that is part of a character as a
    `\\xNN` escape, since as U+FFFD every such token read the same."""
    if tokenizer is None:
        return {"text": None, "partial_utf8": None}
    shown = token_text(tokenizer.decode_bytes([token_id]))
    return {"text": shown["token"], "partial_utf8": shown["partial_utf8"]}


def _document_head(tokenizer: Tokenizer, ids: np.ndarray, chars: int) -> str:
    """The first `chars` characters of a document, decoded from only the tokens that can hold them.

    A .txt file is one document unless split, so the first may be a whole book or dump: decoding
    it all to show a few hundred characters took memory and time in proportion to it. Every
    token is at least one byte and a character at most four, so `4 * chars` bytes hold `chars`
    characters even when the cut splits one (its replacement character falls after them).
    """
    return tokenizer.decode(ids[: 4 * chars + 4].tolist())[:chars]


def inspect_tokens(config: InspectConfig) -> dict[str, Any]:
    """Everything `scratchlm data inspect` shows, as a JSON-ready dict."""
    config.validate()
    path = Path(config.path)
    meta = read_meta(path)
    splits = list(meta["splits"]) if config.split == "all" else [config.split]
    tokenizer = None
    tokenizer_note = None
    try:
        tokenizer = Tokenizer.load(path / "tokenizer")
        check_tokenizer_match(meta, tokenizer.sha256)
    except (TokenizerError, DataError) as e:
        tokenizer, tokenizer_note = None, f"tokenizer copy unusable, ids not decoded: {e}"
    return {
        "path": str(path),
        "dtype": meta["dtype"],
        "vocab_size": meta["vocab_size"],
        "eot_id": meta["eot_id"],
        "tokenizer_sha256": meta["tokenizer_sha256"],
        "tokenizer_note": tokenizer_note,
        "splits": {s: _split_report(TokenDataset.open(path, s), tokenizer, config) for s in splits},
    }


def format_report(info: dict[str, Any]) -> str:
    """The inspection as text for a terminal."""
    lines = [
        f"tokens dir  {info['path']}",
        f"dtype {info['dtype']}  vocab {info['vocab_size']}  eot id {info['eot_id']}  "
        f"tokenizer sha256 {info['tokenizer_sha256'][:16]}…",
    ]
    if info["tokenizer_note"]:
        lines.append(f"note: {info['tokenizer_note']}")
    if not info["splits"]:
        lines.append("no splits")
    for name, s in info["splits"].items():
        lines.append("")
        bpt = f"  {s['bytes_per_token']:.2f} bytes/token (end-of-text left out)" if s["bytes_per_token"] else ""
        lines.append(f"[{name}]  {counted(s['tokens'], 'token')}  {counted(s['documents'], 'document')}{bpt}")
        if s["document_tokens"]:
            d = s["document_tokens"]
            lines.append(
                f"document tokens: min {d['min']}  median {d['median']:.12g}  mean {d['mean']:.1f}  max {d['max']}"
            )
        if s["histogram"]:
            widest = max(c for _, _, c in s["histogram"])
            for low, high, count in s["histogram"]:
                bar = "#" * max(1, round(40 * count / widest))
                lines.append(f"  {low:>7}-{high:<7} {count:>10,}  {bar}")
        lines.append(f"distinct token ids: {s['distinct_tokens']:,} of {info['vocab_size']:,}")
        if s["top_tokens"]:
            shown = ", ".join(
                f"{t['id']} {token_label(t['text'], t['partial_utf8'])} ×{t['count']:,}" if t["text"] is not None
                else f"{t['id']} ×{t['count']:,}"
                for t in s["top_tokens"]
            )
            lines.append(f"most frequent: {shown}")
        if s.get("sample") is not None:
            lines.append("first document:")
            lines.extend("  | " + line for line in s["sample"].splitlines() or [""])
    return "\n".join(lines)


__all__ = ["InspectConfig", "format_report", "inspect_tokens", "length_histogram", "token_counts"]

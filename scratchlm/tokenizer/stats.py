"""How well a tokenizer fits some text: bytes per token, most used tokens, tokens never used."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import numpy as np

from scratchlm.tokenizer.patterns import encoded_length
from scratchlm.tokenizer.tokenizer import Tokenizer

BATCH = 256


def tokenizer_stats(tok: Tokenizer, texts: Iterable[str], top: int = 20) -> dict[str, Any]:
    """Encode `texts` (special-token text as plain text) and summarise the ids used."""
    usage = np.zeros(tok.vocab_size, dtype=np.int64)
    documents = total_bytes = 0
    batch: list[str] = []

    def flush() -> None:
        for ids in tok.encode_batch(batch):
            if ids:
                usage[:] += np.bincount(np.asarray(ids, dtype=np.int64), minlength=tok.vocab_size)
        batch.clear()

    for text in texts:
        documents += 1
        total_bytes += encoded_length(text)
        batch.append(text)
        if len(batch) >= BATCH:
            flush()
    flush()
    tokens = int(usage.sum())
    lengths = np.asarray(tok.token_bytes())
    merged = lengths >= 2  # tokens that merges made (single bytes and specials excluded)
    unused = int((merged & (usage == 0)).sum())
    order = np.argsort(-usage, kind="stable")[:top]
    return {
        "documents": documents,
        "bytes": total_bytes,
        "tokens": tokens,
        "bytes_per_token": total_bytes / tokens if tokens else 0.0,
        "vocab_size": tok.vocab_size,
        "merged_tokens": int(merged.sum()),
        "unused_merged_tokens": unused,
        "most_common": [
            {"id": int(i), **token_text(tok.decode_bytes([int(i)])), "count": int(usage[i])}
            for i in order
            if usage[i] > 0
        ],
    }


def token_text(raw: bytes) -> dict[str, Any]:
    """A token's text, and whether its bytes are whole UTF-8. A byte token that is part of a
    character is shown as `\\xNN` escapes: as U+FFFD, every such token looked the same. The
    escapes keep the JSON valid."""
    try:
        return {"token": raw.decode("utf-8"), "partial_utf8": False}
    except UnicodeDecodeError:
        return {"token": raw.decode("utf-8", "backslashreplace"), "partial_utf8": True}


def token_label(token: str, partial_utf8: bool) -> str:
    """How a terminal report names a token (`token_text`'s two fields): its text as a JSON string,
    or a partial character's `\\xNN` escapes marked as such, so they do not read as that text."""
    return f"{token} (bytes of a partial UTF-8 character)" if partial_utf8 else json.dumps(token, ensure_ascii=False)

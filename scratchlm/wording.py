"""Small pieces of the messages users read, shared so every command words counts alike."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """`n` and `noun`, plural unless `n` is 1 ("1 document", "2,048 tokens"): messages said
    "1 documents". The plural is `noun` + "s" unless given ("batches")."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {plural or noun + 's'}"


__all__ = ["counted"]

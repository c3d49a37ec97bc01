"""The Markdown report every CPU benchmark prints and writes under benchmarks/results/."""

from __future__ import annotations

from pathlib import Path


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """Lines of a Markdown table."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def publish(lines: list[str], out: str | Path) -> None:
    """Print the report and write it to `out` (its folder made if missing)."""
    text = "\n".join(lines) + "\n"
    print(text)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text, encoding="utf-8")

"""Document quality filters: the published Gopher rules (Rae et al. 2021, appendix A) and two of C4's.

Each rule is a small dataclass section of `FilterConfig` with `enabled` and its thresholds
(defaults are the published values), so `--set filters.stop_words.enabled=false` turns one off.
`first_failing_rule` returns the name of the first rule a document breaks; `data prepare` counts
removals as `quality:<name>`.

Words are whitespace-separated tokens. The repetition rules work on 64-bit hashes of words in
numpy, so a long document costs a few sorts rather than a Python loop over every n-gram.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

import numpy as np

# From the start of a word to its last letter: one match per word that has a letter, linear time.
_WORD_WITH_LETTER = re.compile(r"(?<!\S)\S*[^\W\d_]")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_BULLETS = ("•", "‣", "○", "●", "▪", "■", "□", "➢", "–", "-", "*")  # noqa: RUF001 - real bullet marks
_ELLIPSES = ("...", "…")
_MIX = np.uint64(0x9E3779B97F4A7C15)
_NOT_LETTER_OR_SPACE = bytes(b for b in range(128) if not (chr(b).isalpha() or chr(b).isspace()))


@dataclass
class WordCountRule:
    enabled: bool = True
    min: int = 50
    max: int = 100_000


@dataclass
class MeanWordLengthRule:
    enabled: bool = True
    min: float = 3.0
    max: float = 10.0


@dataclass
class SymbolRatioRule:
    """Hash marks and ellipses per word."""

    enabled: bool = True
    max: float = 0.1


@dataclass
class AlphaWordsRule:
    """Share of words that contain at least one letter."""

    enabled: bool = True
    min: float = 0.8


@dataclass
class StopWordsRule:
    """At least `min` occurrences of common English function words."""

    enabled: bool = True
    min: int = 2
    words: list[str] = field(default_factory=lambda: ["the", "be", "to", "of", "and", "that", "have", "with"])


@dataclass
class BulletLinesRule:
    """Share of lines that start with a bullet."""

    enabled: bool = True
    max: float = 0.9


@dataclass
class EllipsisLinesRule:
    """Share of lines that end with an ellipsis."""

    enabled: bool = True
    max: float = 0.3


@dataclass
class DuplicateBlocksRule:
    """Repeated lines (or paragraphs): share of them, and share of characters in them."""

    enabled: bool = True
    max_fraction: float = 0.3
    max_char_fraction: float = 0.2


@dataclass
class TopNgramRule:
    """Characters covered by the most frequent word n-gram, as a share of all word characters."""

    enabled: bool = True
    max_2: float = 0.20
    max_3: float = 0.18
    max_4: float = 0.16


@dataclass
class DuplicateNgramRule:
    """Characters in word n-grams seen earlier in the document (overlaps counted once)."""

    enabled: bool = True
    max_5: float = 0.15
    max_6: float = 0.14
    max_7: float = 0.13
    max_8: float = 0.12
    max_9: float = 0.11
    max_10: float = 0.10


@dataclass
class PhraseRule:
    """Documents containing a telltale phrase (C4: placeholder text, code braces)."""

    enabled: bool = True


@dataclass
class FilterConfig:
    """All quality rules; `enabled = false` turns every one off at once."""

    enabled: bool = True
    word_count: WordCountRule = field(default_factory=WordCountRule)
    mean_word_length: MeanWordLengthRule = field(default_factory=MeanWordLengthRule)
    symbol_ratio: SymbolRatioRule = field(default_factory=SymbolRatioRule)
    alpha_words: AlphaWordsRule = field(default_factory=AlphaWordsRule)
    stop_words: StopWordsRule = field(default_factory=StopWordsRule)
    bullet_lines: BulletLinesRule = field(default_factory=BulletLinesRule)
    ellipsis_lines: EllipsisLinesRule = field(default_factory=EllipsisLinesRule)
    duplicate_lines: DuplicateBlocksRule = field(default_factory=DuplicateBlocksRule)
    duplicate_paragraphs: DuplicateBlocksRule = field(default_factory=DuplicateBlocksRule)
    top_ngram: TopNgramRule = field(default_factory=TopNgramRule)
    duplicate_ngram: DuplicateNgramRule = field(default_factory=DuplicateNgramRule)
    lorem_ipsum: PhraseRule = field(default_factory=PhraseRule)  # C4
    # C4 drops pages with "{", which would remove every code example, so it is off by default.
    curly_bracket: PhraseRule = field(default_factory=lambda: PhraseRule(enabled=False))

    def rule_names(self) -> list[str]:
        return [f.name for f in fields(self) if f.name != "enabled"]


def first_failing_rule(text: str, config: FilterConfig) -> str | None:
    """The name of the first enabled rule `text` breaks, or None when it passes them all.

    Rules run cheapest first; a document is charged to the first rule it fails.
    """
    if not config.enabled:
        return None
    words = text.split()
    n_words = len(words)
    c = config
    if c.word_count.enabled and not (c.word_count.min <= n_words <= c.word_count.max):
        return "word_count"
    if c.mean_word_length.enabled:
        mean = sum(map(len, words)) / n_words if n_words else 0.0
        if not (c.mean_word_length.min <= mean <= c.mean_word_length.max):
            return "mean_word_length"
    if c.symbol_ratio.enabled:
        symbols = text.count("#") + text.count("...") + text.count("…")
        if symbols > c.symbol_ratio.max * max(n_words, 1):
            return "symbol_ratio"
    if c.alpha_words.enabled and (n_words == 0 or _words_with_letter(text) < c.alpha_words.min * n_words):
        return "alpha_words"
    if c.stop_words.enabled and not _has_stop_words(words, c.stop_words):
        return "stop_words"
    if c.lorem_ipsum.enabled and "lorem ipsum" in text.lower():
        return "lorem_ipsum"
    if c.curly_bracket.enabled and "{" in text:
        return "curly_bracket"
    lines = text.split("\n")
    if "\n\n" in text:
        lines = [line for line in lines if line.strip()]  # blank lines are not lines of content
    if c.bullet_lines.enabled and _too_many_marked_lines(text, lines, _BULLETS, True, c.bullet_lines.max):
        return "bullet_lines"
    if c.ellipsis_lines.enabled and _too_many_marked_lines(
        text, lines, _ELLIPSES, False, c.ellipsis_lines.max
    ):
        return "ellipsis_lines"
    if c.duplicate_lines.enabled and _too_repetitive(lines, c.duplicate_lines):
        return "duplicate_lines"
    if c.duplicate_paragraphs.enabled:
        paragraphs = [p for p in _PARAGRAPH_BREAK.split(text) if p.strip()] if "\n\n" in text else [text]
        if _too_repetitive(paragraphs, c.duplicate_paragraphs):
            return "duplicate_paragraphs"
    if (c.top_ngram.enabled or c.duplicate_ngram.enabled) and n_words >= 2:
        hashes = np.fromiter(map(hash, words), dtype=np.int64, count=n_words).view(np.uint64)
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=n_words)
        total_chars = int(lengths.sum())
        if c.top_ngram.enabled and _top_ngram_too_common(hashes, lengths, total_chars, c.top_ngram):
            return "top_ngram"
        if c.duplicate_ngram.enabled and _duplicate_ngrams_too_common(
            hashes, lengths, total_chars, c.duplicate_ngram
        ):
            return "duplicate_ngram"
    return None


def _words_with_letter(text: str) -> int:
    """How many whitespace-separated words contain a letter.

    ASCII text takes a fast path: delete every byte that is neither a letter nor whitespace, and
    the words left are exactly those that had a letter.
    """
    if text.isascii():
        return len(text.encode("ascii").translate(None, _NOT_LETTER_OR_SPACE).split())
    return len(_WORD_WITH_LETTER.findall(text))


def _has_stop_words(words: list[str], rule: StopWordsRule) -> bool:
    stop = frozenset(rule.words)
    found = 0
    for word in words:  # stops early: most documents reach the minimum within a few words
        if word in stop:
            found += 1
            if found >= rule.min:
                return True
    return found >= rule.min


def _too_many_marked_lines(
    text: str, lines: list[str], marks: tuple[str, ...], start: bool, limit: float
) -> bool:
    """Whether more than `limit` of the lines start (or end) with one of `marks`, spaces aside.

    Each marked line holds at least one mark, so when the marks are too few in the whole text the
    per-line check is skipped.
    """
    if not lines or sum(text.count(m) for m in marks) <= limit * len(lines):
        return False
    if start:
        hits = sum(1 for line in lines if line.lstrip().startswith(marks))
    else:
        hits = sum(1 for line in lines if line.rstrip().endswith(marks))
    return hits > limit * len(lines)


def _too_repetitive(blocks: list[str], rule: DuplicateBlocksRule) -> bool:
    """Gopher's duplicate line/paragraph test: repeats after the first occurrence are duplicates."""
    if not blocks:
        return False
    unique = set(blocks)
    dup_count = len(blocks) - len(unique)
    if dup_count == 0:
        return False
    if dup_count > rule.max_fraction * len(blocks):
        return True
    total_chars = sum(map(len, blocks))
    dup_chars = total_chars - sum(map(len, unique))
    return dup_chars > rule.max_char_fraction * max(total_chars, 1)


def ngram_hashes(word_hashes: np.ndarray, n: int) -> np.ndarray:
    """A 64-bit hash per word n-gram (position i covers words i..i+n-1), from per-word hashes."""
    m = len(word_hashes) - n + 1
    out = word_hashes[:m].copy()
    for k in range(1, n):
        out *= _MIX
        out ^= word_hashes[k : k + m]
    return out


def _runs(grams: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group equal n-gram hashes: (sort order, start of each run in sorted order, run lengths).

    The default (unstable) sort is the fast vectorized one; nothing below depends on the order of
    equal values.
    """
    order = np.argsort(grams)
    ordered = grams[order]
    new_run = np.empty(len(grams), dtype=bool)
    new_run[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new_run[1:])
    starts = np.flatnonzero(new_run)
    return order, starts, np.diff(np.append(starts, len(grams)))


def _top_ngram_too_common(hashes, lengths, total_chars, rule: TopNgramRule) -> bool:
    cum = np.concatenate(([0], np.cumsum(lengths)))
    for n, limit in ((2, rule.max_2), (3, rule.max_3), (4, rule.max_4)):
        if len(hashes) < n:
            break
        order, starts, counts = _runs(ngram_hashes(hashes, n))
        top = int(counts.max())
        if top < 2:
            break  # no n-gram repeats, so no longer one can
        tied = order[starts[counts == top]]  # among equally frequent n-grams, the longest counts
        chars = int((cum[tied + n] - cum[tied]).max()) * top
        if chars > limit * total_chars:
            return True
    return False


def _duplicate_ngrams_too_common(hashes, lengths, total_chars, rule: DuplicateNgramRule) -> bool:
    """Words inside any n-gram occurrence that repeats an earlier one count as duplicated.

    Repeats of an (n+1)-gram are repeats of its n-grams too, so the duplicated share only falls as
    n grows: when it is under every limit for the smallest n, larger n need no check.
    """
    limits = [(n, getattr(rule, f"max_{n}")) for n in range(5, 11)]
    smallest_limit = min(limit for _, limit in limits)
    for n, limit in limits:
        if len(hashes) < n:
            break
        order, starts, counts = _runs(ngram_hashes(hashes, n))
        if counts.max() < 2:
            return False
        repeat = np.ones(len(order), dtype=bool)
        repeat[np.minimum.reduceat(order, starts)] = False  # the earliest of each run is the original
        repeat_starts = np.flatnonzero(repeat)
        cover = np.zeros(len(hashes) + 1, dtype=np.int64)
        np.add.at(cover, repeat_starts, 1)
        np.add.at(cover, repeat_starts + n, -1)
        covered = np.cumsum(cover[:-1]) > 0
        fraction = int(lengths[covered].sum()) / max(total_chars, 1)
        if fraction > limit:
            return True
        if fraction <= smallest_limit:
            return False
    return False

"""Pre-tokenization patterns: the regexes that cut text into words before BPE sees it.

BPE never merges across a word boundary, so the pattern decides what a token can be (no token
spans a letter and a digit, a word and the following space, ...). `gpt2` is GPT-2's pattern;
`gpt4` is the cl100k pattern (case-insensitive contractions, digits in groups of at most three,
newlines kept apart from other whitespace). Both are written without possessive quantifiers so
the same string works in Python's `regex`, in tiktoken (Rust `fancy-regex`) and in Hugging Face
`tokenizers` (Oniguruma).

A custom regex is checked on a probe text before it is used: its matches must cover every
character (what it skips is lost), and every engine must cut the probe into the same words (the
engines differ on some syntax, e.g. `\\h`, `(?s)`, and a pattern that means different things in
them gives a tokenizer whose ids depend on the tool that runs it).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import regex
import tiktoken

from scratchlm.errors import TokenizerError

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

GPT4_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}

# Short lines (each is checked with every substring as a token) covering what real text holds.
PROBE_TEXTS = (
    "Hello, World! The quick brown fox jumps over the lazy dog. It's 12345 o'clock; THEY'VE gone",
    "  two  spaces\tand\ttabs \t\n\n\r\n  \r\r\n\n   x  \x0b\x0c\u00a0\u2003end ",
    "Ünïcödé naïve café Straße; e\u0301 a\u0308o\u0323; Ελληνικά русский",
    "עברית العربية हिन्दी ٣٤٥ ½ 3.14 1,000,000 0x1F 1e-9 -42",
    "日本語のテキスト、中文文本。한국어 텍스트!「引用」",
    "emoji 🤖🚀👍🏽 flags 🇫🇷 zero\u200bwidth\u200djoiner ❤️ 👨‍👩‍👧",
    "def f(x):\n    return x ** 2  # comment\n\tif x == 0:\n\t\tpass\n",
    "a+=b->c<=d!=e && f||g; $h @i #j %k ^l &m *n `o` ~p \\q /r |s '\"",
    # Every other general category but surrogates (no UTF-8): a pattern built from categories
    # must not leave controls, private use, unassigned code points or noncharacters unmatched.
    # Unassigned (Cn) is probed through noncharacters only: they stay unassigned in every Unicode
    # version, where a code point unassigned today may not be in the next engine's tables.
    "\x00\x01\x02\x03\x04\x05\x06\x07\x08\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b"
    "\x1c\x1d\x1e\x1f\x7f\x80\x85\x9f x",
    "\u00ad\u0600\u061c\u200e\u2060\ufeff\U000e0001 a\u2028b\u2029c \u1680\u2000\u202f\u205f\u3000"
    " \u01c5 \u02b0 \u216b \u203f \u00ab\u00bb \u00a8 \u20ac \u00b1 a\u20dd\u0488",
    "\ue000\uf8ff\U000f0000\U0010fffd \ufdd0\ufffe\uffff\U0001fffe\U0010ffff end",
)

_BYTES = {bytes([i]): i for i in range(256)}


def encodable_text(text: str) -> str:
    """`text` as the pattern sees it when encoding: tiktoken cannot take surrogate code points
    (JSON escapes such as `\\ud800` make them), so it first joins each high + low pair into its
    character and turns every other surrogate into U+FFFD. Training cuts this same text, so its
    merges are learned on the very bytes that encoding produces."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # the repair tiktoken's `encode` and `encode_ordinary` make
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def encoded_length(text: str) -> int:
    """UTF-8 bytes of `text` as encoding sees it (`encodable_text`): the bytes its tokens spell, so
    bytes-per-token and bits-per-byte figures count what the tokens hold."""
    if text.isascii():
        return len(text)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return len(encodable_text(text).encode("utf-8"))


def resolve_pattern(pattern: str, probe: bool = True) -> str:
    """A preset name (`gpt2`, `gpt4`) or a custom regex, returned as a checked regex string.

    `probe` runs `check_pattern` where a pattern is chosen (training, importing). Loading a saved
    tokenizer only checks that the regex compiles: its tokens were made with it, and a verdict
    that depends on which optional engines are installed must not make them unreadable.
    """
    if not isinstance(pattern, str):
        raise TokenizerError(f"the pre-tokenization pattern must be a string, got {pattern!r}")
    if pattern in PATTERNS:
        return PATTERNS[pattern]
    if pattern in PATTERNS.values():  # a preset's regex, as saved in tokenizer.json
        return pattern
    if not pattern:
        raise TokenizerError("the pre-tokenization pattern is empty; use gpt2, gpt4 or a regex")
    if probe:
        check_pattern(pattern)
    else:
        _python_words(pattern, "")  # compiles, and does not match the empty string
    return pattern


@lru_cache(maxsize=64)
def check_pattern(pattern: str) -> None:
    """Refuse a regex that loses text or that the engines would split differently.

    Cached: a pattern's verdict never changes, and each check builds a probe vocabulary.
    """
    expected = [_python_words(pattern, text) for text in PROBE_TEXTS]
    for text, words in zip(PROBE_TEXTS, expected):
        if lost := _first_gap(words, text):
            raise TokenizerError(
                f"pattern {pattern!r} does not match every character (it skips {lost!r}); text such "
                f"as U+{ord(lost[0]):04X} would be lost"
            )
    for engine, words in (
        ("tiktoken", _tiktoken_words(pattern)),
        ("Hugging Face tokenizers", _hf_words(pattern)),
    ):
        if words is not None and words != expected:
            raise TokenizerError(
                f"pattern {pattern!r} splits text differently in {engine} than in Python's regex "
                f"({_first_difference(expected, words)}); the ids would depend on the tool"
            )


@lru_cache(maxsize=64)
def skips_text(pattern: str) -> bool:
    """Whether the regex leaves some character of the probe texts unmatched. A tokenizer loaded
    with such a pattern (an old save, a foreign file) must not encode: tiktoken drops what the
    pattern skips, without a word."""
    return any(skipped_text(pattern, text) for text in PROBE_TEXTS)


def skipped_text(pattern: str, text: str) -> str:
    """The first stretch of `text` the regex's matches leave out ("" when they cover it all)."""
    return _first_gap(_python_words(pattern, text), text)


@lru_cache(maxsize=16)
def word_finder(pattern: str) -> Callable[[str], list[str]]:
    """The words `pattern` cuts a text into: its whole matches, the words tiktoken and Hugging Face
    take. `findall` returns a group's text instead where the regex has a group (`(\\d+)`, or tuples
    for several), so training and the Python-side encoders would cut other words than tiktoken."""
    compiled = regex.compile(pattern)
    if not compiled.groups:
        return compiled.findall  # whole matches, and the fastest way to get them
    return lambda text: [match.group() for match in compiled.finditer(text)]


def _python_words(pattern: str, text: str) -> list[str]:
    try:
        compiled = regex.compile(pattern)
    except (regex.error, TypeError, ValueError) as e:
        raise TokenizerError(f"pattern {pattern!r} is not a valid regex: {e}") from None
    words = word_finder(pattern)(text)
    if compiled.match("") is not None or "" in words:
        raise TokenizerError(f"pattern {pattern!r} matches the empty string; it would lose text")
    return words


def _first_gap(words: list[str], text: str) -> str:
    """The first stretch of `text` that the matched words (in order) do not cover; "" if none."""
    at = 0
    for word in words:
        found = text.find(word, at)
        if found > at:
            return text[at:found]
        at = found + len(word)
    return text[at:]


def _first_difference(expected: list[list[str]], got: list[list[str]]) -> str:
    """Where two engines' words first part ways, for the error message."""
    for ours, theirs in zip(expected, got):
        for at, (a, b) in enumerate(zip(ours, theirs)):
            if a != b:
                return f"word {at + 1} is {a!r} in Python's regex but {b!r} there"
        if len(ours) != len(theirs):
            return f"{len(ours)} words in Python's regex but {len(theirs)} there"
    return "different words"


def _tiktoken_words(pattern: str) -> list[list[str]]:
    """tiktoken's words for each probe text: with every substring of the probe a token, tiktoken
    looks each word up whole, so each id it returns is exactly one word."""
    substrings = {
        text[start:end].encode("utf-8")
        for text in PROBE_TEXTS
        for start in range(len(text))
        for end in range(start + 1, len(text) + 1)
    }
    ranks = dict(_BYTES)
    for token in sorted(substrings - ranks.keys()):
        ranks[token] = len(ranks)
    try:
        encoding = tiktoken.Encoding("check", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
        return [
            [encoding.decode_single_token_bytes(i).decode("utf-8") for i in encoding.encode_ordinary(text)]
            for text in PROBE_TEXTS
        ]
    except ValueError as e:
        raise TokenizerError(
            f"pattern {pattern!r} is not supported by tiktoken's regex engine: {e}"
        ) from None


def _hf_words(pattern: str) -> list[list[str]] | None:
    """Hugging Face's words for each probe text (None when `tokenizers` is not installed)."""
    try:
        from tokenizers import Regex, pre_tokenizers
    except ImportError:
        return None
    try:
        split = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    except Exception as e:  # tokenizers raises a bare Exception for an Oniguruma error
        raise TokenizerError(
            f"pattern {pattern!r} is not supported by Hugging Face tokenizers' regex engine: {e}"
        ) from None
    return [[word for word, _span in split.pre_tokenize_str(text)] for text in PROBE_TEXTS]


def pattern_name(pattern: str) -> str:
    """The preset name of a regex, or the regex itself when it is a custom one."""
    for name, value in PATTERNS.items():
        if value == pattern:
            return name
    return pattern

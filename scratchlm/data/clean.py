"""Text cleaning: make every document valid, canonical Unicode with tidy whitespace.

Each step is a regular expression or a C-level library call, so cleaning runs at hundreds of MB/s.
Indentation inside lines is kept (code examples in prose stay readable); only line ends, blank
line runs and exotic space characters are normalized.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Lone surrogates can arrive through JSON escapes ("\udc80"); they cannot be written as UTF-8.
_SURROGATES = re.compile("[\ud800-\udfff]")
_NEWLINES = re.compile(r"\r\n?")
# Control characters that break a line (vertical tab: Word's manual line break; form feed: a page
# break; next line; the file, group and record separators) or separate words (the unit separator):
# made newlines and a space before the other controls go, so the words around them stay apart.
_LINE_BREAKING_CONTROL = re.compile("[\x0b\x0c\x1c-\x1e\x85]")
_UNIT_SEPARATOR = "\x1f"
# Control characters (Unicode category Cc) other than tab and newline.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Space characters other than the plain space, tab and newline: no-break, en/em, ideographic...
_ODD_SPACES = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_LINE_SEPARATOR, _PARAGRAPH_SEPARATOR = "\u2028", "\u2029"  # Unicode's own line and paragraph breaks
# U+FEFF, a byte-order mark or a zero-width no-break space: no width, so dropped, not made a space
# (which would indent a document that starts with one, or split the word it sits in).
_ZERO_WIDTH_NO_BREAK = "\ufeff"
_BLANK_RUNS = re.compile(r"\n{3,}")
_LEADING_BLANK_LINES = re.compile(r"\A(?:[^\S\n]*\n)+")
_ASCII_CONTROL = bytes(b for b in range(128) if (b < 32 and b not in (9, 10)) or b == 127)


@dataclass
class CleanConfig:
    """Which cleaning steps run. Invalid UTF-8 is always repaired (and counted)."""

    nfc: bool = True  # Unicode normalization form C
    # Drop control characters except newline and tab; CR and CRLF become LF, and the controls that
    # break lines (vertical tab, form feed, next line, separators) a newline (a space: unit separator).
    remove_control: bool = True
    # Odd spaces become spaces, no trailing blanks, at most one blank line in a row, leading blank
    # lines and trailing whitespace dropped (the first line keeps its indentation).
    normalize_whitespace: bool = True


def clean_text(text: str, config: CleanConfig | None = None) -> tuple[str, bool]:
    """The cleaned text, and whether lone surrogates (text decoded with `surrogateescape`) had to be
    repaired; U+FFFD from bytes that were not UTF-8 is counted where the file is read."""
    config = config or CleanConfig()
    repaired = False
    if not text.isascii() and _has_surrogates(text):
        text = _SURROGATES.sub("\ufffd", text)
        repaired = True
    if config.remove_control:
        if "\r" in text:
            text = _NEWLINES.sub("\n", text)
        text = _LINE_BREAKING_CONTROL.sub("\n", text).replace(_UNIT_SEPARATOR, " ")
        if text.isascii():  # bytes.translate deletes at memory speed
            raw = text.encode("ascii")
            kept = raw.translate(None, _ASCII_CONTROL)
            if len(kept) != len(raw):
                text = kept.decode("ascii")
        else:
            text = _CONTROL.sub("", text)
    if config.normalize_whitespace:
        text = _normalize_whitespace(text)
    if config.nfc and not text.isascii() and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return text, repaired


def _has_surrogates(text: str) -> bool:
    """Whether `text` holds lone surrogates; encoding is much faster than a regex scan."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _normalize_whitespace(text: str) -> str:
    """Odd spaces become spaces (U+FEFF, of no width, goes), Unicode's line and paragraph
    separators a newline and a blank line, lines lose trailing blanks, blank-line runs shrink to one, and
    the text loses its leading blank lines and trailing whitespace. The first line keeps its
    indentation: a document that starts with code must stay valid code.

    Cheap substring tests skip each step when it has nothing to do, which is the usual case.
    """
    if not text.isascii():
        text = _ODD_SPACES.sub(" ", text.replace(_ZERO_WIDTH_NO_BREAK, ""))
        text = text.replace(_PARAGRAPH_SEPARATOR, "\n\n").replace(_LINE_SEPARATOR, "\n")
    if " \n" in text or "\t\n" in text:
        text = "\n".join(line.rstrip(" \t") for line in text.split("\n"))
    if "\n\n\n" in text:
        text = _BLANK_RUNS.sub("\n\n", text)
    if text[:1].isspace():
        text = _LEADING_BLANK_LINES.sub("", text, count=1)
    return text.rstrip()

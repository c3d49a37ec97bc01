"""Cleaning: invalid UTF-8 repaired and reported, NFC, control characters, whitespace."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchlm.data.clean import CleanConfig, clean_text


def test_nfc_joins_combining_marks():
    text, repaired = clean_text("Cafe\u0301 cre\u0300me")
    assert text == "Caf\u00e9 cr\u00e8me"
    assert not repaired


def test_control_characters_removed_but_newline_and_tab_kept():
    text, _ = clean_text("a\x00b\x07c\td\x1be\x7ff\x85g\nh")
    assert text == "abc\tdef\ng\nh"  # U+0085, "next line", breaks the line as \n does


@pytest.mark.parametrize(
    "raw, cleaned",
    [
        ("first line\x0bsecond line", "first line\nsecond line"),  # Word's manual line break
        ("end of page.\x0cNext page", "end of page.\nNext page"),  # form feed
        ("line one\x85line two", "line one\nline two"),
        ("record\x1erecord\x1ffield", "record\nrecord field"),
        ("Para one.\u2029Para two.\u2028Line", "Para one.\n\nPara two.\nLine"),
        ("only\x0bascii", "only\nascii"),
    ],
)
def test_controls_and_separators_that_break_lines_keep_the_words_apart(raw, cleaned):
    """Deleted outright, they glued the words around them together ("first linesecond line")."""
    assert clean_text(raw)[0] == cleaned
    assert len(clean_text(raw)[0].split()) == len(raw.split())


def test_crlf_and_cr_become_newlines():
    assert clean_text("one\r\ntwo\rthree")[0] == "one\ntwo\nthree"


def test_whitespace_normalized_but_indentation_kept():
    raw = "  \n\ntitle\u00a0here   \n\n\n\n    indented code\t\n\u3000end  \n\n"
    assert clean_text(raw)[0] == "title here\n\n    indented code\n end"


def test_whitespace_normalization_can_be_switched_off():
    raw = "a  \n\n\n\nb"
    assert clean_text(raw, CleanConfig(normalize_whitespace=False))[0] == raw


def test_lone_surrogates_are_repaired_and_reported():
    text, repaired = clean_text("bad \udc80 byte")
    assert text == "bad \ufffd byte"
    assert repaired
    text.encode("utf-8")


# Any code point, plus the troublemakers: lone surrogates, CR, combining marks, odd spaces.
_TRICKY = st.sampled_from(
    ["\udc80", "\ud800", "\r", "\r\n", "\u0301", "\u00a0", "\u3000", "\n\n\n", " ", "\t", "\x00"]
)
_ANY_TEXT = st.lists(st.one_of(st.characters(), _TRICKY), max_size=120).map("".join)


@settings(max_examples=400, deadline=None)
@given(_ANY_TEXT)
def test_cleaning_never_crashes_and_is_stable(raw):
    text, _ = clean_text(raw)
    text.encode("utf-8")  # always valid UTF-8
    assert unicodedata.is_normalized("NFC", text)
    assert "\r" not in text and "\x00" not in text
    assert clean_text(text)[0] == text  # cleaning clean text changes nothing


def test_the_first_line_keeps_its_indentation():
    """`strip()` took the first line's indentation: code lost its structure."""
    code = "    if x:\n        y = 1\n"
    assert clean_text(code)[0] == "    if x:\n        y = 1"
    assert clean_text(" \n\t\n\n    indented\n  \n")[0] == "    indented"  # blank lines still go
    assert clean_text("\u3000 title  \t\n")[0] == "  title"
    assert clean_text(" \t \n ")[0] == ""


def test_a_zero_width_no_break_space_is_dropped_not_made_a_space():
    """U+FEFF (a BOM at the start of each concatenated file) became a space, and since the first
    line keeps its indentation, the document began with one: no longer an exact duplicate of
    itself without the BOM. In a word it split the word."""
    assert clean_text("\ufeffHello world")[0] == "Hello world"
    assert clean_text("\ufeffHello world")[0] == clean_text("Hello world")[0]
    assert clean_text("zero\ufeffwidth\u00a0space")[0] == "zerowidth space"

"""Text typed by a user, from the command line or standard input, checked to be UTF-8.

Python reads argv bytes that are not UTF-8 as lone surrogates and would decode stdin with
U+FFFD replacements; either way the text a command works on would silently differ from what was
typed. Both are refused here with the offending byte named.
"""

from __future__ import annotations

import sys

from scratchlm.errors import ScratchLMError


def read_stdin_text(error: type[ScratchLMError]) -> str:
    """All of stdin as UTF-8: a byte that is not UTF-8 is an `error`, never a silent U+FFFD.
    A process started with stdin closed (`<&-`) has `sys.stdin` None: an `error` too, not a traceback."""
    if sys.stdin is None:
        raise error("stdin is closed: there is no text to read (give the text another way, or pipe it in)")
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"stdin is not UTF-8: byte 0x{data[e.start]:02x} at offset {e.start}") from None


def checked_arg_text(flag: str, text: str, error: type[ScratchLMError]) -> str:
    """A command-line argument as given, or an `error` naming `flag` if its bytes are not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        offset = len(text[: e.start].encode("utf-8"))
        raise error(f"{flag} is not UTF-8: byte {_escaped_byte(text[e.start])} at offset {offset}") from None
    return text


def _escaped_byte(char: str) -> str:
    """The original byte of a surrogate-escaped character (U+DC80..U+DCFF), else the code point."""
    code = ord(char)
    return f"0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"

"""Errors a user can cause and act on.

Anything raised as a `ScratchLMError` is shown by the CLI as one line on stderr with exit code 2,
with no traceback (unless `--debug`). Raise these for bad paths, bad config, corrupt or mismatched
files and bad requests; let genuine bugs raise ordinary exceptions so they are loud.
"""

from __future__ import annotations

import re


class ScratchLMError(Exception):
    """Base class: a problem the user caused and can fix. The message is the whole explanation."""


class ConfigError(ScratchLMError):
    """A config file, key, value or override is wrong."""


class DataError(ScratchLMError):
    """An input file or dataset is missing, unreadable or malformed."""


class TokenizerError(ScratchLMError):
    """A tokenizer file is corrupt/foreign, or an encode/decode request is invalid."""


class ModelError(ScratchLMError):
    """A model directory, config or weights file is missing, corrupt or mismatched."""


class NonFiniteLogits(ModelError):
    """The model's logits hold NaN or inf: its weights do, or overflow. The trainer stops on it as
    on any other sign of divergence."""


class CheckpointError(ScratchLMError):
    """A training checkpoint is missing, incomplete or does not match the run."""


class TrainingStopped(ScratchLMError):
    """Training stopped on purpose (e.g. too many rollbacks); the message is the diagnosis."""


class PeerFailed(ScratchLMError):
    """Another process of a torchrun job failed at a step all of them take (rank 0's lock on
    train.out, its checkpoint write); that process's own message says why."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be: code that rolls back on an interrupt does so for both,
    and the CLI exits 143 for it (130 for Ctrl-C)."""


def one_line(text: str) -> str:
    """`text` fit for a one-line error: its lines joined with "; " (a library's message may span
    several, e.g. pyarrow's), other control characters shown as escapes (`\\x0e`), so no stray byte
    reaches the terminal."""
    joined = "; ".join(line.strip() for line in text.splitlines() if line.strip())
    return re.sub(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", lambda m: m.group().encode("unicode_escape").decode(), joined)


def first_line(error: BaseException) -> str:
    """The first line of an error's message ("no details" when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else "no details"


def torch_error_text(error: BaseException) -> str:
    """The first line of an error, without the `[enforce fail at file.cc:N] CONDITION.` prefix that
    torch's C++ checks put before their message."""
    return re.sub(r"^\[enforce fail at [^\]]*\]\s*(?:.*?\.\s+)?", "", first_line(error))

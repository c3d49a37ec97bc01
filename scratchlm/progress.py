"""Progress bars that appear on a terminal and stay silent in logs, CI and tests."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


def progress(iterable: Any = None, **kwargs: Any) -> tqdm:
    """A tqdm bar, disabled when stderr is not a TTY (pass disable=False to force it on)."""
    kwargs.setdefault("disable", not sys.stderr.isatty())
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)

"""What machine this is, in words: recorded beside every benchmark number and run report."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The processor's marketing name (Linux /proc/cpuinfo), or the platform's best guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe_machine() -> str:
    """One line: cores, CPU model and Python version."""
    return f"{os.cpu_count()} cores, {cpu_model()}, Python {platform.python_version()}"

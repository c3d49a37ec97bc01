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


def usable_cores() -> int:
    """The CPU cores this process may use: its affinity mask where the OS has one (`taskset`,
    container CPU sets), which `os.cpu_count()` ignores."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def describe_machine() -> str:
    """One line: usable cores, CPU model and Python version."""
    return f"{usable_cores()} cores, {cpu_model()}, Python {platform.python_version()}"

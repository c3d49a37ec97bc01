"""What machine this is, in words: recorded beside every benchmark number and run report."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# The instruction sets that decide matmul speed, shown when present: a VM's model name alone can
# hide the generation ("AMD EPYC" was given for both a Zen 4 and a Zen 5 machine, whose oneDNN
# float32 products ran at about 160 and 420 GFLOP/s on 2 cores).
MATRIX_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_model(cpuinfo: str | None = None) -> str:
    """The processor's marketing name (Linux /proc/cpuinfo), with its family, model number and
    matrix instruction sets where cpuinfo gives them; otherwise the platform's best guess."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.split("\n\n", 1)[0].splitlines():  # the first processor's block
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or "unknown"
    details = [f"{label} {fields[key]}" for key, label in (("cpu family", "family"), ("model", "model")) if key in fields]
    flags = set(fields.get("flags", "").split())
    present = " ".join(flag for flag in MATRIX_FLAGS if flag in flags)
    if present:
        details.append(present)
    return f"{name} ({', '.join(details)})" if details else name


def usable_cores() -> int:
    """The CPU cores this process may use: its affinity mask where the OS has one (`taskset`,
    container CPU sets), which `os.cpu_count()` ignores."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def describe_machine() -> str:
    """One line: usable cores, CPU model and Python version."""
    return f"{usable_cores()} cores, {cpu_model()}, Python {platform.python_version()}"

"""keep_freed_memory(): a large tensor's memory stays in the process after it is freed, ready
for the next step, where by default glibc hands it back to the kernel. Checked in a fresh
interpreter, since the setting is process-wide and irreversible."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only"
)

PROBE = """
import json, os, sys, torch
from scratchlm.train.host_memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
def resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
before = resident_mb()
t = torch.zeros(16 * 1024 * 1024)  # 64 MB: above glibc's largest mmap threshold
del t
print(json.dumps({"applied": applied, "kept_mb": resident_mb() - before}))
"""


def probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_memory_stays_in_the_process_only_when_asked():
    default, kept = probe("default"), probe("keep")
    assert kept["applied"] and not default["applied"]
    assert default["kept_mb"] < 8  # unmapped on free: the next step page-faults it in again
    assert kept["kept_mb"] > 56  # still resident, reusable without page faults

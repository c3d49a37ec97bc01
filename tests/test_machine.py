"""What the machine descriptions and default worker counts take as the machine."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity masks (Linux)")
def test_usable_cores_follow_the_affinity_mask_not_the_machine():
    """Under `taskset -c 0` (or a container's CPU set) one core is usable, whatever the machine
    has: worker counts and benchmark labels must say one."""
    code = (
        "import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
        "from scratchlm.machine import describe_machine, usable_cores; "
        "print(usable_cores()); print(describe_machine())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "1" and out[1].startswith("1 cores, ")

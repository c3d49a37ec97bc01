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


def test_the_cpu_description_tells_processor_generations_apart():
    """Two VMs that both call themselves "AMD EPYC" differ in family and instruction sets, and a
    benchmark's machine line must show which one measured."""
    from scratchlm.machine import cpu_model

    block = ("processor\t: {n}\nvendor_id\t: AuthenticAMD\ncpu family\t: {family}\nmodel\t\t: 2\n"
             "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 {extra}\n")
    zen5 = block.format(n=0, family=26, extra="avx512f avx512_bf16") + "\n" + block.format(n=1, family=26, extra="")
    assert cpu_model(zen5) == "AMD EPYC (family 26, model 2, avx2 avx512f avx512_bf16)"
    assert cpu_model(block.format(n=0, family=25, extra="")) == "AMD EPYC (family 25, model 2, avx2)"
    assert cpu_model("model name\t: Some CPU\n") == "Some CPU"

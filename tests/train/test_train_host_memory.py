"""keep_freed_memory(): a large tensor's memory stays in the process after it is freed, ready
for the next step, where by default glibc hands it back to the kernel; a CPU pretraining run
applies it unless `train.keep_host_memory = false`, and then frees gradients between steps
instead of zeroing kept buffers. Checked in fresh interpreters, since the setting is
process-wide and irreversible."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest
from train_core_helpers import build_tokens_dir, tiny_config, write_toml

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only"
)

PROBE = """
import json, os, resource, sys, torch
from scratchlm.train.host_memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
gradients = None
if sys.argv[1] not in ("keep", "default"):  # a pretraining config: train first, with its settings
    from scratchlm.train.config import load_pretrain_config
    from scratchlm.train.trainer import PretrainRun
    run = PretrainRun(load_pretrain_config(sys.argv[1], []))
    try:
        run.fit()
    finally:
        run.close()
    from scratchlm.train import host_memory
    applied = host_memory._applied  # what the run itself set up
    grads = [p.grad for p in run.model.parameters()]
    gradients = "freed" if all(g is None for g in grads) else "zeroed" if all(
        g is not None and not g.any() for g in grads) else "other"
def resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
before = resident_mb()
t = torch.zeros(16 * 1024 * 1024)  # 64 MB: above glibc's largest mmap threshold
del t
kept_mb = resident_mb() - before
for _ in range(5):  # the same size again, as the next training steps ask: faults in the last one
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.zeros(16 * 1024 * 1024)
    refaults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    del t
print(json.dumps({"applied": applied, "kept_mb": kept_mb, "refaults": refaults, "gradients": gradients}))
"""


def probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_memory_stays_in_the_process_only_when_asked():
    default, kept = probe("default"), probe("keep")
    assert kept["applied"] and not default["applied"]
    assert default["kept_mb"] < 8  # unmapped on free: the next step page-faults it in again
    assert kept["kept_mb"] > 56  # still resident, reusable without page faults


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    return build_tokens_dir(tmp_path_factory.mktemp("host-memory-data"))


@pytest.mark.parametrize("setting", [None, False], ids=["default", "off"])
def test_cpu_pretraining_keeps_freed_memory_unless_turned_off(setting, tokens, tmp_path):
    train = {"max_steps": 2} if setting is None else {"max_steps": 2, "keep_host_memory": setting}
    run = probe(str(write_toml(tiny_config(tokens, tmp_path / "run", train=train), tmp_path / "run.toml")))
    pages = 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    assert run["applied"] is (setting is None)
    if setting is None:  # the freed block is reused as it is: (almost) no page faults
        assert run["refaults"] < pages // 10
    else:  # handed back to the kernel and faulted in again, page by page
        assert run["refaults"] > pages // 2
    # Between steps the gradients are freed where freed memory is reused as it is; otherwise
    # taking them again would page-fault, so they are kept and zeroed.
    assert run["gradients"] == ("freed" if setting is None else "zeroed")

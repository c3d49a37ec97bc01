"""Parallel stages under a signal sent to the whole process group (a terminal's Ctrl-C, a
container stop): the signal reaches the workers too, often while they are still starting."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tokens_testdata import train_tiny_tokenizer

pytestmark = pytest.mark.skipif(not hasattr(os, "killpg"), reason="process groups are POSIX")


# The CLI with Python's own Ctrl-C handler, as a terminal's foreground job has it, even when this
# test runs where SIGINT is ignored (a background job inherits that, and so would the CLI).
LAUNCH = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'scratchlm'; runpy.run_module('scratchlm', run_name='__main__', alter_sys=True)"
)


def write_documents(path: Path) -> Path:
    """About 6 MB of text: a few seconds of work for two workers."""
    rng = random.Random(0)
    words = "to be or not that is the question whether tis nobler in mind suffer slings".split()
    with open(path, "w") as f:
        for i in range(40_000):
            f.write(f"{i} " + " ".join(rng.choices(words, k=30)) + "\n\n")
    return path


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("stage", ["prepare", "tokenize"])
def test_a_signal_to_the_whole_process_group_stops_a_parallel_stage_cleanly(tmp_path, stage, signame):
    """Workers used to die mid-start with tracebacks of their own, and prepare then hung at exit."""
    source = write_documents(tmp_path / "docs.txt")
    if stage == "prepare":
        args = ["data", "prepare", str(source), "--separator", "\n\n"]
    else:
        train_tiny_tokenizer(tmp_path / "tok")
        args = ["data", "tokenize", str(source), "--tokenizer", str(tmp_path / "tok")]
    before = set(tmp_path.iterdir())
    sig = getattr(signal, signame)
    cli = [*args, "--out", str(tmp_path / "out"), "--workers", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, *cli], stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(p.name.endswith(".partial") for p in tmp_path.iterdir()):
            assert proc.poll() is None and time.monotonic() < deadline, f"{stage} ended before it could be signalled"
            time.sleep(0.02)
        time.sleep(0.3)  # the workers are starting up
        os.killpg(proc.pid, sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and "Exception" not in err, err
    assert set(tmp_path.iterdir()) == before  # no output, no temp directory

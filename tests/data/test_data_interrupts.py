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


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # it ended meanwhile
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def running(pid: int) -> bool:
    """Whether `pid` still runs (a zombie waiting to be reaped does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_workers_of_a_run_killed_outright_end_with_it_and_free_its_tokens_dir(tmp_path):
    """A tokenize killed with SIGKILL (`kill -9`, the out-of-memory killer) left its workers
    waiting for work for ever on pipes they hold open themselves, keeping their memory and the
    tokens dir's lock: the re-run that rolls an interrupted append back was refused as busy for good."""
    train_tiny_tokenizer(tmp_path / "tok")
    first = tmp_path / "first.txt"
    first.write_text("a first document")
    cli = [sys.executable, "-m", "scratchlm", "data", "tokenize", "--tokenizer", str(tmp_path / "tok"),
           "--out", str(tmp_path / "tokens"), "--workers", "2"]
    subprocess.run([*cli, str(first)], check=True, capture_output=True)
    slow = tmp_path / "slow.txt"
    os.mkfifo(slow)  # the append waits here, its workers started, until it is killed
    proc = subprocess.Popen([*cli, str(slow), "--append"], stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "the append ended before it was killed"
            time.sleep(0.05)
            workers = children_of(proc.pid)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while any(running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [pid for pid in workers if running(pid)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in workers:
            if running(pid):
                os.kill(pid, signal.SIGKILL)
    assert left == []
    again = subprocess.run([*cli, str(first), "--append"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr

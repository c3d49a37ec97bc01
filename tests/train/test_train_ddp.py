"""Data parallelism on CPU: `torchrun --nproc_per_node=2` (DDP over gloo) takes the same steps
as one process with twice the gradient accumulation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_core_helpers import (
    build_tokens_dir,
    cli_ranks,
    read_rows,
    tiny_config,
    torchrun_cli,
    train_losses,
    write_toml,
)

from scratchlm.errors import ConfigError
from scratchlm.fsutil import exclusive_directory
from scratchlm.train.checkpoint import find_latest
from scratchlm.train.trainer import train


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    return build_tokens_dir(tmp_path_factory.mktemp("ddp-data"))


def test_two_processes_match_one_process_with_double_accumulation(tokens, tmp_path):
    settings = {"max_steps": 6, "batch_tokens": 256, "micro_batch": 4, "seq_len": 16, "eval_every": 3}
    single = tmp_path / "single"
    train(tiny_config(tokens, single, train=settings))  # 1 process x 4 micro-steps
    ddp = tmp_path / "ddp"
    toml = write_toml(tiny_config(tokens, ddp, train=settings), tmp_path / "ddp.toml")
    proc = torchrun_cli("pretrain", "--config", str(toml))
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = train_losses(read_rows(single)), train_losses(read_rows(ddp))
    assert one.keys() == two.keys() == set(range(1, 7))
    for step in one:
        assert two[step] == pytest.approx(one[step], abs=1e-5)
    # Norms as well: AdamW ignores the gradient's scale, so ranks' gradients summed instead of
    # averaged would leave the losses alike.
    norm_one, norm_two = ({r["step"]: r["grad_norm"] for r in read_rows(run) if "grad_norm" in r} for run in (single, ddp))
    assert norm_two == pytest.approx(norm_one, rel=1e-4) and len(norm_one) == 6
    val_one = [r["val_loss"] for r in read_rows(single) if "val_loss" in r]
    val_two = [r["val_loss"] for r in read_rows(ddp) if "val_loss" in r]
    assert val_two == pytest.approx(val_one, abs=1e-5)
    # Only rank 0 wrote: one train row per step, one checkpoint dir per save, one summary on stdout
    # (every rank used to print its own, so stdout was not one JSON document).
    assert len([r for r in read_rows(ddp) if "loss" in r and "event" not in r]) == 6
    summary = json.loads(proc.stdout)
    assert summary["steps"] == 6 and summary["world_size"] == 2
    assert (ddp / "checkpoints" / "step-000006" / "model.safetensors").is_file()


def test_fsdp_on_cpu_is_refused_before_train_out_is_made(tokens, tmp_path):
    """Refused only when the model was wrapped, the run had made train.out already: an empty
    folder that looked like a run."""
    out = tmp_path / "fsdp"
    toml = write_toml(tiny_config(tokens, out, train={"strategy": "fsdp", "max_steps": 2}), tmp_path / "fsdp.toml")
    # Not torchrun: its agent ends the other worker as soon as one exits, and on a busy machine the
    # slower one was ended ("scratchlm: terminated") before it could say anything.
    ranks = cli_ranks("pretrain", "--config", str(toml))
    for proc in ranks:
        said = proc.stderr.strip().splitlines()
        assert proc.returncode != 0
        assert len(said) == 1 and "needs CUDA" in said[0], proc.stderr[-3000:]
    assert not out.exists()


def test_a_train_out_another_run_holds_is_one_line_on_every_rank(tokens, tmp_path):
    """Rank 0 alone takes train.out's lock; the others went on to build the model and died in
    their next collective with a "Connection reset by peer" traceback that buried its message."""
    out = tmp_path / "busy"
    out.mkdir()
    toml = write_toml(tiny_config(tokens, out, train={"max_steps": 2}), tmp_path / "busy.toml")
    with exclusive_directory(out, "held by the test", ConfigError):
        ranks = cli_ranks("pretrain", "--config", str(toml))
    said = [r.stderr.strip().splitlines() for r in ranks]
    assert [r.returncode for r in ranks] == [2, 2], said
    assert len(said[0]) == 1 and "another pretraining run is writing there now" in said[0][0], said
    assert said[1] == ["scratchlm: error: rank 0 failed: see its message"]
    assert list(out.iterdir()) == []


def test_a_log_rank_0_cannot_open_is_one_line_on_every_rank(tokens, tmp_path):
    """Rank 0 alone opens metrics.jsonl and writes run_config.json; when it could not, the others
    went on to their first step and died in its all-reduce with a gloo traceback."""
    out = tmp_path / "unwritable-log"
    (out / "metrics.jsonl").mkdir(parents=True)  # a folder where the log goes: no file opens there
    toml = write_toml(tiny_config(tokens, out, train={"max_steps": 2}), tmp_path / "log.toml")
    ranks = cli_ranks("pretrain", "--config", str(toml))
    said = [r.stderr.strip().splitlines() for r in ranks]
    assert [r.returncode for r in ranks] == [2, 2], said
    assert said[0][-1].startswith("scratchlm: error: train.out = ") and "cannot write the run there" in said[0][-1]
    assert said[1] == ["scratchlm: error: rank 0 failed: see its message"]


def _job_processes(marker: str) -> list[int]:
    """The pids of live processes whose command line holds `marker` (Linux's /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("State:"))
            except (OSError, StopIteration):
                continue  # gone meanwhile
            if marker in command and "zombie" not in state:
                pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")
def test_workers_of_a_killed_torchrun_save_a_checkpoint_and_exit(tokens, tmp_path):
    """torchrun killed outright (`kill -9`, the out-of-memory killer) left its workers training
    on, unseen, holding train.out: the job's `--resume` was refused as busy."""
    out = tmp_path / "orphans"
    toml = write_toml(tiny_config(tokens, out, train={"max_steps": 100_000}), tmp_path / "orphans.toml")
    log = (tmp_path / "torchrun.log").open("w")
    agent = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "scratchlm", "pretrain", "--config", str(toml)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while not ((out / "metrics.jsonl").is_file() and read_rows(out)):  # training has begun
            assert agent.poll() is None and time.monotonic() < deadline, (tmp_path / "torchrun.log").read_text()
            time.sleep(0.2)
        agent.kill()
        agent.wait()
        deadline = time.monotonic() + 60
        while _job_processes(str(toml)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _job_processes(str(toml)), "the workers outlived torchrun"
    finally:
        for pid in _job_processes(str(toml)):
            os.kill(pid, signal.SIGKILL)
        log.close()
    saved = find_latest(out / "checkpoints")  # the workers saved their state on the SIGTERM
    assert saved is not None
    step = int(saved.name.removeprefix("step-"))
    resumed = torchrun_cli("pretrain", "--config", str(toml), "--resume", "--set", f"train.max_steps={step + 2}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]  # not refused: train.out was let go
    assert json.loads(resumed.stdout)["steps"] == step + 2

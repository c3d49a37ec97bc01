"""Data parallelism on CPU: `torchrun --nproc_per_node=2` (DDP over gloo) takes the same steps
as one process with twice the gradient accumulation."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from train_core_helpers import build_tokens_dir, read_rows, tiny_config, train_losses, write_toml

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
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "scratchlm", "pretrain", "--config", str(toml)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
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

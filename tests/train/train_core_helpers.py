"""Shared pieces of the trainer-core tests: a real tokens dir and a tiny run config."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from scratchlm.config import from_dict, to_dict
from scratchlm.train.config import PretrainConfig

# Tiny matrices gain nothing from a second thread, and on a busy 2-core machine they lose a lot.
torch.set_num_threads(1)

WORDS = (
    "the king shall speak of crowns and swords while the queen walks in the garden at night "
    "my lord the horses are ready and the river runs cold under the old stone bridge"
).split()


def corpus_documents(n: int = 240, seed: int = 0) -> list[str]:
    """Deterministic pseudo-English documents with enough structure for a model to learn."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        sentences = []
        for _ in range(rng.randint(2, 5)):
            start = rng.randrange(len(WORDS) - 8)
            sentences.append(" ".join(WORDS[start : start + rng.randint(4, 8)]).capitalize() + ".")
        docs.append(" ".join(sentences))
    return docs


def build_tokens_dir(root: Path, vocab_size: int = 320, val_every: int = 8, documents: int = 240) -> Path:
    """Train a small BPE tokenizer and tokenize the corpus with the real pipeline (`val_every=0`:
    no val split)."""
    from scratchlm.data.tokenize import TokenizeConfig, tokenize_dataset
    from scratchlm.tokenizer import Tokenizer

    docs = corpus_documents(documents)
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    tok = Tokenizer.train(docs, vocab_size=vocab_size)
    tok.save(root / "tokenizer")
    out = root / "tokens"
    config = TokenizeConfig(
        inputs=[str(corpus)], tokenizer=str(root / "tokenizer"), out=str(out), workers=1, val_every=val_every
    )
    tokenize_dataset(config)
    return out


def tiny_config(tokens: Path, out: Path, **sections: dict[str, Any]) -> PretrainConfig:
    """A model and run small enough for a test to train it in about a second on one core."""
    data: dict[str, Any] = {
        "data": {"tokens": str(tokens)},
        "model": {"n_layer": 1, "n_head": 2, "d_model": 32, "d_ff": 64, "max_seq_len": 32},
        "train": {
            "out": str(out),
            "device": "cpu",
            "precision": "fp32",
            "seed": 7,
            "max_steps": 12,
            "batch_tokens": 128,
            "micro_batch": 4,
            "seq_len": 16,
            "lr": 1e-2,
            "warmup_steps": 2,
            "eval_every": 0,
            "eval_batches": 2,
            "sample_tokens": 8,
            "checkpoint_every": 0,
            "log_every": 1,
            "progress_bar": False,
            "tensorboard": False,
        },
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return from_dict(PretrainConfig, data)


def write_toml(cfg: PretrainConfig, path: Path) -> Path:
    """The config as a TOML file (what the CLI and torchrun runs read)."""
    lines = []
    for section, values in to_dict(cfg).items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if value is not None:
                lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def torchrun_cli(*args: str, tee: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 -m scratchlm ARGS` on CPU. `tee` prefixes each line
    a worker writes with its rank (`[default1]:`), so a test can read what each one said."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               *(["--tee", "3"] if tee else []), "-m", "scratchlm", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_ranks(*args: str, world: int = 2, timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """`python -m scratchlm ARGS` as ranks 0..world-1 of one job, each with its own stdout and
    stderr. torchrun's agent would end the others as soon as one process fails, before they could
    say what they make of it: here each finishes on its own."""
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "scratchlm", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
                 "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
        )
        for rank in range(world)
    ]
    done = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return done


def read_rows(out: Path) -> list[dict[str, Any]]:
    from scratchlm.train.metrics import read_metrics

    return read_metrics(out / "metrics.jsonl")


def train_losses(rows: list[dict[str, Any]], after_event: str | None = None) -> dict[int, float]:
    """step -> loss of the train rows (only those after the last `after_event` event, if given)."""
    start = 0
    if after_event is not None:
        marks = [i for i, r in enumerate(rows) if r.get("event") == after_event]
        start = marks[-1] + 1 if marks else len(rows)
    return {r["step"]: r["loss"] for r in rows[start:] if "loss" in r and "event" not in r}


def events(rows: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("event") == name]

"""Each diagnosis fires on a run built to show its symptom, and stays quiet on a healthy run."""

from __future__ import annotations

import pytest
import torch
from train_core_helpers import build_tokens_dir, events, read_rows, tiny_config

from scratchlm.errors import TrainingStopped
from scratchlm.train import diagnosis
from scratchlm.train.trainer import train


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    return build_tokens_dir(tmp_path_factory.mktemp("diagnosis-data"))


def kinds(out) -> list[str]:
    return [e["kind"] for e in events(read_rows(out), "diagnosis")]


def test_checks_on_plain_numbers():
    assert diagnosis.loss_not_decreasing([5.0] * 40, lr=1e-6)
    assert "rose" in diagnosis.loss_not_decreasing([5.0] * 20 + [7.0] * 20, lr=1.0)
    assert diagnosis.loss_not_decreasing([5.0 - 0.05 * i for i in range(40)], lr=3e-4) is None
    assert diagnosis.distinct_ngram_share([1, 2, 3, 4] * 10) < 0.2
    assert diagnosis.distinct_ngram_share(list(range(40))) == 1.0
    assert diagnosis.low_throughput(0.3, 0.01, torch.device("cpu"), 1) is None


def test_healthy_run_has_no_loss_or_nan_diagnosis(tokens, tmp_path):
    train(tiny_config(tokens, tmp_path / "run", train={"max_steps": 24}))
    assert not {"loss_not_decreasing", "nonfinite", "repetitive_samples"} & set(kinds(tmp_path / "run"))


def test_flat_loss_suggests_an_lr_sweep(tokens, tmp_path):
    summary = train(tiny_config(tokens, tmp_path / "run", train={"max_steps": 24, "lr": 1e-8, "warmup_steps": 0}))
    assert "loss_not_decreasing" in kinds(tmp_path / "run")
    assert any("sweep-lr" in d and "3e-4" in d for d in summary["diagnoses"])


def test_exploding_run_says_clip_or_lower_the_lr(tokens, tmp_path):
    cfg = tiny_config(
        tokens, tmp_path / "run", train={"max_steps": 20, "lr": 1e30, "grad_clip": 0.0, "warmup_steps": 0}
    )
    with pytest.raises(TrainingStopped, match="non-finite"):
        train(cfg)
    rows = read_rows(tmp_path / "run")
    assert events(rows, "nan_skip")
    (diag,) = [e for e in events(rows, "diagnosis") if e["kind"] == "nonfinite"]
    assert "clipping" in diag["message"] and "learning rate" in diag["message"]


def test_repetitive_samples_say_widen_the_model(tokens, tmp_path):
    cfg = tiny_config(
        tokens,
        tmp_path / "run",
        model={"d_model": 8, "n_head": 1, "d_ff": 16},
        train={"max_steps": 6, "sample_tokens": 24, "sample_temperature": 0.0},
    )
    summary = train(cfg)
    assert "repetitive_samples" in kinds(tmp_path / "run")
    assert any("Widen" in d for d in summary["diagnoses"])


def test_starved_run_reports_low_throughput(tokens, tmp_path):
    cfg = tiny_config(tokens, tmp_path / "run", train={"max_steps": 10, "micro_batch": 1, "seq_len": 4, "batch_tokens": 4})
    train(cfg)
    (diag,) = [e for e in events(read_rows(tmp_path / "run"), "diagnosis") if e["kind"] == "low_throughput"]
    assert "utilisation" in diag["message"] and "GPU" in diag["message"]


def test_cpu_advice_counts_the_threads_of_every_process(monkeypatch):
    monkeypatch.setattr(diagnosis, "usable_cores", lambda: 4)  # the cores this process may use
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    alone = diagnosis.low_throughput(0.001, 0.01, torch.device("cpu"), 1)
    assert "uses 2 of 4 cores" in alone
    assert "cores" not in diagnosis.low_throughput(0.001, 0.01, torch.device("cpu"), 2)  # 2 processes × 2 threads

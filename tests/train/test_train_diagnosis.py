"""Each diagnosis fires on a run built to show its symptom, and stays quiet on a healthy run."""

from __future__ import annotations

import json

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
    assert diagnosis.loss_not_decreasing([5.0] * 40, diagnosis.Rates(1e-6))
    assert "rose" in diagnosis.loss_not_decreasing([5.0] * 20 + [7.0] * 20, diagnosis.Rates(1.0))
    assert diagnosis.loss_not_decreasing([5.0 - 0.05 * i for i in range(40)], diagnosis.Rates(3e-4)) is None
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


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_nonfinite_step_names_the_rates_it_trained_at(tokens, tmp_path, optimizer):
    """The advice said "lower the learning rate (now 0.01)" at a warmup step that trained at half
    that, never named Muon's own rate, and told an fp32 run to "prefer bf16" over fp16."""
    cfg = tiny_config(
        tokens, tmp_path / "run", train={"max_steps": 3, "warmup_steps": 4, "optimizer": optimizer, "muon_lr": 0.04},
        debug={"inject_nan_at_step": 1},  # the second step: warmup has the rates at 2/4
    )
    train(cfg)
    (diag,) = [e for e in events(read_rows(tmp_path / "run"), "diagnosis") if e["kind"] == "nonfinite"]
    message = diag["message"]
    if optimizer == "muon":
        assert "(train.lr = 0.01 and train.muon_lr = 0.04; 0.005 and 0.02 at this step of the schedule)" in message
    else:
        assert "(train.lr = 0.01; 0.005 at this step of the schedule)" in message
    assert "fp16" not in message and "bf16" not in message


def test_only_an_fp16_run_is_told_to_prefer_bf16():
    rates = diagnosis.Rates(1e-3)
    assert "prefer bf16" in diagnosis.nonfinite_loss(3, float("nan"), float("nan"), 1.0, rates, "fp16")
    for precision in ("fp32", "bf16"):
        assert "fp16" not in diagnosis.nonfinite_loss(3, float("nan"), float("nan"), 1.0, rates, precision)
    assert "bf16 instead of fp16" in diagnosis.instability(3, 2, 9.0, 4.0, 1.0, rates, 0.0, "fp16")
    assert "fp16" not in diagnosis.instability(3, 2, 9.0, 4.0, 1.0, rates, 0.0, "bf16")


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


def test_the_loss_history_stays_bounded_and_judges_as_the_losses_would():
    """Merged in pairs at the cap, the means keep the quarters' means, so the judgement is the one
    over every loss; a checkpoint older than the history gives an empty one, a damaged one None."""
    steps = 3 * diagnosis.LOSS_HISTORY_CAP + 5
    history = diagnosis.LossHistory()
    for i in range(steps):
        history.add(4.0 if i < steps // 2 else 4.2)
    assert len(history.means) < diagnosis.LOSS_HISTORY_CAP and history.count == steps
    said = history.judge(diagnosis.Rates(1e-3))
    assert said and "rose" in said and f"over {steps - len(history.pending)} steps" in said
    again = diagnosis.LossHistory.from_state(json.loads(json.dumps(history.state_dict())))
    assert again == history
    assert diagnosis.LossHistory.from_state(None) == diagnosis.LossHistory()
    assert diagnosis.LossHistory.from_state({"per_mean": 2, "means": [1.0], "pending": [1.0, 2.0]}) is None

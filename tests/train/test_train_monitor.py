"""The stability monitor on real runs: a NaN never reaches the weights, a spike is skipped or
rolled back, and too many rollbacks stop the run with a diagnosis."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from train_core_helpers import build_tokens_dir, events, read_rows, tiny_config, train_losses

from scratchlm.device import Precision
from scratchlm.errors import TrainingStopped
from scratchlm.train import trainer
from scratchlm.train.config import MonitorSection
from scratchlm.train.monitor import RollingStats, StabilityMonitor
from scratchlm.train.trainer import train

MONITOR = {"window": 20, "min_history": 5}


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    return build_tokens_dir(tmp_path_factory.mktemp("monitor-data"))


def test_rolling_stats_and_verdicts():
    stats = RollingStats(3)
    for v in (1.0, 2.0, 3.0, 4.0):
        stats.push(v)
    assert stats.mean() == 3.0 and stats.std() == 1.0
    mon = StabilityMonitor(MonitorSection(min_history=3))
    assert mon.judge(float("nan"), 1.0).kind == "nonfinite"
    assert mon.judge(1.0, float("inf")).kind == "nonfinite"
    for loss in (2.0, 2.01, 1.99, 2.0):
        assert mon.judge(loss, 1.0).ok
        mon.accept(loss, 1.0)
    assert mon.judge(2.05, 1.1).ok  # ordinary noise
    assert mon.judge(4.0, 1.0).kind == "spike"
    assert mon.judge(2.03, 50.0).kind == "spike"  # gradient blow-up with the loss turning up
    assert mon.judge(1.9, 50.0).ok  # a larger gradient while the loss keeps falling is no spike
    restored = StabilityMonitor(MonitorSection(min_history=3))
    restored.load_state_dict(mon.state_dict())
    assert restored.judge(4.0, 1.0).kind == "spike"


def test_a_lasting_level_change_is_not_skipped_forever():
    mon = StabilityMonitor(MonitorSection(min_history=3, max_consecutive_spikes=2))
    for loss in (2.0, 2.01, 1.99):
        mon.accept(loss, 1.0)
    assert [mon.judge(4.0, 1.0).kind for _ in range(3)] == ["spike", "spike", "shift"]
    mon.accept(4.0, 1.0)
    assert len(mon.loss) == 1 and mon.judge(4.1, 1.0).ok  # measured from the new level


def test_injected_nan_is_skipped_and_never_reaches_the_weights(tokens, tmp_path):
    out = tmp_path / "run"
    summary = train(tiny_config(tokens, out, train={"max_steps": 10}, debug={"inject_nan_at_step": 4}))
    rows = read_rows(out)
    skips = events(rows, "nan_skip")
    assert len(skips) == 1 and skips[0]["data_step"] == 4 and skips[0]["loss"] == "nan"
    assert summary["steps"] == 10 and summary["skipped_batches"] == 1
    assert all(math.isfinite(v) for v in train_losses(rows).values())
    weights = load_file(str(out / "checkpoints" / "step-000010" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_injected_spike_is_skipped(tokens, tmp_path):
    out = tmp_path / "run"
    summary = train(
        tiny_config(tokens, out, train={"max_steps": 12}, monitor=MONITOR, debug={"inject_spike_at_step": 8})
    )
    spikes = events(read_rows(out), "spike")
    assert len(spikes) == 1 and spikes[0]["action"] == "skip" and spikes[0]["data_step"] == 8
    assert summary["steps"] == 12 and summary["skipped_batches"] == 1 and summary["rollbacks"] == 0


def rollback_config(tokens, out, **monitor):
    """14 steps, checkpoints every 4, a spike injected at step 10, answered by rolling back."""
    return tiny_config(
        tokens,
        out,
        train={"max_steps": 14, "checkpoint_every": 4},
        monitor={**MONITOR, "response": "rollback", **monitor},
        debug={"inject_spike_at_step": 10},
    )


def test_injected_spike_rolls_back_to_last_good_checkpoint_and_completes(tokens, tmp_path):
    out = tmp_path / "run"
    summary = train(rollback_config(tokens, out, rollback_skip_batches=3))
    rows = read_rows(out)
    (rollback,) = events(rows, "rollback")
    assert rollback["step"] == 10 and rollback["to_step"] == 8 and rollback["checkpoint"] == "step-000008"
    # Batches 8 and 9 were trained on since the checkpoint, batch 10 spiked: all three are skipped.
    assert rollback["skipped_batches"] == 3
    assert summary["steps"] == 14 and summary["rollbacks"] == 1
    steps_after = [r["step"] for r in rows[rows.index(rollback) :] if "loss" in r and "event" not in r]
    assert steps_after == list(range(9, 15))  # steps 9.. are redone from the checkpoint
    assert all(math.isfinite(v) and v < 20 for v in train_losses(rows).values())


def test_too_many_rollbacks_stop_with_a_diagnosis(tokens, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingStopped, match="spikes"):
        train(rollback_config(tokens, out, max_rollbacks=0))
    diag = events(read_rows(out), "diagnosis")
    assert diag and diag[-1]["kind"] == "instability"
    assert "fp16" not in diag[-1]["message"]  # an fp32 run, which bf16 would not steady


@pytest.fixture
def fp16_with_grad_scaler(monkeypatch):
    """fp16's loss-scaling path on CPU: a GradScaler with fp32 arithmetic (CPU has no fp16 autocast
    worth testing, but the scaler's unscale/update bookkeeping is the same as on CUDA)."""
    monkeypatch.setattr(trainer, "resolve_precision", lambda *_: Precision("fp16", None, True))


@pytest.mark.parametrize(
    ("response", "fault"),
    [("skip", "inject_spike_at_step"), ("rollback", "inject_spike_at_step"), ("skip", "inject_nan_at_step")],
)
def test_fp16_run_trains_on_after_a_rejected_step(tokens, tmp_path, fp16_with_grad_scaler, response, fault):
    out = tmp_path / "run"
    cfg = tiny_config(
        tokens,
        out,
        train={"max_steps": 10, "checkpoint_every": 4},
        monitor={**MONITOR, "response": response, "rollback_skip_batches": 1},
        debug={fault: 6},
    )
    summary = train(cfg)
    assert summary["precision"] == "fp16" and summary["steps"] == 10
    rows = read_rows(out)
    rejected = events(rows, "nan_skip" if fault == "inject_nan_at_step" else "spike")
    assert rejected and rejected[0]["data_step"] == 6
    assert summary["rollbacks"] == (1 if response == "rollback" else 0)
    assert all(math.isfinite(v) for v in train_losses(rows).values())


def test_fp16_stops_on_gradients_that_stay_non_finite_whatever_the_scale(tokens, tmp_path, fp16_with_grad_scaler,
                                                                         monkeypatch):
    """A NaN gradient under a finite loss (here sqrt's at 0) was taken for an fp16 overflow at
    every step: the scaler halved its scale to nothing and the run skipped batch after batch,
    never stopping (12,000 skipped in 27 s) where fp32 stops after max_nonfinite steps."""

    def nan_gradients(loss, data_step, debug):
        return loss + (loss * 0).sqrt() if data_step >= 3 else loss

    monkeypatch.setattr(trainer, "inject_fault", nan_gradients)
    out = tmp_path / "run"
    cfg = tiny_config(tokens, out, train={"max_steps": 10, "max_seconds": 5.0}, monitor=MONITOR)
    with pytest.raises(TrainingStopped, match="5 non-finite steps in a row at step 3"):
        train(cfg)
    rows = read_rows(out)
    # 2**16 halves to below 1 in 17 overflows: while the scale magnifies the gradients (the first
    # 16), an overflow may be its doing; below 1 the gradients are non-finite on their own, and
    # max_nonfinite (5) of those in a row stop the run.
    assert len(events(rows, "nan_skip")) == 16 + 5
    assert [d["kind"] for d in events(rows, "diagnosis")] == ["nonfinite"]


def test_throughput_stays_positive_across_a_rollback(tokens, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(
        tokens,
        out,
        train={"max_steps": 12, "checkpoint_every": 5},
        monitor={**MONITOR, "response": "rollback", "rollback_skip_batches": 1},
        debug={"inject_spike_at_step": 8},
    )
    assert train(cfg)["rollbacks"] == 1
    rows = [r for r in read_rows(out) if "tokens_per_s" in r]
    assert len(rows) > 12  # steps 6..8 are trained twice
    assert all(r["tokens_per_s"] > 0 and r["mfu"] >= 0 for r in rows)


@pytest.mark.parametrize("settings", [{"min_history": 0}, {"window": 5, "min_history": 20}])
def test_a_history_the_monitor_can_never_judge_by_is_refused(settings):
    """min_history 0 judged the first steps against an empty history (10 good batches skipped);
    above the window it was never reached, so no spike was ever caught."""
    from scratchlm.errors import ConfigError

    with pytest.raises(ConfigError, match=r"monitor.min_history must be in \[1, monitor.window"):
        MonitorSection(**settings).validate()
    MonitorSection(window=5, min_history=5).validate()


def test_the_stop_after_non_finite_steps_quotes_their_advice_not_the_latest_diagnosis(tokens, tmp_path, monkeypatch):
    """A NaN at batch 3 gives the once-per-run non-finite diagnosis; a throughput diagnosis comes
    after it; the stop at the NaN streak used to quote the throughput advice."""

    def nans(loss, data_step, debug):
        return loss * float("nan") if data_step == 3 or 10 <= data_step <= 14 else loss

    monkeypatch.setattr(trainer, "inject_fault", nans)
    out = tmp_path / "run"
    cfg = tiny_config(tokens, out, train={"max_steps": 30}, monitor={**MONITOR, "max_nonfinite": 5, "low_mfu": 1.0})
    with pytest.raises(TrainingStopped) as stopped:
        train(cfg)
    message = str(stopped.value)
    assert message.startswith("5 non-finite steps in a row at step 9: ") and "non-finite" in message.split(": ", 1)[1]
    assert "utilisation" not in message
    kinds = [d["kind"] for d in events(read_rows(out), "diagnosis")]
    assert kinds.index("nonfinite") < kinds.index("low_throughput")  # the case this test is about


def test_two_rollbacks_to_one_checkpoint_count_each_skipped_batch_once(tokens, tmp_path, monkeypatch):
    """Spikes at batches 12 and 17, both rolled back to step 10: 8 positions were never trained
    on, and skipped_batches used to say 11."""

    def spikes(loss, data_step, debug):
        return loss * 50 if data_step in (12, 17) else loss

    monkeypatch.setattr(trainer, "inject_fault", spikes)
    out = tmp_path / "run"
    cfg = tiny_config(tokens, out, train={"max_steps": 20, "checkpoint_every": 5},
                      monitor={"min_history": 3, "response": "rollback", "rollback_skip_batches": 1, "max_rollbacks": 5})
    summary = train(cfg)
    rollbacks = events(read_rows(out), "rollback")
    assert [r["to_step"] for r in rollbacks] == [10, 10] and summary["rollbacks"] == 2
    final = json.loads((out / "checkpoints" / "step-000020" / "train_state.json").read_text())
    assert summary["skipped_batches"] == final["skipped_batches"] == final["data_step"] - final["step"] == 8


def test_a_run_stopped_right_after_a_rollback_keeps_the_skip(tokens, tmp_path, monkeypatch):
    """A stop before the next save left the checkpoint the rollback had read as the newest, with the
    data position before the spike: a resume met the spike again and the rollback count restarted."""
    import signal

    def spike(loss, data_step, debug):
        return loss * 50 if data_step == 12 else loss

    signalled = []

    def spike_then_stop(loss, data_step, debug):
        if data_step == 12 and not signalled:  # called for the loss and the objective: signal once
            signalled.append(True)
            signal.raise_signal(signal.SIGTERM)  # the trainer stops at the end of this step
        return spike(loss, data_step, debug)

    out = tmp_path / "run"
    cfg = tiny_config(tokens, out, train={"max_steps": 20, "checkpoint_every": 5},
                      monitor={"min_history": 3, "response": "rollback", "rollback_skip_batches": 1})
    monkeypatch.setattr(trainer, "inject_fault", spike_then_stop)
    first = train(cfg)
    assert first["stopped"] == "SIGTERM" and first["rollbacks"] == 1 and first["steps"] == 10
    monkeypatch.setattr(trainer, "inject_fault", spike)
    resumed = train(cfg, resume=True)
    assert resumed["steps"] == 20 and resumed["rollbacks"] == 1 and resumed["skipped_batches"] == 3
    assert len(events(read_rows(out), "spike")) == 1  # the spike batch was not met again


def test_the_losses_of_rolled_back_steps_leave_the_run_s_loss_history(tokens, tmp_path):
    """The loss-trend diagnosis judges the run's losses: those of the steps a rollback undid are
    not the run's (each step counts once, with the loss it was finally trained at)."""
    out = tmp_path / "run"
    train(rollback_config(tokens, out))
    saved = json.loads((out / "checkpoints" / "step-000014" / "train_state.json").read_text())
    losses = train_losses(read_rows(out))  # step -> its last logged loss: the redone steps' own
    assert saved["loss_history"]["means"] == [losses[s] for s in range(1, 15)]


def test_one_non_finite_step_is_worded_as_one(tokens, tmp_path):
    """With max_nonfinite = 1 the stop read "1 non-finite steps in a row"."""
    cfg = tiny_config(tokens, tmp_path / "run", train={"max_steps": 6}, monitor={**MONITOR, "max_nonfinite": 1},
                      debug={"inject_nan_at_step": 2})
    with pytest.raises(TrainingStopped, match=r"^1 non-finite step in a row at step 2: "):
        train(cfg)

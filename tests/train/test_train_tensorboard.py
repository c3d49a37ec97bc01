"""The optional TensorBoard writer: the same scalars as metrics.jsonl, readable by TensorBoard."""

from __future__ import annotations

import pytest
from train_core_helpers import build_tokens_dir, read_rows, tiny_config

from scratchlm.train.trainer import train

pytest.importorskip("tensorboard", reason="tensorboard is optional and not installed")


def test_tensorboard_events_carry_the_logged_losses(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (tmp_path / "data").mkdir()
    tokens = build_tokens_dir(tmp_path / "data")
    out = tmp_path / "run"
    train(tiny_config(tokens, out, train={"max_steps": 6, "eval_every": 6, "tensorboard": True}))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"loss", "lr", "val_loss", "val_bpb"} <= scalars
    logged = {r["step"]: r["loss"] for r in read_rows(out) if "loss" in r and "event" not in r}
    board = {e.step: e.value for e in events.Scalars("loss")}
    assert board.keys() == logged.keys()
    assert all(abs(board[s] - logged[s]) < 1e-5 * max(1.0, abs(logged[s])) for s in logged)


def test_a_resumed_run_hides_the_steps_it_trains_again(tmp_path):
    """purge_step: the events of steps after the checkpoint, logged before the kill, used to stay
    beside the resumed run's, each step twice."""
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (tmp_path / "data").mkdir()
    tokens = build_tokens_dir(tmp_path / "data")
    out = tmp_path / "run"
    cfg = tiny_config(tokens, out, train={"max_steps": 6, "checkpoint_every": 2, "keep_last": 5, "tensorboard": True})
    train(cfg)
    for name in ("step-000004", "step-000006", "latest"):  # as a kill -9 right after the step-2 save
        path = out / "checkpoints" / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    train(cfg, resume=True)
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4, 5, 6]

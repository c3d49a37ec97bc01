"""metrics.jsonl across a resume: cut back to the checkpoint, so no step is logged twice."""

from __future__ import annotations

import json
from pathlib import Path

from scratchlm.train.metrics import cut_after_checkpoint, read_metrics


def write_log(path: Path, rows: list[dict], tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail, encoding="utf-8")


def train(step: int) -> dict:
    return {"step": step, "loss": 5.0 - step, "lr": 1e-3}


RUN = [
    train(1), train(2), {"step": 2, "val_loss": 4.0, "val_bpb": 2.0, "sample": "x"},
    {"event": "diagnosis", "step": 2, "kind": "k", "message": "m"},
    {"event": "checkpoint", "step": 2, "path": "step-000002", "reason": "interval"},
    {"event": "nan_skip", "step": 2, "data_step": 2},  # the batch after the save: met again on resume
    train(3), {"event": "checkpoint", "step": 3, "path": "step-000003", "reason": "interval"}, train(4),
]


def test_a_resumed_log_ends_at_its_checkpoints_event(tmp_path):
    """Rows, evaluations and events before the save stay in order; everything after it goes,
    the line a kill cut short included."""
    path = tmp_path / "metrics.jsonl"
    write_log(path, RUN, tail='{"step": 5, "lo')
    assert cut_after_checkpoint(path, 2) == 5
    assert read_metrics(path) == RUN[:5]
    assert cut_after_checkpoint(path, 2) == 0  # nothing more to cut


def test_the_cut_follows_the_last_save_of_that_step(tmp_path):
    """A run resumed from step 2 and killed again before its next save: the second resume drops
    the first one's steps and its resume event."""
    path = tmp_path / "metrics.jsonl"
    rows = [*RUN[:5], train(3), {"event": "resume", "step": 2, "checkpoint": "step-000002"}, train(3), train(4)]
    write_log(path, rows)
    assert cut_after_checkpoint(path, 2) == 4
    assert read_metrics(path) == RUN[:5]


def test_without_the_checkpoints_event_the_records_up_to_its_step_stay(tmp_path):
    """Killed between the save and its log line: the log holds nothing past the step, but a partial
    last line (and, in general, any later step) goes."""
    path = tmp_path / "metrics.jsonl"
    rows = [train(1), train(2), {"step": 2, "val_loss": 4.0}, train(3)]
    write_log(path, rows, tail="{\"st")
    assert cut_after_checkpoint(path, 2) == 2
    assert read_metrics(path) == rows[:3]
    assert path.read_bytes().endswith(b"}\n")

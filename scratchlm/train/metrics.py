"""`metrics.jsonl` (one JSON object per line), when installed TensorBoard, and the lines a person
watching the run reads on stderr.

Rows: train (`step`, `loss`, `lr`, `grad_norm`, `tokens`, `tokens_per_s`, `mfu`, `elapsed_s`),
eval (`step`, `val_loss`, `val_bpb`, `sample`) and events (`event` plus details). Floats are
written at full precision so runs can be compared bit for bit. Only the main process writes. A
fresh run starts a new log; a resumed one continues the log as its checkpoint left it.

On stderr: evaluations always get a line; training rows get one only where no progress bar
shows them (stderr is a file or a pipe: `nohup`, `| tee`, a cluster's job log), so a run's log
says how it is going without the bar's carriage returns.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from scratchlm.fsutil import atomic_write_bytes

SAMPLE_CHARS = 160  # of a sample, in an evaluation's line


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Infinity
    return value


class MetricsLogger:
    """The run's log. Made before the run knows whether it starts or resumes (its `say` lines
    are needed from the first check on); `start` opens the files once that is settled."""

    def __init__(self, out_dir: str | Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / "metrics.jsonl"
        self.tensorboard = tensorboard
        self._file = None
        self._tb = None

    def start(self, resumed_step: int | None = None) -> int:
        """Open the log for the steps after `resumed_step` (None: a fresh run). A fresh run starts
        a new log; a resumed one first cuts the log back to its checkpoint (`cut_after_checkpoint`),
        as TensorBoard's is, so the steps it trains again are not there twice. Returns how many
        records the cut dropped."""
        if not self.enabled:
            return 0
        self.out_dir.mkdir(parents=True, exist_ok=True)
        dropped = 0
        if resumed_step is not None and self.path.exists():
            dropped = cut_after_checkpoint(self.path, resumed_step)
        mode = "w" if resumed_step is None else "a"
        self._file = open(self.path, mode, encoding="utf-8")  # noqa: SIM115 - closed in close()
        if self.tensorboard:
            self._tb = _tensorboard_writer(self.out_dir / "tensorboard", purge_step=(resumed_step or 0) + 1)
        return dropped

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled or self._file is None:
            return
        self._file.write(json.dumps({k: _plain(v) for k, v in row.items()}) + "\n")
        self._file.flush()
        if self._tb is not None and "event" not in row and "step" in row:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, row["step"])

    def event(self, name: str, step: int, **details: Any) -> None:
        self.log({"event": name, "step": step, **details})

    def say(self, message: str) -> None:
        """A line for the person watching (stderr, main process only), above a progress bar if one
        is shown rather than through it."""
        if self.enabled:
            tqdm.write(f"scratchlm: {message}", file=sys.stderr)
            sys.stderr.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def train_line(row: dict[str, Any], max_steps: int = 0) -> str:
    """A training row as one line of a log: step (of max_steps when known), loss, lr, gradient
    norm, speed, MFU and time."""
    step = f"{row['step']}/{max_steps}" if max_steps else str(row["step"])
    return (
        f"step {step}  loss {row['loss']:.4f}  lr {row['lr']:.2e}  grad_norm {row['grad_norm']:.3f}  "
        f"{row['tokens_per_s']:,.0f} tok/s  mfu {row['mfu']:.1%}  {_clock(row['elapsed_s'])}"
    )


def eval_line(row: dict[str, Any], best_val_loss: float | None = None) -> str:
    """An evaluation row as one line: validation loss and bits per byte (marked when it is the
    best so far), and the start of the sample, quoted so its newlines stay on the line."""
    parts = [f"step {row['step']}"]
    if "val_loss" in row:
        best = "  (best)" if best_val_loss is not None and row["val_loss"] <= best_val_loss else ""
        parts.append(f"val_loss {row['val_loss']:.4f}  val_bpb {row['val_bpb']:.4f}{best}")
    if "sample" in row:
        text = row["sample"]
        cut = "…" if len(text) > SAMPLE_CHARS else ""
        parts.append("sample " + json.dumps(text[:SAMPLE_CHARS], ensure_ascii=False) + cut)
    return "  ".join(parts)


def _clock(seconds: float) -> str:
    """Elapsed time as 12s, 3m05s or 2h01m."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _tensorboard_writer(log_dir: Path, purge_step: int):
    """A writer whose events hide the earlier event files' from `purge_step` on: those of steps a
    resumed run trains again, or of a run that died before its first checkpoint."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def cut_after_checkpoint(path: Path, step: int) -> int:
    """Rewrite a metrics.jsonl (atomically) as it was when the checkpoint of `step` was saved, and
    return how many records that dropped. A resumed run logs every step after its checkpoint
    again; kept, the first try's rows would read as a second run of the same steps.

    The cut follows the last `checkpoint` event of `step`: everything before it, events included,
    is the run that checkpoint holds (a rollback's retrained steps too). A log without one (the
    run was killed between the save and its line) keeps the records up to `step`. A line that is
    not JSON stays where it is kept; the last one, a write cut short by the kill, goes."""
    data = path.read_bytes()
    lines = [line for line in data.split(b"\n") if line.strip()]
    records = [_record(line) for line in lines]
    marks = [i for i, r in enumerate(records) if r.get("event") == "checkpoint" and r.get("step") == step]
    if marks:
        kept = lines[: marks[-1] + 1]
    else:
        kept = [
            line for i, (line, r) in enumerate(zip(lines, records))
            if (r or i < len(lines) - 1) and not (isinstance(r.get("step"), int) and r["step"] > step)
        ]
    if len(kept) < len(lines) or not data.endswith(b"\n"):
        atomic_write_bytes(path, b"".join(line + b"\n" for line in kept))
    return len(lines) - len(kept)


def _record(line: bytes) -> dict[str, Any]:
    """A line of metrics.jsonl as its record; {} for a line that is not a JSON object."""
    try:
        record = json.loads(line)
    except ValueError:  # bad JSON or bad UTF-8
        return {}
    return record if isinstance(record, dict) else {}


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a metrics.jsonl file."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows

"""`metrics.jsonl` (one JSON object per line) and, when installed, TensorBoard.

Rows: train (`step`, `loss`, `lr`, `grad_norm`, `tokens`, `tokens_per_s`, `mfu`, `elapsed_s`),
eval (`step`, `val_loss`, `val_bpb`, `sample`) and events (`event` plus details). Floats are
written at full precision so runs can be compared bit for bit. Only the main process writes.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Infinity
    return value


class MetricsLogger:
    def __init__(self, out_dir: str | Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self._file = None
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if tensorboard:
            self._tb = _tensorboard_writer(Path(out_dir) / "tensorboard")

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
        """A line for the person watching (stderr, main process only)."""
        if self.enabled:
            print(f"scratchlm: {message}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _tensorboard_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(log_dir))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a metrics.jsonl file."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows

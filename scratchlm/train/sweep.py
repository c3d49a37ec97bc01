"""Learning-rate sweep: short runs over a grid, ranked by validation loss.

The learning rate is the setting that most often decides whether a run trains at all; a sweep of
a few hundred steps per value is cheap insurance before a long run. Each value trains from the
same seed and batches, so the only difference between runs is the learning rate.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from scratchlm.fsutil import atomic_write_json
from scratchlm.train.config import PretrainConfig

DEFAULT_GRID = (1e-4, 3e-4, 1e-3, 3e-3)
DEFAULT_STEPS = 200


def lr_label(lr: float) -> str:
    """The run folder's name: every distinct rate gets its own (1e-3 and 1.2e-3 differ)."""
    return f"lr-{lr:g}"


def sweep_lr(
    config: PretrainConfig, lrs: list[float] | tuple[float, ...] = DEFAULT_GRID, steps: int = DEFAULT_STEPS
) -> dict[str, Any]:
    """Train `steps` steps per learning rate under `config.train.out/lr-*`; the best has the lowest
    final validation loss. Writes `sweep.json` beside the runs and returns the same dict."""
    from scratchlm.train.trainer import train

    out = Path(config.train.out)
    results = []
    for lr in lrs:
        train_cfg = dataclasses.replace(
            config.train,
            lr=float(lr),
            max_steps=steps,
            max_tokens=0,
            max_seconds=0.0,
            eval_every=0,
            checkpoint_every=0,
            checkpoint_minutes=0.0,
            keep_last=1,
            warmup_steps=min(config.train.warmup_steps, max(1, steps // 10)),
            out=str(out / lr_label(lr)),
        )
        run_cfg = dataclasses.replace(config, train=train_cfg)
        summary = train(run_cfg)
        val = summary["val_loss"]
        results.append(
            {
                "lr": float(lr),
                "val_loss": val if val is not None and math.isfinite(val) else None,
                "val_bpb": summary["val_bpb"],
                "final_loss": summary["final_loss"],
                "diverged": val is None or not math.isfinite(val),
                "out": train_cfg.out,
            }
        )
    finished = [r for r in results if r["val_loss"] is not None]
    best = min(finished, key=lambda r: r["val_loss"]) if finished else None
    report = {"steps": steps, "results": results, "best_lr": best["lr"] if best else None}
    atomic_write_json(out / "sweep.json", report)
    return report

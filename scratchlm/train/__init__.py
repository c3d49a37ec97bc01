"""Pretraining: the loop (`trainer`), its config, checkpoints, stability monitor and diagnoses,
optimizers, schedules and data parallelism.

`from scratchlm.train import train, PretrainConfig, load_pretrain_config` is the library entry;
the names are resolved on first use so importing a submodule stays light.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "train": "scratchlm.train.trainer",
    "PretrainConfig": "scratchlm.train.config",
    "load_pretrain_config": "scratchlm.train.config",
    "sweep_lr": "scratchlm.train.sweep",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'scratchlm.train' has no attribute {name!r}")


__all__ = list(_EXPORTS)

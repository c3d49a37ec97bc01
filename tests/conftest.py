"""Shared test settings: single-threaded torch keeps the suite fast and deterministic on 2 cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tiny tensors gain nothing from threads, and on a 2-core machine threads only contend.
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The benchmark data folder beside the project, or a skip when a fresh clone lacks it."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent (fresh clone): this test needs the shared data")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every test's cache (e.g. the built-in corpus) inside pytest's temp area."""
    cache = tmp_path_factory.getbasetemp() / "cache"
    monkeypatch.setenv("SCRATCHLM_CACHE", str(cache))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

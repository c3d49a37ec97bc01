"""Refuse, before building it, a model whose training state cannot fit in memory.

Why: a model too large for the machine does not fail fast. Each layer is a separate allocation
that succeeds on its own, so the process fills memory for minutes (a `model.n_layer` with a zero
too many), then the kernel's out-of-memory killer ends it without a word, or the GPU runs out in
the first step. The state training keeps for every parameter is known from the config alone:
float32 weights (4 bytes), their gradients (4) and the optimizer's moments (AdamW two, 8 bytes;
Muon one for the hidden matrices, so at least 4). Those bytes are needed whatever the batch, so
when they alone exceed the memory free now, the run cannot work, and the error says so at once.
Activations come on top and are not counted: the check never refuses a run that could fit.

Where the state lives: the model is built in float32 on the host by every process on that host,
then moved; on a CPU the whole state stays there, on a GPU it lives in the GPU's memory (divided
among the processes when FSDP shards it, after each has held the whole float32 model there).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from scratchlm.errors import ConfigError

WEIGHT_BYTES = 4  # float32 weights; their gradients are the same size
OPTIMIZER_BYTES = {"adamw": 8, "muon": 4}  # the least each optimizer keeps per parameter (module doc)
# A container's memory, not the host's: (limit, usage, stats, the stat of page cache in the usage)
# for cgroup v2, then v1. The page cache (files read or written, e.g. the tokens just made) counts
# as used there, but the kernel gives it up on demand, so it is counted as available.
_CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.stat", "file"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes",
     "/sys/fs/cgroup/memory/memory.stat", "total_cache"),
)
# The most this process has already held on the host and on its GPU: its allocators keep freed
# memory (glibc as the trainer sets it on CPU, PyTorch's cache on GPUs), so a later run in the
# same process (the next rate of `sweep-lr`) reuses it, though the machine no longer counts it free.
_held = {"host": 0, "device": 0}


def training_bytes_per_parameter(optimizer: str) -> int:
    """Bytes training keeps for each parameter at least: weight, gradient, optimizer moments."""
    return 2 * WEIGHT_BYTES + OPTIMIZER_BYTES.get(optimizer, OPTIMIZER_BYTES["muon"])


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):  # absent, "max" (no limit), unreadable
        return None


def _stat(path: str, key: str) -> int:
    """One value of a cgroup's memory.stat (0 where absent)."""
    try:
        for line in Path(path).read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def available_host_bytes(
    meminfo: str = "/proc/meminfo", cgroup_files: tuple[tuple[str, str, str, str], ...] = _CGROUP_FILES
) -> int | None:
    """Memory this process can still get without swapping: Linux's MemAvailable, lowered to what
    the container's memory limit leaves (page cache counted as free); None where neither can be
    read (not Linux)."""
    available = None
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file, stat_file, cache_key in cgroup_files:
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None:
            left = max(0, limit - max(0, usage - _stat(stat_file, cache_key)))
            available = left if available is None else min(available, left)
            break
    return available


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:,.1f} GiB"


def check_training_fits(
    n_params: int,
    optimizer: str,
    device: torch.device,
    *,
    processes_on_host: int = 1,
    shards: int = 1,
    host_available: int | None = None,
    device_available: int | None = None,
) -> tuple[int, int]:
    """Raise a ConfigError when the model's weights, gradients and optimizer state alone cannot fit
    (module doc); else return what they need on the host and on the GPU (0 without one), for
    `remember_held` once the model is built. `shards`: processes FSDP divides the GPU state among.
    The available memory is read from the machine unless given."""
    per_param = training_bytes_per_parameter(optimizer)
    on_host = device.type in ("cpu", "mps")  # Apple's GPU shares the host's memory
    host_need = n_params * processes_on_host * (per_param if on_host else WEIGHT_BYTES)
    if host_available is None:
        host_available = available_host_bytes()
    if host_available is not None and host_need > host_available + _held["host"]:
        what = f"weights, gradients and {optimizer} state" if on_host else "float32 weights, built on the host first"
        each = f" in each of {processes_on_host} processes" if processes_on_host > 1 else ""
        raise ConfigError(
            f"the model has {n_params:,} parameters: its {what}{each} need {_gib(host_need)}, but this "
            f"machine has {_gib(host_available)} of memory available; make the model smaller"
        )
    if on_host or device.type != "cuda":
        return host_need, 0
    # FSDP shards the state, but each process first moves the whole float32 model to its GPU
    device_need = max(n_params * WEIGHT_BYTES, n_params * per_param // shards)
    if device_available is None:
        device_available = torch.cuda.mem_get_info(device)[0]
    if device_need > device_available + _held["device"]:
        hint = "or shard it over more GPUs (train.strategy = fsdp)" if shards > 1 else (
            "or shard it over several GPUs (torchrun with train.strategy = fsdp)")
        raise ConfigError(
            f"the model has {n_params:,} parameters: its weights, gradients and {optimizer} state need "
            f"{_gib(device_need)} per GPU, but {device} has {_gib(device_available)} free; make the model smaller, {hint}"
        )
    return host_need, device_need


def remember_held(needs: tuple[int, int]) -> None:
    """Note that this process now holds a training state of these sizes (host, GPU): a later
    check in the same process counts that memory as its own (see `_held`)."""
    _held["host"] = max(_held["host"], needs[0])
    _held["device"] = max(_held["device"], needs[1])


def processes_on_this_host() -> int:
    """How many training processes torchrun started on this machine (1 when run directly)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1

"""Where training and inference run, and in which number format.

This is the one place that decides device and dtype, so every stage agrees: "auto" picks CUDA when
present, else the CPU; "auto" precision picks bf16 autocast when the hardware computes bf16
natively (CUDA with bf16 support, or a CPU with AVX512-BF16/AMX), else fp32.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from scratchlm.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Weights held or written in one number format ("auto": as they are stored).
WEIGHT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
WeightDtype = Literal["auto", "float32", "bfloat16", "float16"]
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Precision:
    """A resolved number format: what autocast runs in, and whether fp16 needs loss scaling."""

    name: str  # "fp32" | "bf16" | "fp16"
    autocast_dtype: torch.dtype | None
    use_grad_scaler: bool


def resolve_device(name: str = "auto") -> torch.device:
    """Turn "auto", "cpu", "cuda", "cuda:N" or "mps" into a device that exists on this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available; use device=cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) exist")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device {name!r} requested but MPS is not available; use device=cpu")
    elif device.type != "cpu":
        raise ConfigError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True when the processor multiplies bf16 natively (AVX512-BF16 or AMX), so bf16 is a speed-up."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return any(flag in flags for flag in _CPU_BF16_FLAGS)
    return False


def _cuda_supports_bf16(device: torch.device) -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8


def resolve_precision(device: torch.device, precision: str = "auto") -> Precision:
    """Pick the autocast dtype for `device`; fp16 (CUDA only) also asks for a grad scaler."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if _cuda_supports_bf16(device) else "fp16"
        elif device.type == "cpu" and cpu_supports_bf16():
            precision = "bf16"
        else:
            precision = "fp32"
    if precision == "fp32":
        return Precision("fp32", None, False)
    if precision == "bf16":
        if device.type == "cuda" and not _cuda_supports_bf16(device):
            raise ConfigError("precision bf16 needs a GPU with compute capability >= 8.0; use fp16 or fp32")
        return Precision("bf16", torch.bfloat16, False)
    if device.type != "cuda":
        raise ConfigError(f"precision fp16 needs CUDA (device is {device.type}); use bf16 or fp32")
    return Precision("fp16", torch.float16, True)


@contextlib.contextmanager
def autocast(device: torch.device, precision: Precision) -> Iterator[None]:
    """Run the enclosed forward pass in `precision` (no-op for fp32)."""
    if precision.autocast_dtype is None:
        yield
        return
    with torch.autocast(device_type=torch.device(device).type, dtype=precision.autocast_dtype):
        yield

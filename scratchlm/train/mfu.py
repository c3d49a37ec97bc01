"""Model FLOPs utilization: the share of the device's peak arithmetic that training turns into model math.

MFU = FLOPs per token (6N + attention, from the model config) × tokens per second ÷ peak FLOP/s.
For GPUs the peak is the vendor's dense (no sparsity) tensor-core figure for the dtype; for CPUs,
which have no single published figure, it is a measured large matmul in that dtype (so CPU MFU is
"share of what this machine's BLAS reaches"), measured once per process.
"""

from __future__ import annotations

import functools
import re
import time

import torch

TERA = 1e12

# Dense peak TFLOP/s per GPU: (bf16, fp16, tf32, fp32). None where the GPU lacks the format.
# Patterns are matched in order against the words of torch.cuda.get_device_name() (runs of letters
# and digits, so "L4" is not found in "L40", nor "A100" in "RTX A1000"), most specific first.
# A None row (a GPU whose figures vary by vendor build) means: measure instead.
_GPU_PEAKS: tuple[tuple[tuple[str, ...], tuple[float | None, float, float | None, float] | None], ...] = (
    (("H100", "NVL"), (835.0, 835.0, 417.5, 60.0)),
    (("H100", "PCIE"), (756.0, 756.0, 378.0, 51.2)),
    (("H100",), (989.4, 989.4, 494.7, 66.9)),  # SXM / HBM3
    (("H200", "NVL"), (835.0, 835.0, 417.5, 60.0)),
    (("H200",), (989.4, 989.4, 494.7, 66.9)),
    (("GH200",), (989.4, 989.4, 494.7, 66.9)),
    (("H800",), (989.4, 989.4, 494.7, 66.9)),
    (("A100",), (312.0, 312.0, 156.0, 19.5)),
    (("A800",), (312.0, 312.0, 156.0, 19.5)),
    (("L40S",), (362.0, 362.0, 183.0, 91.6)),
    (("L40",), (181.0, 181.0, 90.5, 90.5)),
    (("L4",), (121.0, 121.0, 60.0, 30.3)),
    (("A10G",), None),
    (("A10",), (125.0, 125.0, 62.5, 31.2)),
    (("RTX", "4090"), (165.2, 165.2, 82.6, 82.6)),  # GeForce: fp32 accumulation runs at half rate
    (("RTX", "3090"), (71.0, 71.0, 35.6, 35.6)),
    (("V100",), (None, 125.0, None, 15.7)),
    (("T4",), (None, 65.0, None, 8.1)),
)


def gpu_peak_from_table(name: str, dtype: torch.dtype, tf32: bool = False) -> float | None:
    """Dense peak FLOP/s of the GPU called `name` for `dtype`, or None if it is not in the table."""
    words = set(re.findall(r"[A-Z0-9]+", name.upper()))
    for patterns, row in _GPU_PEAKS:
        if all(p in words for p in patterns):
            if row is None:
                return None
            bf16, fp16, tf32_peak, fp32 = row
            if dtype == torch.bfloat16:
                peak = bf16
            elif dtype == torch.float16:
                peak = fp16
            else:
                peak = tf32_peak if tf32 and tf32_peak is not None else fp32
            return None if peak is None else peak * TERA
    return None


@functools.cache
def measure_matmul_flops(
    device_type: str, dtype: torch.dtype, size: int = 1024, seconds: float = 0.3
) -> float:
    """Best FLOP/s of a size×size matmul in `dtype` over about `seconds`, with the current threads."""
    device = torch.device(device_type)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        elif device.type == "mps":
            torch.mps.synchronize()

    a @ b  # warm up the kernel choice and caches
    sync()
    best = float("inf")
    deadline = time.perf_counter() + seconds
    reps = 1
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync()
        best = min(best, (time.perf_counter() - start) / reps)
        reps = min(reps * 2, 16)
    return 2 * size**3 / best


def peak_flops_per_s(device: torch.device, dtype: torch.dtype | None = None) -> float:
    """Peak FLOP/s of `device` for training in `dtype` (None = fp32): table for GPUs, measured otherwise."""
    device = torch.device(device)
    dtype = dtype or torch.float32
    if device.type == "cuda":
        tf32 = torch.backends.cuda.matmul.allow_tf32
        peak = gpu_peak_from_table(torch.cuda.get_device_name(device), dtype, tf32=tf32)
        if peak is not None:
            return peak
        return measure_matmul_flops("cuda", dtype, size=4096)
    return measure_matmul_flops(device.type, dtype)


def mfu(flops_per_token: float, tokens_per_s: float, peak: float) -> float:
    """Fraction of `peak` FLOP/s achieved by training at `tokens_per_s` (0 when the peak is unknown)."""
    if peak <= 0:
        return 0.0
    return flops_per_token * tokens_per_s / peak

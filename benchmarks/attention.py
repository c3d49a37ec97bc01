"""Training attention (forward + backward) under CPU bf16 autocast: SDPA as autocast runs it
(bf16 kernel) beside scratchlm's `attend` (float32 kernel where measured faster, else the same).

This is the measurement behind `model/attention.py`'s thresholds: every row reports both kernels,
and the `attend` column shows which one the rule picked. Inputs come out of one fused qkv
projection, as in the model, so strides match a real step.

    python benchmarks/attention.py          # ~1 minute on 2 CPU cores
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_report import publish, table  # benchmarks/bench_report.py

from scratchlm.machine import cpu_model
from scratchlm.model.attention import attend, float32_is_faster

# (batch, heads, seq_len, head_dim): about the same work per row, plus the model benchmark's shapes
SHAPES = [
    (8, 4, 128, 16), (32, 16, 128, 32), (32, 8, 128, 64),
    (16, 32, 256, 16), (4, 8, 256, 32), (16, 8, 256, 64), (1, 12, 256, 64), (16, 4, 256, 128),
    (8, 16, 512, 32), (8, 8, 512, 64), (8, 4, 512, 128),
    (4, 16, 1024, 32), (4, 8, 1024, 64),
]


def timed_pair(fns, rounds: int) -> list[float]:
    """Median milliseconds of each function, run in alternation so background load hits all alike."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(rounds):
        for fn, samples in zip(fns, times):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
    return [statistics.median(s) * 1e3 for s in times]


def training_step(attention, qkv: torch.Tensor, grad: torch.Tensor):
    """Split q, k, v out of the fused projection, attend under bf16 autocast, backpropagate."""
    n_head = grad.shape[1]

    def run():
        q, k, v = (t.transpose(1, 2) for t in qkv.split(n_head, dim=2))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = attention(q, k, v)
        y.backward(grad)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "attention.md"))
    args = parser.parse_args()
    rows = []
    for B, H, T, hd in SHAPES:
        qkv = torch.randn(B, T, 3 * H, hd, dtype=torch.bfloat16, requires_grad=True)
        grad = torch.randn(B, T, H, hd, dtype=torch.bfloat16).transpose(1, 2)
        reference = training_step(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), qkv, grad)
        ours = training_step(
            lambda q, k, v: attend(q, k, v, mask=None, is_causal=True, dropout_p=0.0, enable_gqa=False), qkv, grad
        )
        ref_ms, ours_ms = timed_pair([reference, ours], args.rounds if T < 1024 else 3)
        q = qkv[:, :, :H].transpose(1, 2)  # k has the same shape: as many K/V heads as query heads
        kernel = "float32" if float32_is_faster(q, q) else "bf16 (as SDPA)"
        row = (f"{B}×{H}×{T}×{hd}", kernel, f"{ref_ms:.1f}", f"{ours_ms:.1f}", f"{ref_ms / ours_ms:.2f}×")
        rows.append(row)
        print(" | ".join(row), flush=True)

    header = ("batch×heads×seq×head_dim", "attend's kernel", "SDPA bf16 ms", "attend ms", "speedup")
    publish([
        "# Training attention under CPU bf16 autocast (forward + backward)",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- nproc: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, CPU: {cpu_model()}, torch {torch.__version__}",
        "- causal, q/k/v views of one fused projection; median of alternating rounds",
        "",
        *table(header, rows),
    ], args.out)


if __name__ == "__main__":
    main()

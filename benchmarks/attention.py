"""Training attention (forward + backward) under CPU bf16 autocast: SDPA's bf16 kernel (what
autocast runs) beside its float32 kernel on float32 copies (`model/attention.py`'s alternative).

This is the measurement behind `model/attention.py`'s thresholds: every row times both kernels,
and the last column names the one `attend` picks there, so a rule that picks the slower kernel
shows. Inputs come out of one fused qkv projection, as in the model, so strides match a real step.

    python benchmarks/attention.py          # ~1 minute on 2 CPU cores
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_report import header_lines, medians, publish, table  # benchmarks/bench_report.py

from scratchlm.model.attention import float32_attention, float32_is_faster

# (batch, heads, seq_len, head_dim): about the same work per row, plus the model benchmark's shapes
SHAPES = [
    (8, 4, 128, 16), (32, 16, 128, 32), (32, 8, 128, 64),
    (16, 32, 256, 16), (4, 8, 256, 32), (16, 8, 256, 64), (1, 12, 256, 64), (16, 4, 256, 128),
    (8, 16, 512, 32), (8, 8, 512, 64), (8, 4, 512, 128),
    (4, 16, 1024, 32), (4, 8, 1024, 64),
]


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
        bf16 = training_step(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), qkv, grad)
        fp32 = training_step(lambda q, k, v: float32_attention(q, k, v, is_causal=True), qkv, grad)
        bf16_s, fp32_s = medians([bf16, fp32], args.rounds if T < 1024 else 3)
        q = qkv[:, :, :H].transpose(1, 2)  # k has the same shape: as many K/V heads as query heads
        picked = "float32" if float32_is_faster(q, q) else "bf16"
        faster = "float32" if fp32_s < bf16_s else "bf16"
        row = (f"{B}×{H}×{T}×{hd}", f"{bf16_s * 1e3:.1f}", f"{fp32_s * 1e3:.1f}", f"{bf16_s / fp32_s:.2f}×",
               picked, "yes" if picked == faster else "no")
        rows.append(row)
        print(" | ".join(row), flush=True)

    header = ("batch×heads×seq×head_dim", "bf16 kernel ms", "float32 kernel ms", "float32 speedup",
              "attend picks", "picks the faster")
    publish([
        *header_lines("Training attention under CPU bf16 autocast (forward + backward)"),
        "- causal, q/k/v views of one fused projection; median of alternating rounds",
        "",
        *table(header, rows),
    ], args.out)


if __name__ == "__main__":
    main()

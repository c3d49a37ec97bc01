"""Training attention (forward + backward) under CPU bf16 autocast: SDPA's bf16 kernel (what
autocast runs) beside `model/attention.py`'s two alternatives, SDPA's float32 kernel on float32
copies and causal attention over materialized scores.

This is the measurement behind `model/attention.py`'s thresholds: every row times the three
kernels, and the last columns name the one `attend` picks there and whether it is the fastest, so
a rule that picks a slower kernel shows. Inputs come out of one fused qkv projection, as in the
model, so strides match a real step; rows with fewer K/V heads than query heads are GQA. The
process keeps freed memory as the trainer does on CPU (`train.keep_host_memory`), so large
tensors are not page-faulted anew each call.

    python benchmarks/attention.py          # ~1 minute on 2 CPU cores
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_report import at_least, header_lines, medians, publish, table  # benchmarks/bench_report.py

from scratchlm.model.attention import choose_kernel, float32_attention, scores_attention
from scratchlm.train.host_memory import keep_freed_memory

# (batch, heads, K/V heads, seq_len, head_dim): about the same work per row, plus the model
# benchmark's shapes (8×4×128×16, 4×8×256×32, 1×12×256×64, and their GQA forms)
SHAPES = [
    (8, 4, 4, 128, 16), (8, 4, 2, 128, 16), (32, 16, 16, 128, 32), (32, 8, 8, 128, 64),
    (16, 32, 32, 256, 16), (4, 8, 8, 256, 32), (4, 8, 4, 256, 32), (16, 8, 8, 256, 64), (16, 8, 2, 256, 64),
    (1, 12, 12, 256, 64), (1, 12, 6, 256, 64), (16, 4, 4, 256, 128),
    (8, 16, 16, 512, 32), (8, 8, 8, 512, 64), (8, 4, 4, 512, 128),
    (4, 16, 16, 1024, 32), (4, 8, 8, 1024, 64),
]


def training_step(attention, qkv: torch.Tensor, grad: torch.Tensor, n_kv_head: int):
    """Split q, k, v out of the fused projection, attend under bf16 autocast, backpropagate."""
    n_head = grad.shape[1]

    def run():
        q, k, v = (t.transpose(1, 2) for t in qkv.split([n_head, n_kv_head, n_kv_head], dim=2))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = attention(q, k, v)
        y.backward(grad)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=at_least(1), default=7)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "attention.md"))
    args = parser.parse_args()
    kept = keep_freed_memory()
    rows = []
    for B, H, KV, T, hd in SHAPES:
        qkv = torch.randn(B, T, H + 2 * KV, hd, dtype=torch.bfloat16, requires_grad=True)
        grad = torch.randn(B, T, H, hd, dtype=torch.bfloat16).transpose(1, 2)
        gqa = KV != H
        kernels = {
            "sdpa": lambda q, k, v, gqa=gqa: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa),
            "float32": lambda q, k, v, gqa=gqa: float32_attention(q, k, v, is_causal=True, enable_gqa=gqa),
            "scores": scores_attention,
        }
        seconds = dict(zip(kernels, medians([training_step(f, qkv, grad, KV) for f in kernels.values()],
                                            args.rounds if T < 1024 else 3)))
        q, k, _ = (t.transpose(1, 2) for t in qkv.split([H, KV, KV], dim=2))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            picked = choose_kernel(q, k, mask=None, is_causal=True, dropout_p=0.0)
        fastest = min(seconds, key=seconds.get)
        row = (f"{B}×{H}{f'/{KV}' if gqa else ''}×{T}×{hd}", *(f"{seconds[name] * 1e3:.1f}" for name in kernels),
               f"{seconds['sdpa'] / seconds[picked]:.2f}×", picked, "yes" if picked == fastest else f"no ({fastest})")
        rows.append(row)
        print(" | ".join(row), flush=True)

    header = ("batch×heads[/kv heads]×seq×head_dim", "SDPA bf16 ms", "SDPA float32 ms", "scores ms",
              "picked ÷ SDPA bf16 speed", "attend picks", "picks the fastest")
    publish([
        *header_lines("Training attention under CPU bf16 autocast (forward + backward)"),
        "- causal, q/k/v views of one fused projection; median of alternating rounds; "
        "scores = `scores_attention` (float32 scores and softmax, bf16 products)",
        "- glibc malloc: " + ("freed memory kept in the process, as the trainer sets it" if kept else "defaults"),
        "",
        *table(header, rows),
    ], args.out)


if __name__ == "__main__":
    main()

"""RMSNorm with a hand-written gradient (`scratchlm/model/norm.py`) beside `nn.RMSNorm`.

Two tables, each timed alternating in one process:
- the norm alone, forward + backward, at the activation shapes of `benchmarks/model.py`'s Llama
  models (batch × sequence × width) and one per-head q/k norm shape;
- one whole training step of those models, scratchlm against itself: the same weights with
  every norm swapped for `nn.RMSNorm`, fp32 and bf16 autocast.

Prints Markdown tables and writes benchmarks/results/norm.md.

    python benchmarks/norm.py             # ~3 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from bench_report import alternate, header_lines, medians, publish, table  # benchmarks/bench_report.py
from model import SHAPES, make_step, our_config  # benchmarks/model.py
from torch import nn

from scratchlm.model import GPT
from scratchlm.model.norm import RMSNorm

NORM_SHAPES = [("tiny", (8, 128, 64)), ("10m", (4, 256, 256)), ("124m", (1, 256, 768)),
               ("124m q/k heads", (1, 256, 12, 64))]


def norm_pass(norm: nn.Module, x: torch.Tensor, grad: torch.Tensor):
    def run():
        leaf = x.detach().requires_grad_()
        norm(leaf).backward(grad)
    return run


def with_torch_norms(model: GPT) -> GPT:
    """`model` with each of its RMSNorms replaced by an `nn.RMSNorm` holding the same weight."""
    for name, child in model.named_children():
        if isinstance(child, RMSNorm):
            plain = nn.RMSNorm(child.normalized_shape, eps=child.eps)
            plain.load_state_dict(child.state_dict())
            setattr(model, name, plain)
        else:
            with_torch_norms(child)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "norm.md"))
    args = parser.parse_args()
    torch.manual_seed(0)

    norm_rows = []
    for name, shape in NORM_SHAPES:
        ours, ref = RMSNorm(shape[-1], eps=1e-5), nn.RMSNorm(shape[-1], eps=1e-5)
        x, grad = torch.randn(shape), torch.randn(shape)
        t_ours, t_ref = medians([norm_pass(ours, x, grad), norm_pass(ref, x, grad)], rounds=200, warmup=10)
        norm_rows.append((name, "×".join(map(str, shape)), f"{t_ref * 1e6:,.0f}", f"{t_ours * 1e6:,.0f}",
                          f"{t_ref / t_ours:.2f}×"))
        print(*norm_rows[-1], flush=True)

    step_rows = []
    for size in args.sizes:
        shape = SHAPES[size]
        rounds = shape.steps * 4
        cfg = our_config(shape, "llama")
        ours = GPT(cfg)
        plain = with_torch_norms(GPT(cfg))
        plain.load_state_dict(ours.state_dict())
        tokens = shape.batch * shape.seq_len
        for bf16 in (False, True):
            t_ours, t_plain = alternate([
                make_step(ours, lambda x, y, m=ours: m(x, targets=y).objective, shape, bf16, False),
                make_step(plain, lambda x, y, m=plain: m(x, targets=y).objective, shape, bf16, False),
            ], rounds, warmup=2)
            speedup = statistics.median(p / o for o, p in zip(t_ours, t_plain))
            step_rows.append((f"{size} llama", "bf16" if bf16 else "fp32",
                              f"{tokens / statistics.median(t_plain):,.0f}", f"{tokens / statistics.median(t_ours):,.0f}",
                              f"{speedup:.3f}×"))
            print(*step_rows[-1], flush=True)

    lines = [
        *header_lines("RMSNorm: hand-written gradient vs nn.RMSNorm (CPU)"),
        "",
        "## The norm alone, forward + backward (µs, median of 200 alternating rounds)",
        "",
        *table(("activation", "shape", "nn.RMSNorm", "scratchlm RMSNorm", "speedup"), norm_rows),
        "",
        "## One training step of the Llama benchmark models (tokens/s; speedup = median per-step ratio)",
        "",
        *table(("model", "dtype", "with nn.RMSNorm", "with scratchlm RMSNorm", "speedup"), step_rows),
    ]
    publish(lines, args.out)


if __name__ == "__main__":
    main()

"""Float32 CPU matmul kernels for the model's products: torch's own (MKL) beside oneDNN.

Re-measures the rule in `scratchlm/model/matmul.py` on this machine: for every linear layer of
the benchmark shapes of `benchmarks/model.py` (training: batch × sequence rows) and for decoding
(one row), the three products of a linear layer are timed both ways, alternating:

- forward `x·Wᵀ`: `F.linear` vs the oneDNN op `linear()` runs for large products (column 3),
- input gradient `G·W`: `torch.mm` vs oneDNN with W passed transposed (ditto),
- weight gradient `Gᵀ·x`: `torch.mm` vs `onednn_weight_gradient` (Gᵀ or xᵀ copied to row-major
  first, whichever is smaller), which `weight_gradient` runs from 2^24 multiply-adds on CPUs
  where the import-time probe found oneDNN much faster (column 4).

A second table times what the route changes end to end, scratchlm against itself with the route
on and off (alternating): one float32 training step of each `benchmarks/model.py` shape, and
greedy decoding with GPT-2 124M.

Prints Markdown tables and writes benchmarks/results/matmul.md.

    python benchmarks/matmul.py            # ~3 minutes on 2 CPU cores
    python benchmarks/matmul.py --no-model # the kernel table only (~1 minute)
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_report import at_least, header_lines, medians, publish, table  # benchmarks/bench_report.py
from model import SHAPES, compare, make_step, our_config  # benchmarks/model.py

from scratchlm.infer.generate import generate
from scratchlm.model import GPT, get_preset
from scratchlm.model.matmul import (
    ONEDNN_FAST_MIN_MACS,
    ONEDNN_MIN_MACS,
    ONEDNN_MIN_WEIGHT,
    PROBE_MIN_SPEEDUP,
    WEIGHT_GRAD_MIN_MACS,
    onednn_available,
    onednn_min_macs,
    onednn_probe_speedup,
    onednn_product,
    onednn_weight_gradient,
    set_onednn_matmul,
    uses_onednn,
    weight_gradient_uses_onednn,
)

# (shape name, rows, in, out) for each distinct product of the benchmark models
PRODUCTS = [
    ("tiny gpt2 qkv", 1024, 64, 192), ("tiny gpt2 fc", 1024, 64, 256), ("tiny head", 1024, 64, 512),
    ("10m llama qkv", 1024, 256, 512), ("10m proj", 1024, 256, 256), ("10m llama fc", 1024, 256, 1280),
    ("10m llama down", 1024, 640, 256), ("10m gpt2 fc", 1024, 256, 1024), ("10m head", 1024, 256, 8192),
    ("124m qkv", 256, 768, 2304), ("124m proj", 256, 768, 768), ("124m gpt2 fc", 256, 768, 3072),
    ("124m gpt2 down", 256, 3072, 768), ("124m head", 256, 768, 50257),
    ("decode 124m qkv", 1, 768, 2304), ("decode 124m fc", 1, 768, 3072), ("decode 124m head", 1, 768, 50257),
]


def product_pairs(dnn, x, w, grad):
    """(oneDNN, torch) closures for x·Wᵀ, G·W and Gᵀ·x."""
    return [
        (lambda: dnn(x, w), lambda: F.linear(x, w)),
        (lambda: dnn(grad, w.t()), lambda: torch.mm(grad, w)),
        (lambda: onednn_weight_gradient(grad, x), lambda: torch.mm(grad.t(), x)),
    ]


def with_route(enabled: bool, fn):
    """`fn` run with the oneDNN route set as given."""

    def run():
        set_onednn_matmul(enabled)
        fn()

    return run


def model_rows(rounds: int) -> list[tuple[str, ...]]:
    """Training steps and decoding, the route on vs off, alternating."""
    rows = []
    for size, benchmark_shape in SHAPES.items():
        shape = dataclasses.replace(benchmark_shape, steps=max(benchmark_shape.steps, 10))
        for family in ("gpt2", "llama"):
            model = GPT(our_config(shape, family))
            step = make_step(model, lambda x, y, m=model: m(x, targets=y).objective, shape, False, False)
            result = compare(with_route(True, step), with_route(False, step), shape, warmup=1)  # ours: route on
            rows.append((f"train step, {size} {family}", f"{result.theirs_tps:,.1f}", f"{result.ours_tps:,.1f}",
                         f"{result.speedup:.2f}×"))
            print(" | ".join(rows[-1]), flush=True)
    model = GPT(get_preset("gpt2-124m")).eval()
    prompt, new_tokens = list(range(16)), 24
    on_t, off_t = medians(
        [with_route(True, lambda: generate(model, prompt, new_tokens, temperature=0.0)),
         with_route(False, lambda: generate(model, prompt, new_tokens, temperature=0.0))],
        max(3, rounds // 4),
    )
    rows.append(("greedy decode, GPT-2 124M", f"{new_tokens / off_t:.1f}", f"{new_tokens / on_t:.1f}",
                 f"{off_t / on_t:.2f}×"))
    print(" | ".join(rows[-1]), flush=True)
    set_onednn_matmul(True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=at_least(1), default=15)
    parser.add_argument("--threads", type=at_least(1), default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-model", action="store_true", help="skip the end-to-end table")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "matmul.md"))
    args = parser.parse_args()
    if not onednn_available():
        parser.error("this PyTorch build has no oneDNN linear kernel")
    if args.threads:
        torch.set_num_threads(args.threads)

    def dnn(a, w):
        return onednn_product(a, w, None)  # what `linear()` calls, its call cost included

    probe = onednn_probe_speedup()
    rows = []
    g = torch.Generator().manual_seed(0)
    for name, m, k, n in PRODUCTS:
        x, w, grad = (torch.randn(*s, generator=g) for s in ((m, k), (n, k), (m, n)))
        rounds = args.rounds if m * k * n >= 1 << 20 else 10 * args.rounds
        gflop = 2 * m * k * n / 1e9
        cells = []
        for ours, theirs in product_pairs(dnn, x, w, grad):
            t_dnn, t_torch = medians([ours, theirs], rounds, warmup=2)
            cells += [f"{gflop / t_torch:.0f}", f"{gflop / t_dnn:.0f}", f"{t_torch / t_dnn:.2f}×"]
        routed = "yes" if uses_onednn(x, w) else "no"
        weight_routed = "yes" if weight_gradient_uses_onednn(grad, x) else "no"
        row = (name, f"{m}×{k}×{n}", routed, weight_routed, *cells)
        rows.append(row)
        print(" | ".join(row), flush=True)

    header = ("product", "rows×in×out", "linear() uses oneDNN", "weight_gradient() uses oneDNN",
              "x·Wᵀ torch", "x·Wᵀ oneDNN", "speedup", "G·W torch", "G·W oneDNN", "speedup",
              "Gᵀ·x torch", "Gᵀ·x oneDNN", "speedup")
    lines = [
        *header_lines("Float32 CPU matmul: torch (MKL) vs oneDNN, GFLOP/s"),
        f"- median of {args.rounds} alternating rounds (10× more below 2^20 multiply-adds); "
        f"`linear()` routes x·Wᵀ and G·W to oneDNN from {onednn_min_macs():,} multiply-adds "
        f"(2^{onednn_min_macs().bit_length() - 1}; the import-time probe that chose it ran oneDNN {probe:.2f}× torch's speed, "
        f"and from {PROBE_MIN_SPEEDUP}× the threshold is 2^{ONEDNN_FAST_MIN_MACS.bit_length() - 1}, else "
        f"2^{ONEDNN_MIN_MACS.bit_length() - 1}) or {ONEDNN_MIN_WEIGHT:,} weight elements (2^20); "
        f"`weight_gradient()` routes Gᵀ·x from {WEIGHT_GRAD_MIN_MACS:,} multiply-adds "
        f"(2^{WEIGHT_GRAD_MIN_MACS.bit_length() - 1}) where that probe ran oneDNN at least {PROBE_MIN_SPEEDUP}× as fast",
        "",
        *table(header, rows),
    ]
    if not args.no_model:
        lines += [
            "",
            "## End to end: scratchlm with the route off vs on (float32, tokens/s)",
            "",
            "Training steps as in `benchmarks/model.py` (batch×seq: "
            + ", ".join(f"{name} {s.batch}×{s.seq_len}" for name, s in SHAPES.items())
            + "), alternating; decoding: 16-token prompt, 24 new tokens, random-init weights.",
            "",
            *table(("run", "route off", "route on", "speedup"), model_rows(args.rounds)),
        ]
    publish(lines, args.out)


if __name__ == "__main__":
    main()

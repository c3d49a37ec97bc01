"""How much of `benchmarks/model.py`'s training step is matrix products both libraries must run,
and so how large a lead over `transformers` is possible at all.

Both models make the same products per step: for every linear layer x·Wᵀ, then G·W and Gᵀ·x in
backward, and three more for the output head. This script times each of those products alone,
on this machine, with the fastest kernel this PyTorch build offers for it (float32: `torch.mm`
or oneDNN, whichever is faster; bf16: `torch.mm`, which is oneDNN already), and sums them per
step: the products' floor. It then times both libraries' whole eager steps, alternating, as
`benchmarks/model.py` does. Everything else in a step (attention, norms, activations, the loss,
casts, gradient accumulation) is "other".

Reading the table: `ceiling` = transformers' step ÷ the floor, the speedup scratchlm would reach
if all its other work took no time; `other for 1.2×` = transformers' step ÷ 1.2 − the floor,
what scratchlm's other work may take for the issue's target. Attention's products are left out
of the floor (SDPA's kernels skip the masked half and are not plain products), so the floor is
low and the ceiling high: both are bounds, not estimates. Isolated products also find their
operands in cache more often than inside a step, which lowers the floor further.

    python benchmarks/model_floor.py --keep-host-memory
    python benchmarks/model_floor.py --sizes 124m --families gpt2 --no-fp32
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from pathlib import Path

import torch
from bench_report import alternate, at_least, header_lines, publish, table  # benchmarks/bench_report.py
from matmul import product_pairs  # benchmarks/matmul.py
from model import (  # benchmarks/model.py
    SHAPES,
    TARGET,
    Shape,
    add_host_memory_flag,
    apply_host_memory_flag,
    compare,
    hf_model,
    make_step,
    our_config,
)

from scratchlm.model import GPT
from scratchlm.model.matmul import onednn_available, onednn_product


def linear_shapes(model: torch.nn.Module) -> Counter[tuple[int, int]]:
    """(in, out) of every linear layer of the model, the head included, with how many have it."""
    return Counter((m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear))


def product_seconds(rows: int, n_in: int, n_out: int, dtype: torch.dtype, rounds: int) -> float:
    """Seconds of one layer's three training products (x·Wᵀ, G·W, Gᵀ·x), each by its faster kernel
    (`benchmarks/matmul.py`'s pairs; oneDNN only for float32, as bf16 `torch.mm` is oneDNN already),
    in its fastest round: a floor, which a busy moment on a shared machine must not raise."""
    g = torch.Generator().manual_seed(0)
    x, w, grad = (torch.randn(*s, generator=g).to(dtype) for s in ((rows, n_in), (n_out, n_in), (rows, n_out)))
    both = dtype == torch.float32 and onednn_available()
    total = 0.0
    for dnn, plain in product_pairs(lambda a, b: onednn_product(a, b, None), x, w, grad):
        total += min(min(samples) for samples in alternate([plain, dnn] if both else [plain], rounds, warmup=2))
    return total


def step_floor(model: torch.nn.Module, shape: Shape, dtype: torch.dtype, rounds: int) -> float:
    """Seconds of all linear-layer and head products of one training step."""
    tokens = shape.batch * shape.seq_len
    return sum(count * product_seconds(tokens, n_in, n_out, dtype, rounds)
               for (n_in, n_out), count in linear_shapes(model).items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--families", nargs="+", default=["gpt2", "llama"], choices=["gpt2", "llama"])
    parser.add_argument("--no-fp32", action="store_true", help="only the bf16 autocast rows")
    parser.add_argument("--no-bf16", action="store_true", help="only the float32 rows")
    parser.add_argument("--rounds", type=at_least(1), default=15, help="timed rounds per product (steps: the shape's own count)")
    add_host_memory_flag(parser)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "model-floor.md"))
    args = parser.parse_args()
    malloc_line = apply_host_memory_flag(args, parser)
    dtypes = [d for d, skip in ((False, args.no_fp32), (True, args.no_bf16)) if not skip]
    if not dtypes:
        parser.error("--no-fp32 and --no-bf16 together leave nothing to measure")

    torch.manual_seed(0)
    load_start = os.getloadavg()[0]
    rows = []
    for size in args.sizes:
        shape = SHAPES[size]
        for family in args.families:
            cfg = our_config(shape, family)
            ours, theirs = GPT(cfg), hf_model(cfg, family)
            for bf16 in dtypes:
                floor = step_floor(ours, shape, torch.bfloat16 if bf16 else torch.float32, args.rounds)
                result = compare(
                    make_step(ours, lambda x, y, m=ours: m(x, targets=y).objective, shape, bf16, False,
                              free_grads=args.keep_host_memory),
                    make_step(theirs, lambda x, y, m=theirs: m(input_ids=x, labels=y).loss, shape, bf16, False,
                              free_grads=args.keep_host_memory),
                    shape, warmup=1,
                )
                a, b = result.ours_s, result.theirs_s
                row = (size, family, "bf16" if bf16 else "fp32", f"{floor * 1e3:,.1f}", f"{a * 1e3:,.1f}",
                       f"{b * 1e3:,.1f}", f"{result.speedup:.2f}×", f"{b / floor:.2f}×", f"{(a - floor) * 1e3:,.1f}",
                       f"{(b - floor) * 1e3:,.1f}", f"{(b / TARGET - floor) * 1e3:,.1f}")
                rows.append(row)
                print(" | ".join(row), flush=True)
            del ours, theirs

    header = ("shape", "family", "dtype", "products ms", "scratchlm step ms", "transformers step ms", "speedup",
              "ceiling", "scratchlm other ms", "transformers other ms", f"other for {TARGET}× ms")
    lines = [
        *header_lines("Training step: the matrix products' floor beside both libraries' steps (CPU, eager)"),
        f"- 1-minute load average at start / end: {load_start:.1f} / {os.getloadavg()[0]:.1f}",
        "- products ms: every linear layer's and the head's x·Wᵀ, G·W and Gᵀ·x for one step, each timed alone "
        "(fastest of alternating rounds) with its fastest kernel; attention's products not included",
        "- steps as in benchmarks/model.py (eager; median over alternating steps); other = step − products",
        f"- ceiling = transformers step ÷ products; other for {TARGET}× = transformers step ÷ {TARGET} − products",
        malloc_line,
        "",
        *table(header, rows),
    ]
    publish(lines, args.out)


if __name__ == "__main__":
    main()

"""Whole-model `torch.compile` beside compiling each block alone, and beside eager, per malloc setting.

Why this exists: under glibc's malloc defaults, compiling each transformer block (`block.compile()`,
embedding and loss left eager) was measured 1.3–1.7× faster than compiling the whole model at the
124M shape, which suggested making the trainer compile per block. This script checks that choice
where it matters: under `train.keep_host_memory`, the malloc setting the trainer applies on CPU,
the two are within a few percent (benchmarks/RESULTS.md, tenth session), so `train.compile` stays
whole-model.

Each case runs in its own process (the malloc setting is process-wide and cannot be undone); in it
the three modes take turns step by step on three copies of the model with the same weights.
Prints a Markdown table and writes benchmarks/results/compile-modes.md.

    python benchmarks/compile_modes.py                        # ~6 minutes on 2 CPU cores
    python benchmarks/compile_modes.py --cases 124m-gpt2 --malloc kept
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from bench_report import alternate, at_least, header_lines, publish, table  # benchmarks/bench_report.py
from model import SHAPES, make_step, our_config  # benchmarks/model.py

from scratchlm.model import GPT
from scratchlm.train.host_memory import keep_freed_memory

# (shape, family, vocabulary): the model benchmark's shapes, and the 124M body with a small table,
# which separates the cost of the table from the cost of the body.
CASES = {
    "10m-llama": ("10m", "llama", None),
    "124m-gpt2": ("124m", "gpt2", None),
    "124m-llama": ("124m", "llama", None),
    "124m-body-vocab-8192": ("124m", "gpt2", 8192),
}


def time_modes(case: str, steps: int) -> dict[str, float]:
    """Median ms per bf16-autocast training step of each mode, in this process."""
    size, family, vocab = CASES[case]
    shape = dataclasses.replace(SHAPES[size], vocab=vocab or SHAPES[size].vocab)
    torch.manual_seed(0)
    base = GPT(our_config(shape, family)).train()
    models = {name: copy.deepcopy(base) for name in ("whole", "blocks", "eager")}
    for block in models["blocks"].blocks:
        block.compile()
    steps_of = {  # the model benchmark's step; "whole" compiles the call of the model, so the whole model
        name: make_step(model, lambda x, y, m=model: m(x, targets=y).objective, shape, bf16=True,
                        compiled=name == "whole")
        for name, model in models.items()
    }
    names = list(steps_of)
    times = alternate([steps_of[name] for name in names], steps, warmup=2)
    return {name: 1000 * statistics.median(samples) for name, samples in zip(names, times)}


def run_case(case: str, malloc: str, steps: int) -> dict[str, float]:
    """`time_modes` in a fresh process, so each malloc setting starts from a clean heap."""
    cmd = [sys.executable, __file__, "--child", case, "--malloc", malloc, "--steps", str(steps)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=Path(__file__).parent)
    if done.returncode != 0:  # the child's own error, which check=True hid behind CalledProcessError
        raise SystemExit(f"compile_modes.py: {case} with malloc {malloc} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--malloc", nargs="+", default=["defaults", "kept"], choices=["defaults", "kept"])
    parser.add_argument("--steps", type=at_least(1), default=6, help="timed steps per mode (after 2 warm-up steps)")
    parser.add_argument("--child", choices=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "compile-modes.md"))
    args = parser.parse_args()

    if args.child:
        if args.malloc == ["kept"] and not keep_freed_memory():
            parser.error("--malloc kept needs Linux with glibc")
        print(json.dumps(time_modes(args.child, args.steps)))
        return

    rows = []
    for case in args.cases:
        for malloc in args.malloc:
            ms = run_case(case, malloc, args.steps)
            row = (case, "glibc defaults" if malloc == "defaults" else "freed memory kept",
                   *(f"{ms[m]:,.0f}" for m in ("whole", "blocks", "eager")), f"{ms['whole'] / ms['blocks']:.2f}")
            rows.append(row)
            print(" | ".join(row), flush=True)
    header = ("case", "malloc", "whole model compiled ms", "each block compiled ms", "eager ms", "whole ÷ blocks")
    lines = [
        *header_lines("torch.compile: whole model vs each block (CPU, bf16 autocast training step)"),
        f"- median of {args.steps} steps per mode after 2 warm-up steps; the modes alternate step by step in one "
        "process per row; batch×seq as in benchmarks/model.py",
        "- whole ÷ blocks above 1: compiling each block alone is faster",
        "",
        *table(header, rows),
    ]
    publish(lines, args.out)


if __name__ == "__main__":
    main()

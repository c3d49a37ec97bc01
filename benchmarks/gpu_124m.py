"""Throughput and MFU of the GPT-2 124M shape through the real pretraining loop.

    python benchmarks/gpu_124m.py [--steps 40] [--micro-batch 16] [--json OUT]   # on a GPU
    python benchmarks/gpu_124m.py --shape tiny --steps 1                        # CPU smoke run
    python benchmarks/gpu_124m.py --trace trainer.json.gz                       # + a profile of 5 steps

bf16 autocast, torch.compile, fused AdamW and SDPA attention (flash kernels on recent GPUs), with
the 124M model at vocab 50,304 and context 1,024. The data is a small real tokens dir (its ids
are all below the model's vocab, which is all the arithmetic cares about). MFU uses the
trainer's count of 6N + attention FLOPs per token against the GPU's dense bf16 peak.
Target: >= 45% MFU on an H100.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from bench_report import at_least, export_gzipped_trace, work_dir  # benchmarks/bench_report.py

SHAPES = {
    "124m": {"model": {"preset": "gpt2-124m", "vocab_size": 50304}, "seq_len": 1024, "micro_batch": 16},
    "tiny": {"model": {"preset": "tiny"}, "seq_len": 64, "micro_batch": 2},
}
TARGET_MFU = 0.45


def make_tokens(work: Path) -> Path:
    """A tokens dir from generated text: enough tokens for random windows of any context here."""
    from scratchlm.data.tokenize import TokenizeConfig, tokenize_dataset
    from scratchlm.tokenizer import Tokenizer

    rng = random.Random(0)
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(500)
    ]
    docs = [" ".join(rng.choice(words) for _ in range(400)) for _ in range(400)]
    corpus = work / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    Tokenizer.train(docs[:50], vocab_size=512).save(work / "tokenizer")
    tokens = work / "tokens"
    tokenize_dataset(
        TokenizeConfig(inputs=[str(corpus)], tokenizer=str(work / "tokenizer"), out=str(tokens), val_every=20)
    )
    return tokens


# The traced steps: after the speed warm-up and 5 more, 2 of the profiler's warm-up, then 5 recorded;
# the trace is written after the last of them, so --trace needs that many timed steps at least.
TRACE_WAIT, TRACE_WARMUP, TRACE_ACTIVE = 5, 2, 5
TRACE_MIN_STEPS = TRACE_WAIT + TRACE_WARMUP + TRACE_ACTIVE


def train_traced(cfg, trace: str) -> dict:
    """`train(cfg)` with 5 of its steps, after the warm-up, under torch.profiler (CPU and CUDA
    activity); the summary's speed then includes the profiler's own cost."""
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    from scratchlm.train.trainer import WARMUP_STEPS_FOR_SPEED, PretrainRun

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    plan = schedule(wait=WARMUP_STEPS_FOR_SPEED + TRACE_WAIT, warmup=TRACE_WARMUP, active=TRACE_ACTIVE, repeat=1)
    run = PretrainRun(cfg)
    untraced_step = run._step

    def step() -> dict:
        outcome = untraced_step()
        profiler.step()
        return outcome

    run._step = step  # the benchmark's instrument only: the trainer is not changed
    try:
        with profile(
            activities=activities, schedule=plan, on_trace_ready=lambda done: export_gzipped_trace(done, trace)
        ) as profiler:
            summary = run.fit()
    finally:
        run.close()
    return summary


def main(argv: list[str] | None = None) -> int:
    import torch

    from scratchlm.config import from_dict
    from scratchlm.fsutil import atomic_write_json
    from scratchlm.train.config import PretrainConfig
    from scratchlm.train.trainer import WARMUP_STEPS_FOR_SPEED, train

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="124m")
    parser.add_argument("--steps", type=at_least(1), default=40, help=f"timed after the first {WARMUP_STEPS_FOR_SPEED}")
    parser.add_argument("--micro-batch", type=at_least(1))
    parser.add_argument("--grad-accum", type=at_least(1), default=1)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--json", metavar="OUT")
    parser.add_argument(
        "--trace", metavar="OUT",
        help=f"write a torch.profiler Chrome trace (gzipped) of 5 steps after the warm-up (--steps {TRACE_MIN_STEPS} or more)",
    )
    args = parser.parse_args(argv)
    if args.trace and args.steps < TRACE_MIN_STEPS:
        first = WARMUP_STEPS_FOR_SPEED + TRACE_WAIT + TRACE_WARMUP + 1
        parser.error(f"--trace needs --steps {TRACE_MIN_STEPS} or more: it records steps {first}-{first + TRACE_ACTIVE - 1} of the run")

    shape = SHAPES[args.shape]
    micro = args.micro_batch or shape["micro_batch"]
    seq = shape["seq_len"]
    cuda = torch.cuda.is_available()
    if args.shape == "124m" and not cuda:
        # 45 steps of 16 x 1,024 tokens: about 20 minutes on 2 CPU cores, for a figure with no target there
        print("gpu_124m: --shape 124m needs a CUDA GPU (none found); --shape tiny is the CPU smoke run", file=sys.stderr)
        return 2
    with work_dir(None, "scratchlm-gpu124m-") as work:  # tokens and run (its checkpoint: 1.5 GB) removed after
        tokens = make_tokens(work)
        cfg = from_dict(
            PretrainConfig,
            {
                "data": {"tokens": str(tokens)},
                "model": shape["model"],
                "train": {
                    "out": str(work / "run"),
                    "precision": args.precision,
                    "compile": cuda and not args.no_compile,
                    "max_steps": args.steps + WARMUP_STEPS_FOR_SPEED,
                    "batch_tokens": micro * seq * args.grad_accum,
                    "micro_batch": micro,
                    "seq_len": seq,
                    "lr": 6e-4,
                    "warmup_steps": 10,
                    "eval_every": 0,
                    "eval_batches": 1,
                    "sample_tokens": 0,
                    "log_every": 10,
                    "progress_bar": False,
                    "tensorboard": False,
                },
            },
        )
        summary = train_traced(cfg, args.trace) if args.trace else train(cfg)
    device = torch.cuda.get_device_name() if cuda else "cpu"
    result = {
        "device": device,
        "shape": args.shape,
        "micro_batch": micro,
        "seq_len": seq,
        "compile": cfg.train.compile,
        "steps": summary["steps"],
        "tokens_per_s": summary["tokens_per_s"],
        "mfu": summary["mfu"],
    }
    print(f"\n{'device':<28}{'shape':>8}{'micro x seq':>14}{'tokens/s':>14}{'MFU':>8}")
    print(f"{device:<28}{args.shape:>8}{f'{micro} x {seq}':>14}{result['tokens_per_s']:>14,.0f}{result['mfu']:>8.1%}")
    if args.shape == "124m" and cuda:
        print(f"target >= {TARGET_MFU:.0%} MFU on an H100: {'met' if result['mfu'] >= TARGET_MFU else 'MISSED'}")
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

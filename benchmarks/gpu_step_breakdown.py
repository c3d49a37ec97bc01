"""Where a GPT-2 124M training step's time goes on a GPU, beside transformers' GPT-2 in the same run.

    python benchmarks/gpu_step_breakdown.py            # on a CUDA GPU, about 4 minutes
    python benchmarks/gpu_step_breakdown.py --rows fused:64 cudagraphs:16 --trace DIR --no-hf

A plain loop, no trainer: random token windows already on the GPU, bf16 autocast, `torch.compile`,
fused AdamW, gradient clipping, `zero_grad(set_to_none=True)`; each row is the best of three
20-step timings after 8 untimed steps. Rows: scratchlm's model with its loss in the forward
(`model(x, targets=y)`), the same with a host sync per step (the trainer reads loss and norm
each step), the same with logits then `F.cross_entropy`, larger micro-batches, and
`GPT2LMHeadModel` (SDPA attention) compiled the same way. Then a torch.profiler table of three
steps of the first row. `--rows` picks rows as variant:micro-batch (variants: fused, sync,
logits, and cudagraphs, the first compiled with mode="reduce-overhead"); `--trace DIR` writes a
gzipped Chrome trace of each row's profiled steps. MFU: the trainer's FLOPs per token (6N + attention) over the GPU's dense
bf16 peak (`scratchlm.train.mfu`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_report import export_gzipped_trace  # benchmarks/bench_report.py

from scratchlm.model import GPT
from scratchlm.model.config import get_preset
from scratchlm.train.mfu import peak_flops_per_s
from scratchlm.train.optim import build_optimizer

VOCAB, SEQ = 50304, 1024


def time_loop(
    model: torch.nn.Module,
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    micro: int,
    sync_each: bool = False,
    profile: bool = False,
    trace: str | None = None,
) -> float:
    """Seconds per training step (best of three 20-step timings); with `profile`, print a kernel
    table of three more steps, and with `trace` also write their gzipped Chrome trace there."""
    device = torch.device("cuda")
    opt = build_optimizer(model, "adamw", lr=6e-4, weight_decay=0.1, betas=(0.9, 0.95))
    g = torch.Generator(device=device).manual_seed(0)
    data = [torch.randint(0, 50257, (micro, SEQ + 1), device=device, generator=g) for _ in range(4)]

    def step(i: int) -> None:
        window = data[i % len(data)]
        with torch.autocast("cuda", torch.bfloat16):
            loss = loss_of(window[:, :-1], window[:, 1:])
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        if sync_each:
            float(loss.detach()), float(norm)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(8):
        step(i)
    timings = []
    for _ in range(3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(20):
            step(i)
        torch.cuda.synchronize()
        timings.append((time.perf_counter() - start) / 20)
    if profile:
        from torch.profiler import ProfilerActivity

        with torch.profiler.profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for i in range(3):
                step(i)
            torch.cuda.synchronize()
        print(
            prof.key_averages().table(
                sort_by="self_device_time_total", row_limit=30, max_name_column_width=70
            )
        )
        if trace:
            export_gzipped_trace(prof, trace)
    return min(timings)


VARIANTS = ("fused", "sync", "logits", "cudagraphs")
DEFAULT_ROWS = ("fused:16", "sync:16", "logits:16", "fused:32", "fused:64")
ROW_NAMES = {
    "fused": "scratchlm, loss in the forward",
    "sync": "scratchlm, host sync each step",
    "logits": "scratchlm, logits then F.cross_entropy",
    "cudagraphs": "scratchlm, loss in the forward, CUDA graphs",
}


def scratchlm_rows(cfg, rows: list[str], trace_dir: str | None) -> list[tuple[str, int, float]]:
    """scratchlm's compiled model in each loop variant (see the module doc); the first row of
    each variant is profiled."""
    torch.manual_seed(0)
    ours = GPT(cfg).cuda()
    compiled = {"default": torch.compile(ours)}
    results = []
    profiled: set[str] = set()
    for row in rows:
        variant, micro = row.split(":")
        mode = "reduce-overhead" if variant == "cudagraphs" else "default"
        if mode not in compiled:
            compiled[mode] = torch.compile(ours, mode=mode)
        model = compiled[mode]

        def loss_of(x, y, model=model, variant=variant):
            if variant == "logits":
                return F.cross_entropy(model(x).float().flatten(0, 1), y.flatten())
            return model(x, targets=y).objective

        profile = variant not in profiled
        profiled.add(variant)
        trace = str(Path(trace_dir) / f"{variant}-{micro}.json.gz") if trace_dir and profile else None
        seconds = time_loop(ours, loss_of, int(micro), sync_each=variant == "sync", profile=profile, trace=trace)
        results.append((ROW_NAMES[variant], int(micro), seconds))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS), help="variant:micro-batch, e.g. fused:64")
    parser.add_argument("--no-hf", action="store_true", help="leave out the transformers rows")
    parser.add_argument(
        "--trace", metavar="DIR", help="write each variant's profiled steps as a Chrome trace here (made if missing)"
    )
    args = parser.parse_args(argv)
    for row in args.rows:
        variant, _, micro = row.partition(":")
        if variant not in VARIANTS or not micro.isdigit() or int(micro) == 0:
            parser.error(
                f"--rows: {row!r} is not variant:micro-batch with variant one of {', '.join(VARIANTS)} "
                "and a micro-batch of 1 or more"
            )
    if args.trace and Path(args.trace).exists() and not Path(args.trace).is_dir():
        parser.error(f"--trace: {args.trace} is a file; give a folder for the traces (made if missing)")
    if not torch.cuda.is_available():
        print("gpu_step_breakdown: needs a CUDA GPU (none found)", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    cfg = dataclasses.replace(get_preset("gpt2-124m"), vocab_size=VOCAB, max_seq_len=SEQ)
    flops_per_token = cfg.flops_per_token(SEQ)
    peak = peak_flops_per_s(torch.device("cuda"), torch.bfloat16)
    rows: list[tuple[str, int, float]] = []

    rows += scratchlm_rows(cfg, args.rows, args.trace)
    torch.cuda.empty_cache()
    if args.no_hf:
        return print_rows(rows, flops_per_token, peak)

    from transformers import GPT2Config, GPT2LMHeadModel

    hf_cfg = GPT2Config(
        vocab_size=VOCAB,
        n_positions=SEQ,
        n_embd=768,
        n_layer=12,
        n_head=12,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    hf = GPT2LMHeadModel._from_config(hf_cfg, attn_implementation="sdpa").cuda()
    hf_compiled = torch.compile(hf)

    def hf_loss(x, y):
        return F.cross_entropy(hf_compiled(input_ids=x).logits.float().flatten(0, 1), y.flatten())

    for micro in (16, 32):
        rows.append(("transformers GPT2LMHeadModel", micro, time_loop(hf, hf_loss, micro)))
    return print_rows(rows, flops_per_token, peak)


def print_rows(rows: list[tuple[str, int, float]], flops_per_token: float, peak: float) -> int:
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}\n")
    print("| loop | micro × seq | ms/step | tokens/s | MFU |\n| --- | ---: | ---: | ---: | ---: |")
    for name, micro, seconds in rows:
        tokens_per_s = micro * SEQ / seconds
        print(
            f"| {name} | {micro} × {SEQ} | {seconds * 1e3:.2f} | {tokens_per_s:,.0f} | "
            f"{tokens_per_s * flops_per_token / peak:.1%} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a GPT-2 124M training step's time goes on a GPU, beside transformers' GPT-2 in the same run.

    python benchmarks/gpu_step_breakdown.py            # on a CUDA GPU, about 4 minutes

A plain loop, no trainer: random token windows already on the GPU, bf16 autocast, `torch.compile`,
fused AdamW, gradient clipping, `zero_grad(set_to_none=True)`; each row is the best of three
20-step timings after 8 untimed steps. Rows: scratchlm's model with its loss in the forward
(`model(x, targets=y)`), the same with a host sync per step (the trainer reads loss and norm
each step), the same with logits then `F.cross_entropy`, larger micro-batches, and
`GPT2LMHeadModel` (SDPA attention) compiled the same way. Then a torch.profiler table of three
steps of the first row. MFU: the trainer's FLOPs per token (6N + attention) over the GPU's dense
bf16 peak (`scratchlm.train.mfu`).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

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
) -> float:
    """Seconds per training step (best of three 20-step timings); with `profile`, print a kernel table."""
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
    return min(timings)


def scratchlm_rows(cfg) -> list[tuple[str, int, float]]:
    """scratchlm's compiled model in each loop variant (see the module doc)."""
    torch.manual_seed(0)
    ours = GPT(cfg).cuda()
    compiled = torch.compile(ours)

    def fused(x, y):
        return compiled(x, targets=y).objective

    def logits_then_ce(x, y):
        return F.cross_entropy(compiled(x).float().flatten(0, 1), y.flatten())

    rows = [
        ("scratchlm, loss in the forward", 16, time_loop(ours, fused, 16, profile=True)),
        ("scratchlm, host sync each step", 16, time_loop(ours, fused, 16, sync_each=True)),
        ("scratchlm, logits then F.cross_entropy", 16, time_loop(ours, logits_then_ce, 16)),
    ]
    rows += [("scratchlm, loss in the forward", micro, time_loop(ours, fused, micro)) for micro in (32, 64)]
    return rows


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_step_breakdown: needs a CUDA GPU (none found)", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    cfg = dataclasses.replace(get_preset("gpt2-124m"), vocab_size=VOCAB, max_seq_len=SEQ)
    flops_per_token = cfg.flops_per_token(SEQ)
    peak = peak_flops_per_s(torch.device("cuda"), torch.bfloat16)
    rows: list[tuple[str, int, float]] = []

    rows += scratchlm_rows(cfg)
    torch.cuda.empty_cache()

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

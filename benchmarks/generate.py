"""Greedy decoding speed: scratchlm's static KV cache beside transformers' `generate`.

The same weights run in both libraries: each scratchlm model is converted in memory to its
transformers class (`interop.hf`), and in float32 the benchmark stops, before it times anything,
unless both produce the same tokens; in bf16 rounding may part them, so the agreeing prefix is
shown beside the timings. One prompt, batch 1, greedy, a fixed number of new tokens (no early
stop), fp32 and bf16 weights; the time covers the prompt's forward and every new token.

    python benchmarks/generate.py                  # ~2 minutes on 2 CPU cores
    python benchmarks/generate.py --sizes 10m --new-tokens 32
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from bench_report import alternate, at_least, header_lines, publish, table  # benchmarks/bench_report.py
from model import SHAPES, hf_model, our_config  # benchmarks/model.py: the same shapes and configs

from scratchlm.infer import generate
from scratchlm.interop.hf import hf_from_ours
from scratchlm.model import GPT
from scratchlm.model.io import weights_for_saving


def twin_models(size: str, family: str, dtype: torch.dtype):
    """A random scratchlm model and a transformers model holding the very same weights."""
    cfg = our_config(SHAPES[size], family)
    ours = GPT(cfg).eval()
    with torch.no_grad():  # init-sized weights give near-flat logits, whose greedy ties rounding decides
        for weight in ours.parameters():
            if weight.dim() == 2:
                weight.mul_(5.0)
    theirs = hf_model(cfg, family).eval()
    _, tensors = hf_from_ours(cfg, weights_for_saving(ours))
    missing, unexpected = theirs.load_state_dict(tensors, strict=False)
    assert not unexpected and all(name == "lm_head.weight" for name in missing), (missing, unexpected)
    theirs.config.use_cache = theirs.generation_config.use_cache = True  # model.py builds them for training
    return ours.to(dtype), theirs.to(dtype)


def measure(size: str, family: str, dtype: torch.dtype, args: argparse.Namespace) -> tuple[str, ...]:
    """One table row: both libraries decoding the same prompt with the same weights."""
    torch.manual_seed(0)
    ours, theirs = twin_models(size, family, dtype)
    prompt = torch.randint(0, ours.cfg.vocab_size, (args.prompt_tokens,), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(1, args.prompt_tokens, dtype=torch.long)

    def run_ours():
        return generate(ours, prompt.tolist(), args.new_tokens, temperature=0)

    @torch.inference_mode()
    def run_theirs():
        out = theirs.generate(
            prompt[None], attention_mask=mask, max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0, use_cache=True,
        )
        return out[0, args.prompt_tokens:].tolist()

    agree = sum(1 for _ in _common_prefix(run_ours(), run_theirs()))
    if dtype == torch.float32 and agree < args.new_tokens:
        raise SystemExit(f"{size} {family} fp32: the libraries' greedy tokens part after {agree} of "
                         f"{args.new_tokens}; a speed comparison of different work would mean nothing")
    ours_t, theirs_t = alternate([run_ours, run_theirs], args.rounds, warmup=1)
    speedup = statistics.median(t / o for o, t in zip(ours_t, theirs_t))
    return (size, family, "bf16" if dtype == torch.bfloat16 else "fp32",
            f"{args.new_tokens / statistics.median(ours_t):.1f}", f"{args.new_tokens / statistics.median(theirs_t):.1f}",
            f"{speedup:.2f}×", f"{agree}/{args.new_tokens}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["10m", "124m"], choices=list(SHAPES))
    parser.add_argument("--families", nargs="+", default=["gpt2", "llama"], choices=["gpt2", "llama"])
    parser.add_argument("--prompt-tokens", type=at_least(1), default=32)
    parser.add_argument("--new-tokens", type=at_least(1), default=64)
    parser.add_argument("--rounds", type=at_least(1), default=5)
    parser.add_argument("--threads", type=at_least(1), default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "generate.md"))
    args = parser.parse_args()
    for size in args.sizes:
        for family in args.families:
            context = our_config(SHAPES[size], family).max_seq_len
            if args.prompt_tokens + args.new_tokens > context:
                parser.error(f"--prompt-tokens {args.prompt_tokens} + --new-tokens {args.new_tokens} exceed the "
                             f"{size} {family} model's context of {context} tokens")
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    for size in args.sizes:
        for family in args.families:
            for dtype in (torch.float32, torch.bfloat16):
                row = measure(size, family, dtype, args)
                rows.append(row)
                print(" | ".join(row), flush=True)

    header = ("shape", "family", "weights", "scratchlm tok/s", "transformers tok/s", "speedup", "same tokens")
    lines = [
        *header_lines("Greedy decoding, batch 1 (CPU)"),
        f"- torch {torch.__version__}, transformers {__import__('transformers').__version__}",
        f"- prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, greedy, no early stop; "
        f"tok/s = new tokens ÷ median time of {args.rounds} alternating rounds (prompt forward included); "
        "speedup = median of per-round time ratios",
        "- scratchlm: `infer.generate` (static KV cache); transformers: `model.generate` (its default cache); "
        "the same weights, converted in memory",
        "- same tokens: how many leading new tokens agree (bf16 rounding may part greedy paths late)",
        "",
        *table(header, rows),
    ]
    publish(lines, args.out)


def _common_prefix(a: list[int], b: list[int]):
    for x, y in zip(a, b):
        if x != y:
            return
        yield x


if __name__ == "__main__":
    main()

"""`scratchlm generate`: continue a prompt with a model directory, streaming the text."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from scratchlm.cli import add_config_args, add_dtype_arg, given_flags, stdout_is_utf8
from scratchlm.commands.text_input import checked_arg_text, read_stdin_text
from scratchlm.config import load_config
from scratchlm.errors import ConfigError
from scratchlm.fsutil import read_text_file

if TYPE_CHECKING:
    from scratchlm.infer.text import GenerateConfig, TextGenerator


def register(root, groups) -> None:
    """Add `generate`."""
    p = root.add_parser(
        "generate",
        help="continue a prompt with a trained or imported model",
        description=(
            "Continue a prompt with a model directory (a checkpoint, a run folder or an imported "
            "Hugging Face model), printing the text as it is generated."
        ),
    )
    p.add_argument("prompt", nargs="?", help="the text to continue (or --prompt-file)")
    p.add_argument("--model", metavar="DIR", help="model directory, checkpoint, or run folder (its latest)")
    p.add_argument("--prompt-file", metavar="FILE", help="read the prompt from FILE ('-': standard input)")
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer (default: the one in the model directory)")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="tokens to add at most (default 200)")
    p.add_argument("--temperature", type=float, metavar="T", help="0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=int, metavar="K", help="draw from the K likeliest tokens; 0: all (default 200)")
    p.add_argument("--top-p", type=float, metavar="P", help="draw from the smallest set holding P of the mass")
    p.add_argument("--seed", type=int, help="make the draws repeatable (sample i uses seed + i)")
    p.add_argument("--samples", type=int, metavar="N", help="continuations of the same prompt (default 1)")
    specials = p.add_mutually_exclusive_group()
    specials.add_argument("--allow-special", action="store_true",
                          help="special-token text in the prompt becomes control tokens")
    specials.add_argument("--plain-special", action="store_true",
                          help="special-token text in the prompt is plain text")
    p.add_argument("--ignore-eos", action="store_true", default=None, help="do not stop at end-of-text")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")
    add_dtype_arg(p, "weights in memory")
    p.add_argument("--no-echo", action="store_true", help="print only the new text, not the prompt before it")
    p.add_argument("--jsonl", action="store_true",
                   help="print one JSON object per sample (text, token counts, finish reason, speed)")
    add_config_args(p)
    p.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from scratchlm.infer.text import GenerateConfig, TextGenerator
    from scratchlm.model.matmul import packed_weights

    special = "allow" if args.allow_special else "plain" if args.plain_special else None
    if args.prompt is not None and args.prompt_file is not None:
        raise ConfigError("give the prompt as text or as --prompt-file, not both")
    # One form typed on the command line replaces both forms of a config file (flags win).
    prompt, prompt_file = args.prompt, args.prompt_file
    if prompt is not None or prompt_file is not None:
        prompt, prompt_file = prompt or "", prompt_file or ""
    cfg = load_config(GenerateConfig, args.config, args.overrides, given_flags(
        model=args.model, tokenizer=args.tokenizer, prompt=prompt, prompt_file=prompt_file,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        seed=args.seed, samples=args.samples, special=special, ignore_eos=args.ignore_eos,
        device=args.device, dtype=args.dtype,
    ))
    text = _prompt_text(cfg)
    generator = TextGenerator(cfg.model, cfg.tokenizer, cfg.device, cfg.dtype, load_weights=False)
    prompt_ids = generator.encode_prompt(text, cfg.special)  # a prompt the model cannot take costs no weights read
    with packed_weights(generator.model):  # the samples share one packing of the weights (bf16 on CPU)
        for i in range(cfg.samples):
            _one_sample(args, cfg, generator, text, prompt_ids, i)
    return 0


def _one_sample(
    args: argparse.Namespace, cfg: GenerateConfig, generator: TextGenerator, text: str, prompt_ids: list[int], i: int
) -> None:
    """Print sample `i`: streamed text, or a JSON line with `--jsonl`; its speed on stderr."""
    if not args.jsonl and cfg.samples > 1:
        print(f"--- sample {i + 1} of {cfg.samples} ---", flush=True)
    if not args.jsonl and not args.no_echo:
        print(text, end="", flush=True)
    done = generator.complete(
        prompt_ids, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
        top_p=cfg.top_p, seed=None if cfg.seed is None else cfg.seed + i, ignore_eos=cfg.ignore_eos,
        on_text=None if args.jsonl else _write,
    )
    if args.jsonl:
        print(json.dumps({
            "sample": i, "prompt": text, "text": done.text, "prompt_tokens": done.prompt_tokens,
            "completion_tokens": len(done.ids), "finish_reason": done.finish_reason,
            "seconds": round(done.seconds, 4), "seed": None if cfg.seed is None else cfg.seed + i,
        }, ensure_ascii=not stdout_is_utf8()), flush=True)  # JSON's \u escapes, never Python's
    else:
        print(flush=True)
    print(f"[{len(done.ids)} new tokens after {done.prompt_tokens} of prompt, finished by {done.finish_reason}, "
          f"{done.tokens_per_second:.1f} tokens/s]", file=sys.stderr, flush=True)


def _prompt_text(cfg: GenerateConfig) -> str:
    """The prompt: typed, read from a file, or read from standard input."""
    if cfg.prompt_file:
        text = read_stdin_text(ConfigError) if cfg.prompt_file == "-" else read_text_file(cfg.prompt_file, ConfigError)
        return text.removeprefix("\ufeff")  # a byte-order mark is no part of the prompt
    return checked_arg_text("the prompt", cfg.prompt, ConfigError)  # argv and --set keep bytes that are not UTF-8


def _write(piece: str) -> None:
    """One streamed piece, shown at once. Through `print`, as the echoed prompt and the summary
    are: with stdout closed (`>&-`, `sys.stdout` None) it writes nothing instead of raising."""
    print(piece, end="", flush=True)

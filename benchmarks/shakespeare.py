"""Tiny Shakespeare in a fixed wall-clock budget: validation bits per byte.

    python benchmarks/shakespeare.py --data ../shared/data/tinyshakespeare.txt --seconds 110 [--json OUT]

The corpus convention: train = the first 90% of the characters, validation = the last 10%. A BPE
tokenizer is trained on the train split only, both splits are tokenized with the real pipeline
(`scratchlm data tokenize`), then `configs/shakespeare.toml` pretrains for `--seconds` of wall
clock (the cosine schedule is driven by the clock, so it finishes its decay in time). Validation
covers the non-overlapping windows of the validation split (in whole batches) and is reported in bits per byte,
so it compares with the character-level reference below whatever the tokenizer.

Reference (same corpus, split, machine class and budget): a 4-layer, 4-head, width-128,
context-64 character-level GPT trained in fp32 for 2,000 AdamW steps at batch 12 reaches
1.886 nats/char = 2.72 bits/byte in about 110 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench_report import positive_number, work_dir  # benchmarks/bench_report.py

from scratchlm.data.sources import write_prepared_dir
from scratchlm.fsutil import atomic_write_json
from scratchlm.machine import cpu_model, usable_cores

REPO = Path(__file__).resolve().parents[1]

REFERENCE_BPB = 2.72
TARGET_BPB = 2.35


def split_text(text: str) -> tuple[str, str]:
    cut = int(len(text) * 0.9)
    return text[:cut], text[cut:]


def build_tokens(text: str, work: Path, vocab_size: int) -> tuple[Path, dict]:
    from scratchlm.data.tokenize import TokenizeConfig, tokenize_dataset
    from scratchlm.tokenizer import Tokenizer

    train_text, val_text = split_text(text)
    start = time.perf_counter()
    # Paragraphs as training texts: BPE counts pre-tokenized words, so boundaries barely matter.
    tok = Tokenizer.train(train_text.split("\n\n"), vocab_size=vocab_size)
    tok.save(work / "tokenizer")
    tok_seconds = time.perf_counter() - start
    prepared = write_prepared_dir(work / "prepared", [train_text], [val_text], source="tinyshakespeare")
    tokens = work / "tokens"
    tokenize_dataset(TokenizeConfig(inputs=[str(prepared)], tokenizer=str(work / "tokenizer"), out=str(tokens), workers=1))
    meta = json.loads((tokens / "meta.json").read_text())
    info = {
        "tokenizer_seconds": tok_seconds,
        "train_tokens": meta["splits"]["train"]["tokens"],
        "val_tokens": meta["splits"]["val"]["tokens"],
        "val_bytes": len(val_text.encode("utf-8")),
    }
    return tokens, info


def eval_overrides(cfg, val_tokens: int) -> list[str]:
    """Evaluate on all non-overlapping windows of the validation split that fill whole batches."""
    eval_bs = cfg.train.eval_batch_size or cfg.train.micro_batch
    windows = (val_tokens - 1) // cfg.train.seq_len
    return [f"train.eval_batch_size={eval_bs}", f"train.eval_batches={max(1, windows // eval_bs)}"]


def train_on(tokens: Path, info: dict, out: Path, config: str | None, overrides: list[str], seconds: float) -> dict:
    from scratchlm.train.config import load_pretrain_config
    from scratchlm.train.trainer import train

    given = [
        f"data.tokens={json.dumps(str(tokens))}",
        f"train.out={json.dumps(str(out))}",
        f"train.max_seconds={seconds}",
        *overrides,
    ]
    cfg = load_pretrain_config(config, given)
    cfg = load_pretrain_config(config, given[:3] + eval_overrides(cfg, info["val_tokens"]) + overrides)
    summary = train(cfg)
    return {
        "val_bpb": summary["val_bpb"],
        "val_loss": summary["val_loss"],
        "tokens_per_s": summary["tokens_per_s"],
        "mfu": summary["mfu"],
        "steps": summary["steps"],
        "tokens": summary["tokens"],
        "train_seconds": summary["elapsed_s"],
        "precision": summary["precision"],
        **info,
    }


# The character-level reference recipe, run through the same trainer: a byte-level tokenizer
# (no merges: one token per character of this ASCII corpus), fp32, 2,000 steps of 12 x 64.
REFERENCE_SETTINGS = [
    "model.n_layer=4", "model.n_head=4", "model.d_model=128", "model.d_ff=512", "model.max_seq_len=64",
    'model.pos="learned"', 'model.norm="layernorm"', 'model.mlp="gelu"', "model.bias=false",
    'train.precision="fp32"', "train.max_steps=2000", "train.batch_tokens=768", "train.micro_batch=12",
    "train.seq_len=64", "train.lr=1e-3", "train.min_lr_ratio=0.1", "train.warmup_steps=100",
    "train.beta2=0.99", "train.weight_decay=0.1", "train.eval_every=0", "train.checkpoint_every=0",
]  # fmt: skip


def run(args: argparse.Namespace) -> dict:
    """The BPE run (and the char-level reference if asked), in `--work` or a temp dir removed after."""
    text = Path(args.data).read_text(encoding="utf-8")
    with work_dir(args.work, "scratchlm-shakespeare-") as work:
        tokens, info = build_tokens(text, work / "bpe", args.vocab_size)
        result = train_on(tokens, info, work / "run", args.config, args.overrides, args.seconds)
        result.update(vocab_size=args.vocab_size, work=args.work)  # None: nothing was kept
        if args.reference:
            char_tokens, char_info = build_tokens(text, work / "char", 256 + 4)
            result["reference"] = train_on(
                char_tokens, char_info, work / "char-run", None, REFERENCE_SETTINGS, args.seconds
            )
    return result


def print_table(result: dict, seconds: float) -> None:
    print(f"\nTiny Shakespeare, {seconds:g} s of training, {usable_cores()} cores ({cpu_model()})")
    print(f"{'':<34}{'val bits/byte':>14}{'tokens/s':>12}{'MFU':>8}{'steps':>8}")
    print(
        f"{'scratchlm (BPE ' + str(result['vocab_size']) + ', ' + result['precision'] + ')':<34}"
        f"{result['val_bpb']:>14.4f}{result['tokens_per_s']:>12,.0f}{result['mfu']:>8.1%}{result['steps']:>8}"
    )
    ref = result.get("reference")
    if ref:
        print(
            f"{'char-level reference (fp32), ran':<34}{ref['val_bpb']:>14.4f}{ref['tokens_per_s']:>12,.0f}"
            f"{ref['mfu']:>8.1%}{ref['steps']:>8}"
        )
    print(f"{'char-level reference, published':<34}{REFERENCE_BPB:>14.2f}{'':>12}{'':>8}{2000:>8}")
    verdict = "met" if result["val_bpb"] <= TARGET_BPB else "MISSED"
    print(f"target <= {TARGET_BPB} bits/byte: {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="tinyshakespeare.txt")
    parser.add_argument("--seconds", type=positive_number, default=110.0, help="training wall-clock budget")
    parser.add_argument("--json", metavar="OUT", help="write the result as JSON here")
    parser.add_argument("--config", default=str(REPO / "configs" / "shakespeare.toml"))
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--work", metavar="DIR", help="keep tokenizer, tokens and run here (default: a temp dir, removed at the end)")
    parser.add_argument("--reference", action="store_true", help="also train the char-level reference here")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    if not Path(args.data).is_file():
        parser.error(f"--data {args.data}: no such file")
    from scratchlm.errors import ScratchLMError, one_line
    from scratchlm.train.config import load_pretrain_config

    try:  # a wrong --set or --config is reported now, not after the tokenizer is trained
        load_pretrain_config(args.config, ['data.tokens="tokens"', *args.overrides])
        result = run(args)
    except ScratchLMError as e:
        parser.exit(2, f"{parser.prog}: error: {one_line(str(e))}\n")
    print_table(result, args.seconds)
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

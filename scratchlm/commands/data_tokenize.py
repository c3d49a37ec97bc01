"""`scratchlm data tokenize` and `scratchlm data inspect`: build and look inside a tokens dir."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from scratchlm.cli import add_config_args, given_flags, stdout_is_utf8, typed_options
from scratchlm.config import load_config
from scratchlm.wording import counted


def register(root, groups) -> None:
    """Add `data tokenize` and `data inspect`."""
    data = groups["data"]

    tok = data.add_parser(
        "tokenize",
        help="tokenize a prepared dataset (or raw inputs) into memory-mapped .bin/.idx files",
        description="Tokenize documents into train/val .bin + .idx files and meta.json, in parallel.",
    )
    tok.add_argument(
        "inputs", nargs="*", metavar="INPUT",
        help="prepared dirs (keep their train/val split) and/or raw files/dirs/builtin:NAME (split by --val-every)",
    )  # fmt: skip
    tok.add_argument("--tokenizer", metavar="DIR", help="tokenizer dir (from `scratchlm tokenizer train`)")
    tok.add_argument("--out", metavar="DIR", help="tokens dir to write")
    tok.add_argument("--workers", type=int, metavar="N", help="encoding processes (default: one per core)")
    tok.add_argument("--append", action="store_true", default=None, help="add to an existing tokens dir")
    tok.add_argument(
        "--val-every", type=int, metavar="N", help="raw inputs: every N-th of their documents goes to val (default 100; 0: no val split)"
    )
    tok.add_argument("--text-field", metavar="NAME", help="raw JSON/parquet inputs: the text field")
    tok.add_argument("--hf-split", metavar="NAME", help="hf:NAME inputs: the split to read (default: train)")
    add_config_args(tok)
    tok.set_defaults(func=run_tokenize)

    insp = data.add_parser(
        "inspect",
        help="show token counts, document lengths and a decoded sample of a tokens dir",
        description="Summarize a tokens dir written by `scratchlm data tokenize`.",
    )
    insp.add_argument("path", nargs="?", metavar="DIR", help="the tokens dir")
    insp.add_argument("--split", help="train, val or all (default)")
    insp.add_argument("--sample-chars", type=int, metavar="N", help="characters of the first document to show")
    insp.add_argument("--top-tokens", type=int, metavar="N", help="how many frequent tokens to list")
    insp.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_config_args(insp)
    insp.set_defaults(func=run_inspect)


def run_tokenize(args: argparse.Namespace) -> int:
    from scratchlm.data.sources import READING_SETTINGS, refuse_unused_settings
    from scratchlm.data.tokenize import TokenizeConfig, is_tokens_dir, tokenize_dataset

    base = given_flags(
        inputs=args.inputs,
        tokenizer=args.tokenizer,
        out=args.out,
        workers=args.workers,
        append=args.append,
        val_every=args.val_every,
        text_field=args.text_field,
        hf_split=args.hf_split,
    )
    config = load_config(TokenizeConfig, args.config, args.overrides, base)
    refuse_unused_settings(config.inputs, config, typed_options(args, *READING_SETTINGS))
    grows = config.append and is_tokens_dir(Path(config.out))  # else an --append writes a new tokens dir
    start = time.perf_counter()
    meta = tokenize_dataset(config)
    seconds = time.perf_counter() - start
    total_bytes = sum(s.get("bytes", 0) for s in meta["splits"].values())
    parts = [
        f"{name} {counted(s['tokens'], 'token')} / {counted(s['documents'], 'document')}"
        for name, s in meta["splits"].items()
    ]
    print(
        f"wrote {config.out}: {'; '.join(parts) or 'no splits'} ({meta['dtype']}) in {seconds:.1f}s",
        file=sys.stderr,
    )
    if grows:
        print("(counts include the data already there)", file=sys.stderr)
    elif total_bytes >= 1e6:
        print(f"{total_bytes / 1e6:.1f} MB of text at {total_bytes / seconds / 1e6:.1f} MB/s", file=sys.stderr)
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from scratchlm.data.inspect import InspectConfig, format_report, inspect_tokens

    base = given_flags(path=args.path, split=args.split, sample_chars=args.sample_chars, top_tokens=args.top_tokens)
    config = load_config(InspectConfig, args.config, args.overrides, base)
    info = inspect_tokens(config)
    print(json.dumps(info, indent=2, ensure_ascii=not stdout_is_utf8()) if args.json else format_report(info))
    return 0

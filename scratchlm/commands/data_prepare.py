"""`scratchlm data prepare INPUT... --out DIR`: parse flags into `PrepareConfig`, call `prepare`."""

from __future__ import annotations

import argparse
from typing import Any

from scratchlm.cli import add_config_args, given_flags, typed_options
from scratchlm.commands.text_input import checked_arg_text
from scratchlm.config import load_config
from scratchlm.errors import ConfigError


def register(root, groups) -> None:
    p = groups["data"].add_parser(
        "prepare",
        help="clean, quality-filter, deduplicate and split a corpus into parquet shards",
        description=(
            "Read INPUTs (.txt .jsonl .json .parquet files, optionally .gz/.zst; directories; "
            "builtin:python-docs; hf:NAME), clean, quality-filter and deduplicate them, and write "
            "DIR/train/*.parquet, DIR/val/*.parquet and DIR/stats.json."
        ),
    )
    p.add_argument(
        "inputs", nargs="*", metavar="INPUT", help="files, directories, builtin:python-docs or hf:NAME"
    )
    p.add_argument("--out", metavar="DIR", help="output directory (replaced atomically at the end)")
    p.add_argument("--val-fraction", type=float, help="share of documents for validation (default 0.01)")
    p.add_argument(
        "--text-field", help="JSON key / parquet or dataset column holding the text (default: text)"
    )
    p.add_argument(
        "--separator", help=r"split .txt files into documents on this string (\n and \t understood; \n also matches CRLF)"
    )
    p.add_argument("--hf-split", metavar="NAME", help="hf:NAME inputs: the split to read (default: train)")
    p.add_argument(
        "--include",
        action="append",
        metavar="GLOB",
        help=(
            "only read matching files in directories: an fnmatch glob (* and ? match any characters, / too) "
            "on the path below the directory or the file name; case-sensitive (the default globs ignore case)"
        ),
    )
    p.add_argument(
        "--exclude",
        action="append",
        metavar="GLOB",
        help=(
            "skip matching files in directories (globs as for --include), and whole folders, prepared datasets "
            "too, whose path or name matches, or path plus /: old, old/ and old/* all skip old/"
        ),
    )
    p.add_argument("--skip-bad-records", action="store_true", default=None, help="count and skip bad records")
    p.add_argument("--workers", type=int, help="processes for per-document work (0 = auto, 1 = none)")
    p.add_argument("--no-filters", action="store_true", help="turn every quality filter off")
    p.add_argument("--no-dedup", action="store_true", help="turn exact and near-duplicate removal off")
    add_config_args(p)
    p.set_defaults(func=_prepare)


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line, as the nested dict `load_config` merges."""
    separator = None if args.separator is None else _separator(args.separator)
    source = given_flags(
        text_field=args.text_field, hf_split=args.hf_split, separator=separator,
        include=args.include, exclude=args.exclude, skip_bad_records=args.skip_bad_records,
    )
    return given_flags(
        inputs=args.inputs, out=args.out, val_fraction=args.val_fraction, workers=args.workers,
        source=source or None,
        filters={"enabled": False} if args.no_filters else None,
        dedup={"exact": False, "near": False} if args.no_dedup else None,
    )


def _separator(flag: str) -> str:
    """The --separator string with \\n and \\t understood; refused when it is not UTF-8 (it is
    matched against UTF-8 text) or empty (which would mean one document per file, silently)."""
    text = checked_arg_text("--separator", flag, ConfigError)
    if not text:
        raise ConfigError("--separator is empty; leave it out to read each .txt file as one document")
    return text.replace("\\n", "\n").replace("\\t", "\t")


def _prepare(args: argparse.Namespace) -> int:
    from scratchlm.data.prepare import PrepareConfig, prepare
    from scratchlm.data.sources import READING_SETTINGS, refuse_unused_settings

    config = load_config(PrepareConfig, args.config, args.overrides, base=_flags(args))
    refuse_unused_settings(config.inputs, config.source, typed_options(args, *READING_SETTINGS), "source.")
    stats = prepare(config)
    removed = ", ".join(f"{reason} {count}" for reason, count in stats["removed"].items()) or "none"
    print(
        f"prepared {stats['documents_out']:,} of {stats['documents_in']:,} documents "
        f"({stats['bytes_in'] / 1e6:.1f} MB in, {stats['bytes_out'] / 1e6:.1f} MB out) "
        f"into {config.out} in {stats['seconds']:.1f} s"
    )
    print(f"removed: {removed}")
    return 0

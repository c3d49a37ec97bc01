"""`scratchlm tokenizer train | import | encode | decode | stats`."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scratchlm.cli import add_config_args, given_flags, stdout_is_utf8, typed_options
from scratchlm.commands.text_input import checked_arg_text, read_stdin_text
from scratchlm.config import load_config
from scratchlm.errors import TokenizerError
from scratchlm.fsutil import brief, is_json_int, parse_json, read_json, read_text_file

if TYPE_CHECKING:
    from scratchlm.tokenizer import Tokenizer

HF_SPLIT_HELP = "hf:NAME inputs: the split to read (default: train)"


def register(root, groups) -> None:
    """Add the tokenizer commands to the `tokenizer` group."""
    sub = groups["tokenizer"]

    p = sub.add_parser("train", help="train a byte-level BPE tokenizer on documents")
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="files, dirs, builtin:python-docs, hf:NAME or a prepared dir",
    )
    p.add_argument("--out", metavar="DIR", help="output directory (replaced as a whole)")
    p.add_argument("--vocab-size", type=int, help="total ids: 256 bytes + merges + special tokens (default 8192)")
    p.add_argument("--pattern", help="pre-tokenization: gpt4 (default), gpt2 or a regex")
    p.add_argument("--special", action="append", metavar="TOKEN", help="extra special token (repeatable)")
    p.add_argument("--min-frequency", type=int, help="stop when the best pair is rarer than this (default 2)")
    p.add_argument("--workers", type=int, help="word-counting processes (0 = all cores)")
    p.add_argument("--split", choices=["train", "val", "all"], help="split of a prepared dir to read")
    p.add_argument("--text-field", metavar="NAME", help="JSON/parquet field holding the text (default: text)")
    p.add_argument("--hf-split", metavar="NAME", help=HF_SPLIT_HELP)
    add_config_args(p)
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "import", help="import a GPT-2 or Hugging Face tokenizer (or extend one with specials)"
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--gpt2", nargs=2, metavar=("ENCODER_JSON", "VOCAB_BPE"), help="GPT-2's two files")
    source.add_argument("--hf", metavar="FILE", help="a byte-level BPE tokenizer.json (or its directory)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (replaced as a whole)")
    p.add_argument("--special", action="append", metavar="TOKEN", help="add a special token (repeatable)")
    p.add_argument("--tiktoken", metavar="FILE", help="also write tiktoken's rank file here")
    p.set_defaults(func=_import)

    p = sub.add_parser("encode", help="print the ids of some text as JSON")
    p.add_argument("--tokenizer", required=True, metavar="DIR")
    p.add_argument("--text", help="text to encode (default: read stdin)")
    specials = p.add_mutually_exclusive_group()
    specials.add_argument("--allow-special", action="store_true", help="turn special-token text into control tokens")
    specials.add_argument("--plain-special", action="store_true", help="encode special-token text as plain text")
    p.set_defaults(func=_encode)

    p = sub.add_parser("decode", help="print the text of ids (arguments or a JSON list on stdin)")
    p.add_argument("--tokenizer", required=True, metavar="DIR")
    p.add_argument("ids", nargs="*", help="token ids (default: a JSON list read from stdin)")
    p.set_defaults(func=_decode)

    p = sub.add_parser("stats", help="bytes per token, most common tokens and unused merges on some input")
    p.add_argument("--tokenizer", required=True, metavar="DIR")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--top", type=_count, default=20, help="how many common tokens to list")
    p.add_argument("--text-field", metavar="NAME", help="JSON/parquet field holding the text (default: text)")
    p.add_argument("--hf-split", type=_split_name, metavar="NAME", help=HF_SPLIT_HELP)
    p.add_argument("--json", action="store_true", help="print the stats as JSON")
    p.set_defaults(func=_stats)


def _split_name(text: str) -> str:
    """An argparse type: a non-empty split name (as `hf_split` is checked in a config)."""
    if not text:
        raise argparse.ArgumentTypeError("must name a split, e.g. train")
    return text


def _count(text: str) -> int:
    """An argparse type: a whole number ≥ 0 (a negative slice bound would list nearly everything)."""
    if not (text.isascii() and text.isdigit()):  # as for token ids: no other scripts' digits
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 0, got {text!r}")
    return int(text)


def _train(args: argparse.Namespace) -> int:
    from scratchlm.data.sources import READING_SETTINGS, refuse_unused_settings
    from scratchlm.tokenizer.train import TokenizerTrainConfig, train_tokenizer

    base = given_flags(
        inputs=args.inputs,
        out=args.out,
        vocab_size=args.vocab_size,
        pattern=args.pattern,
        special_tokens=args.special,
        min_frequency=args.min_frequency,
        workers=args.workers,
        split=args.split,
        text_field=args.text_field,
        hf_split=args.hf_split,
    )
    cfg = load_config(TokenizerTrainConfig, args.config, args.overrides, base=base)
    refuse_unused_settings(cfg.inputs, cfg, typed_options(args, *READING_SETTINGS))
    tok = train_tokenizer(cfg)
    short = f" (asked for {cfg.vocab_size}: {_why_short(cfg.min_frequency)})" if tok.vocab_size < cfg.vocab_size else ""
    print(f"saved {cfg.out}: vocab {tok.vocab_size}{short}, sha256 {tok.sha256[:16]}", file=sys.stderr)
    return 0


def _why_short(min_frequency: int) -> str:
    """Why training stopped before the vocab size asked for, and what gives more. At
    --min-frequency 1 there is no lower value to suggest."""
    if min_frequency > 1:
        return f"no pair left seen at least {min_frequency} times; more text or a lower --min-frequency gives more"
    return "no pair left to merge; more text gives more"


def _import(args: argparse.Namespace) -> int:
    from scratchlm.tokenizer import Tokenizer
    from scratchlm.tokenizer.train import save_tokenizer_dir

    tok = Tokenizer.from_gpt2(*args.gpt2) if args.gpt2 else Tokenizer.from_hf(args.hf)
    if args.special:  # new ids after the existing ones: every existing id keeps its meaning
        tok = tok.add_special_tokens(args.special)
    sources = list(args.gpt2) if args.gpt2 else [args.hf]
    processor, config, read = _hf_extras(args.hf, tok) if args.hf else (None, {}, [])
    if args.tiktoken:  # checked before --out is replaced
        _check_tiktoken_path(args.tiktoken, args.out, sources + read)
    save_tokenizer_dir(tok, args.out, sources, post_processor=processor, config=config)
    if args.tiktoken:
        tok.export_tiktoken(args.tiktoken)
    print(f"saved {args.out}: vocab {tok.vocab_size}, sha256 {tok.sha256[:16]}", file=sys.stderr)
    return 0


def _hf_extras(source: str, tok: Tokenizer) -> tuple[Any, dict[str, Any], list[str]]:
    """What generation needs from a Hugging Face source besides the tokens: its post_processor
    (the begin-of-text template) and what `formats.carried_config` keeps of its tokenizer_config.json,
    with the chat template of a chat_template.jinja beside it in place of the config's (transformers
    reads the file over the config's entry); and the files read."""
    from scratchlm.tokenizer import formats
    from scratchlm.tokenizer.tokenizer import CHAT_TEMPLATE_FILE, CONFIG_FILE, tokenizer_file

    file = tokenizer_file(source)
    doc = read_json(file, TokenizerError)  # read_hf_tokenizer has read it: a JSON object
    processor = formats.carried_post_processor(doc.get("post_processor"), tok.special_tokens, str(file))
    read, config = [str(file)], {}
    config_file = file.parent / CONFIG_FILE
    if config_file.is_file():
        config = formats.carried_config(read_json(config_file, TokenizerError), tok.special_tokens, str(config_file))
        read.append(str(config_file))
    template_file = file.parent / CHAT_TEMPLATE_FILE
    if template_file.is_file():
        config["chat_template"] = read_text_file(template_file, TokenizerError)
        read.append(str(template_file))
    return processor, config, read


def _check_tiktoken_path(path: str, out: str, sources: list[str]) -> None:
    """Refuse, before anything is written, a --tiktoken file that would replace an input or a file
    of --out (which is replaced after it), or that cannot be written where it is named."""
    given = Path(path).expanduser()
    try:
        target = given.resolve()
        inputs = [Path(source).expanduser().resolve() for source in sources]
        out_dir = Path(out).expanduser().resolve()
    except (RuntimeError, OSError) as e:  # a symlink loop
        raise TokenizerError(f"{path}: cannot be resolved ({e})") from None
    if target == out_dir or out_dir in target.parents:
        raise TokenizerError(f"{path}: is inside --out {out}, which is replaced; choose a file outside it")
    for source, resolved in zip(sources, inputs):
        if target == resolved:
            raise TokenizerError(f"{path}: is the input {source}; choose another --tiktoken file")
    if target.is_dir():
        raise TokenizerError(f"{path}: is a directory; --tiktoken names the file to write")
    if not given.parent.is_dir():
        raise TokenizerError(f"{path}: {given.parent} is not a directory")


def _encode(args: argparse.Namespace) -> int:
    from scratchlm.tokenizer import Tokenizer

    tok = Tokenizer.load(args.tokenizer)
    text = checked_arg_text("--text", args.text, TokenizerError) if args.text is not None else read_stdin_text(TokenizerError)
    if args.allow_special:
        ids = tok.encode(text, allowed_special="all")
    elif args.plain_special:
        ids = tok.encode_ordinary(text)
    else:
        ids = tok.encode(text)
    print(json.dumps(ids))
    return 0


_ID = re.compile(r"-?[0-9]+")  # ASCII only: int() would also take '1_0' and other scripts' digits


def _parse_ids(args: argparse.Namespace) -> list[int]:
    if args.ids:
        return [_id_from_text(part) for item in args.ids for part in re.split(r"[\s,\[\]]+", item) if part]
    data = parse_json(read_stdin_text(TokenizerError) or "[]", "stdin (a JSON list of ids)", TokenizerError)
    return [_id_from_json(item) for item in (data if isinstance(data, list) else [data])]


def _id_from_text(part: str) -> int:
    if not _ID.fullmatch(part):
        raise TokenizerError(f"{part!r} is not a token id")
    try:
        return int(part)
    except ValueError:  # more digits than int() converts
        raise TokenizerError(f"{part[:20]!r}... is not a token id") from None


def _id_from_json(item: object) -> int:
    if not is_json_int(item):
        raise TokenizerError(f"{brief(item, 40)} is not a token id")
    return item


def _decode(args: argparse.Namespace) -> int:
    from scratchlm.tokenizer import Tokenizer

    tok = Tokenizer.load(args.tokenizer)
    sys.stdout.write(tok.decode(_parse_ids(args)))
    sys.stdout.write("\n")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from scratchlm.data.sources import READING_SETTINGS, SourceOptions, iter_documents, refuse_unused_settings
    from scratchlm.tokenizer import Tokenizer
    from scratchlm.tokenizer.stats import token_label, tokenizer_stats

    options = SourceOptions(**given_flags(text_field=args.text_field, hf_split=args.hf_split))
    refuse_unused_settings(args.inputs, options, typed_options(args, *READING_SETTINGS))
    tok = Tokenizer.load(args.tokenizer)
    documents = iter_documents(args.inputs, options)
    stats = tokenizer_stats(tok, (d.text for d in documents), top=args.top)
    if args.json:
        print(json.dumps(stats, ensure_ascii=not stdout_is_utf8(), indent=2))
        return 0
    print(f"documents        {stats['documents']}")
    print(f"bytes            {stats['bytes']}")
    print(f"tokens           {stats['tokens']}")
    print(f"bytes per token  {stats['bytes_per_token']:.3f}")
    print(f"unused merges    {stats['unused_merged_tokens']} of {stats['merged_tokens']}")
    print("most common tokens:")
    for row in stats["most_common"]:
        print(f"  {row['id']:>7}  {row['count']:>10}  {token_label(row['token'], row['partial_utf8'])}")
    return 0

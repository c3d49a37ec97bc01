"""The `scratchlm` command line: a thin argparse front with one subcommand per stage.

Each stage's command module (in `scratchlm/commands/`) adds its parsers through `register` and
calls one library function; no stage logic lives here. User-caused errors (`ScratchLMError`)
and failures of the machine's files (`OSError`: a path that cannot be made, a full disk) end in
one line on stderr and exit code 2; `--debug` shows the traceback. SIGTERM stops a command as
Ctrl-C does (exit 143 instead of 130), so every stage's clean-up and roll-back runs for both.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any, NoReturn

from scratchlm import __version__
from scratchlm.errors import ScratchLMError, Terminated, one_line, torch_error_text
from scratchlm.sigterm import SigtermStop

# Command groups: `scratchlm data prepare`, `scratchlm tokenizer train`, ...
GROUPS = {
    "data": "prepare, tokenize and inspect datasets",
    "tokenizer": "train, import, use and inspect BPE tokenizers",
    "export": "export a model to another ecosystem's format",
    "import": "import a model from another ecosystem's format",
}

# Modules that each define `register(root, groups)`; order sets the order in --help.
COMMAND_MODULES = [
    "scratchlm.commands.data_prepare",
    "scratchlm.commands.data_tokenize",
    "scratchlm.commands.tokenizer",
    "scratchlm.commands.interop",
    "scratchlm.commands.pretrain",
    "scratchlm.commands.generate",
]


# `device.WeightDtype`'s values, spelled out so that this module, imported by every command, needs no torch.
WEIGHT_DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


def add_dtype_arg(parser: argparse.ArgumentParser, help: str) -> None:
    """`--dtype`: the number format of model weights ("auto": as stored)."""
    parser.add_argument("--dtype", choices=WEIGHT_DTYPE_CHOICES, help=help)


def add_config_args(parser: argparse.ArgumentParser, config_file: bool = True) -> None:
    """The options every command shares: a TOML config file and `--set section.key=value`."""
    if config_file:
        parser.add_argument("--config", metavar="FILE", help="TOML config file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable); values are TOML literals, but a string setting takes "
        "unquoted text as typed and an optional one takes none",
    )


def given_flags(**values: Any) -> dict[str, Any]:
    """The options the user actually gave (argparse leaves the others None or an empty list), as
    the base dict `load_config` merges the config file and `--set` over."""
    return {key: value for key, value in values.items() if value is not None and value != []}


def typed_options(args: argparse.Namespace, *dests: str) -> list[str]:
    """The options among `dests` (argparse destinations) that the user typed; one the command
    does not have was not typed."""
    return [dest for dest in dests if getattr(args, dest, None) is not None]


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage mistakes (`--vocab-size abc`, an unknown command) end like
    every other error: one `scratchlm: error:` line and exit 2, not a usage block; subcommand
    parsers are made of this class too."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("scratchlm").strip()
        where = f"{command}: " if command else ""
        self.exit(2, f"scratchlm: error: {where}{message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="scratchlm", description="Build a GPT-style language model from scratch.")
    parser.add_argument("--version", action="version", version=f"scratchlm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    root = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups = {}
    for name, help_text in GROUPS.items():
        group_parser = root.add_parser(name, help=help_text)
        groups[name] = group_parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
        group_parser.set_defaults(func=_group_help(group_parser))
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(root, groups)
    return parser


def _group_help(group_parser: argparse.ArgumentParser):
    def show(_args: argparse.Namespace) -> int:
        group_parser.print_help(sys.stderr)
        return 2

    return show


def _parser_to_blame(
    parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str], extras: list[str]
) -> argparse.ArgumentParser:
    """Which parser reports the unrecognized `extras`: the chosen (sub)command's, whose --help
    lists its options, unless they came before the command or are scratchlm's own options
    (`--debug`) given after it, which `scratchlm --help` lists."""
    first = extras[0]
    own_options = {option for action in parser._actions for option in action.option_strings}
    command = getattr(args, "command", None)
    before_command = command in argv and first in argv and argv.index(first) < argv.index(command)
    if before_command or first.split("=", 1)[0] in own_options:
        return parser
    return _chosen_parser(parser, args)


def _chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the command (and subcommand) that `args` was parsed for."""
    for dest in ("command", "subcommand"):
        name = getattr(args, dest, None)
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if name is None or not actions or name not in actions[0].choices:
            break
        parser = actions[0].choices[name]
    return parser


def describe_os_error(e: OSError) -> str:
    """`path: reason` (or `path -> other path: reason` for a rename) for a failed file operation."""
    reason = e.strerror or str(e)
    names = [_path_text(name) for name in (e.filename, e.filename2) if name is not None]
    return f"{' -> '.join(names)}: {reason}" if names else reason


def _path_text(name: object) -> str:
    """A path as text: file names may be bytes, and an operation on an open file names its number."""
    return os.fsdecode(name) if isinstance(name, (str, bytes, os.PathLike)) else f"file descriptor {name}"


OUT_OF_MEMORY = ("can't allocate memory", "not enough memory", "out of memory")  # torch's CPU and CUDA wordings


def is_out_of_memory(e: BaseException) -> bool:
    """A failed allocation: Python's MemoryError, or torch's (a RuntimeError, or its CUDA subclass)."""
    text = str(e).lower()
    return isinstance(e, MemoryError) or any(words in text for words in OUT_OF_MEMORY)


def describe_out_of_memory(e: BaseException) -> str:
    """One line for a failed allocation: torch's CPU message spans an enforce prefix and an error code."""
    wanted = re.search(r"tried to allocate (\d+) bytes", str(e))
    if wanted:
        size = int(wanted[1])
        unit, scale = next((u, s) for u, s in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10), ("bytes", 1))
                           if size >= s or s == 1)
        return f"out of memory: an allocation of {size / scale:,.1f} {unit} failed"
    return f"out of memory: {torch_error_text(e)}"


def stdout_is_utf8() -> bool:
    """Whether standard output encodes UTF-8. When not (a Latin-1 locale, a Windows pipe), `main`
    escapes what it cannot encode, and JSON is printed as ASCII: Python's escapes (`\\U0001f600`)
    are not JSON."""
    encoding = getattr(sys.stdout, "encoding", None) or ""
    return encoding.lower().replace("-", "").replace("_", "") == "utf8"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        blamed = _parser_to_blame(parser, args, argv, extras)
        hint = " (scratchlm's own options go before the command)" if blamed is parser and args.command else ""
        blamed.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    if not stdout_is_utf8() and hasattr(sys.stdout, "reconfigure"):
        # Text a stage prints (a decoded sample, an --out path) must not end it in a traceback.
        sys.stdout.reconfigure(errors="backslashreplace")
    in_main_thread = threading.current_thread() is threading.main_thread()  # where signals can be set
    stop = SigtermStop(sys._getframe())
    previous = signal.signal(signal.SIGTERM, stop) if in_main_thread else None
    try:
        result = args.func(args)
    except ScratchLMError as e:
        if args.debug:
            raise
        print(f"scratchlm: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except Terminated:
        print("scratchlm: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("scratchlm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:
        if args.debug:
            raise
        print(f"scratchlm: error: {one_line(describe_os_error(e))}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        if args.debug or not is_out_of_memory(e):
            raise
        print(f"scratchlm: error: {describe_out_of_memory(e)}", file=sys.stderr)
        return 2
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    if stop.held:  # a SIGTERM held back by an import, and the stage ended before it could be raised
        print("scratchlm: terminated (after the stage had finished: its output is complete)", file=sys.stderr)
        return 128 + signal.SIGTERM
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The `tokenizer train` stage: read documents from any source, train a BPE, save it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Literal

from scratchlm.config import check_workers
from scratchlm.errors import ConfigError, TokenizerError
from scratchlm.fsutil import atomic_directory, check_output_dir
from scratchlm.machine import usable_cores
from scratchlm.tokenizer.bpe import NoTextError
from scratchlm.tokenizer.tokenizer import Tokenizer, is_tokenizer_dir


@dataclass
class TokenizerTrainConfig:
    """What `scratchlm tokenizer train` needs; also a `[tokenizer]`-free TOML file's keys."""

    inputs: list[str] = field(default_factory=list)  # anything `data prepare` reads, or a prepared dir
    out: str = ""
    vocab_size: int = 8192
    pattern: str = "gpt4"  # gpt4 | gpt2 | a custom regex
    special_tokens: list[str] = field(default_factory=list)  # added after the default four
    min_frequency: int = 2
    workers: int = 0  # word-counting processes; 0 = one per CPU core
    split: Literal["train", "val", "all"] = "train"  # which split of a prepared dir to read
    text_field: str = "text"  # JSON/JSONL/parquet field holding the text
    hf_split: str = "train"  # hf:NAME inputs: which split of the dataset to read

    def validate(self) -> None:
        if not self.inputs:
            raise ConfigError("tokenizer train: give at least one INPUT")
        if not self.out:
            raise ConfigError("tokenizer train: --out DIR is required")
        if self.vocab_size < 257:
            raise ConfigError(f"vocab_size {self.vocab_size} is too small (256 byte tokens + specials)")
        if self.min_frequency < 1:
            raise ConfigError(f"min_frequency must be at least 1, got {self.min_frequency}")
        check_workers(self.workers, "all cores")
        if not self.hf_split:
            raise ConfigError("tokenizer train: hf_split must name a split, e.g. train")


# What a tokenizer output may replace: an earlier tokenizer directory, never an input.
_OUTPUT_RULES = dict(what="a tokenizer directory", replaceable=is_tokenizer_dir, error=TokenizerError)


def save_tokenizer_dir(
    tok: Tokenizer,
    out: str | Path,
    inputs: Sequence[str | Path] = (),
    *,
    post_processor: dict[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
) -> Path:
    """Write `tok` as the directory `out`, whole or not at all (see `_OUTPUT_RULES`), with what an
    imported tokenizer keeps from its source (`Tokenizer.save`)."""
    with atomic_directory(out, inputs=inputs, **_OUTPUT_RULES) as tmp:
        tok.save(tmp, post_processor, config)
    return Path(out)


def train_tokenizer(cfg: TokenizerTrainConfig) -> Tokenizer:
    """Train on the documents of `cfg.inputs` and save to `cfg.out`."""
    from scratchlm.data.sources import SourceOptions, iter_documents, local_input_paths

    inputs = local_input_paths(cfg.inputs)
    check_output_dir(cfg.out, inputs=inputs, **_OUTPUT_RULES)  # before training, not after
    options = SourceOptions(text_field=cfg.text_field, split=cfg.split, hf_split=cfg.hf_split)
    docs = iter_documents(cfg.inputs, options)
    first = next(docs, None)
    names = ", ".join(map(str, cfg.inputs))
    if first is None:  # a tokenizer of bytes alone, saved as if trained, would hide the mistake
        raise TokenizerError(f"no documents in the inputs ({names}): nothing to train on")
    try:
        tok = Tokenizer.train(
            (doc.text for doc in chain([first], docs)),
            cfg.vocab_size,
            pattern=cfg.pattern,
            special_tokens=cfg.special_tokens,
            min_frequency=cfg.min_frequency,
            workers=cfg.workers or usable_cores(),
        )
    except NoTextError:  # documents of whitespace alone: the same mistake as none at all
        raise TokenizerError(f"no text but whitespace in the inputs ({names}): nothing to train on") from None
    save_tokenizer_dir(tok, cfg.out, inputs)
    return tok

"""Text in, text out: a model directory and its tokenizer behind one object.

Why a layer above `generate`: the model works on token ids, but a user types text and reads
text. Between the two sit choices that every front end (the `generate` command today) must
make the same way, so they live here once:

- which tokenizer: the one saved beside the weights, unless another is named;
- how a prompt starts: a tokenizer imported from Hugging Face may ask for a begin-of-text token
  before every text (its `post_processor` template), as Llama 3's does; models trained that
  way produce poor text without it;
- where to stop: the model directory's `generation_config.json` (`eos_token_id`, one id or a
  list), else `tokenizer_config.json`'s `eos_token`, else `<|endoftext|>`;
- what to print while streaming: a token can end inside a multi-byte UTF-8 character, so bytes
  are held back until the character is whole, and the streamed pieces join up to exactly the
  decoded text.
"""

from __future__ import annotations

import codecs
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from scratchlm.device import WEIGHT_DTYPES, WeightDtype, resolve_device
from scratchlm.errors import ConfigError, ModelError, TokenizerError
from scratchlm.fsutil import is_json_int, read_json_object
from scratchlm.infer.generate import stream_tokens
from scratchlm.infer.sampling import check_sampling
from scratchlm.interop.hf import GENERATION_CONFIG, GPT2_MERGES, GPT2_VOCAB
from scratchlm.model.gpt import GPT
from scratchlm.model.io import load_model, load_model_config, resolve_model_dir
from scratchlm.tokenizer.tokenizer import CONFIG_FILE, EOT, TOKENIZER_FILE, Tokenizer

SpecialText = Literal["refuse", "allow", "plain"]


@dataclass
class GenerateConfig:
    """`scratchlm generate`: continue a prompt with a trained or imported model."""

    model: str = ""  # model directory, checkpoint, `latest` pointer or run folder
    tokenizer: str = ""  # default: the tokenizer saved in the model directory
    prompt: str = ""
    prompt_file: str = ""  # read the prompt from this file ("-": standard input)
    max_new_tokens: int = 200
    temperature: float = 0.8  # 0: greedy
    top_k: int = 200  # 0: no top-k cut
    top_p: float = 1.0  # 1: no nucleus cut
    seed: int | None = None  # sample i uses seed + i; none: a fresh draw every run
    samples: int = 1
    special: SpecialText = "refuse"  # special-token text in the prompt: an error, control tokens, or plain text
    ignore_eos: bool = False  # keep going past the end-of-sequence token
    device: str = "auto"
    dtype: WeightDtype = "auto"  # weights in memory; auto: as stored

    def validate(self) -> None:
        if not self.model:
            raise ConfigError("generate needs a model directory (--model)")
        if self.prompt and self.prompt_file:
            raise ConfigError("give the prompt as text or as --prompt-file, not both")
        if isinstance(self.max_new_tokens, bool) or self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be ≥ 1, got {self.max_new_tokens}")
        if isinstance(self.samples, bool) or self.samples < 1:
            raise ConfigError(f"samples must be ≥ 1, got {self.samples}")
        if isinstance(self.top_k, bool) or self.top_k < 0:
            raise ConfigError(f"top_k must be ≥ 0 (0 turns it off), got {self.top_k}")
        self.temperature, _, self.top_p = check_sampling(self.temperature, self.top_k or None, self.top_p)
        if self.seed is not None and not -(2**63) <= self.seed <= 2**63 - self.samples:
            raise ConfigError(f"seed must be in [-2**63, 2**63 - samples] (sample i uses seed + i), got seed "
                              f"{self.seed} with samples {self.samples}")


@dataclass
class Completion:
    """One finished continuation: its text, ids and why it ended (`eos`, `length`: max_new_tokens,
    or `context`: the model's max_seq_len)."""

    prompt_tokens: int
    ids: list[int]
    text: str
    finish_reason: str
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return len(self.ids) / self.seconds if self.seconds > 0 else math.inf


class TextGenerator:
    """A model and the tokenizer that reads and writes its ids, ready to continue text."""

    def __init__(self, model_dir: str | Path, tokenizer: str | Path = "", device: str = "auto",
                 dtype: WeightDtype = "auto", *, load_weights: bool = True) -> None:
        """With `load_weights=False` the weights are read at the first use of `model`, so that a
        front end can check its prompt (`encode_prompt`) before the slow part."""
        directory = resolve_model_dir(model_dir)
        if dtype not in ("auto", *WEIGHT_DTYPES):
            raise ConfigError(f"dtype must be one of auto, {', '.join(WEIGHT_DTYPES)}; got {dtype!r}")
        self.device = resolve_device(device)
        self.config = load_model_config(directory)  # a wrong directory is named before anything is read
        vocab = self.config.vocab_size
        tokenizer_dir = Path(tokenizer) if tokenizer else directory
        if not tokenizer and not (directory / TOKENIZER_FILE).is_file():
            raise TokenizerError(f"{directory} holds no {TOKENIZER_FILE}; name one with --tokenizer DIR{_gpt2_hint(directory)}")
        self.tokenizer = Tokenizer.load(tokenizer_dir)
        if self.tokenizer.vocab_size > vocab:
            raise ModelError(
                f"the tokenizer has {self.tokenizer.vocab_size} ids but the model only {vocab}: "
                "they were not made for each other"
            )
        tokenizer_file = tokenizer_dir / TOKENIZER_FILE if tokenizer_dir.is_dir() else tokenizer_dir
        self.prefix_ids = prefix_ids(tokenizer_file, self.tokenizer)
        self.eos_ids = eos_ids(directory, tokenizer_file.parent, self.tokenizer)
        self.start_id = start_id(directory, tokenizer_file.parent, self.tokenizer)
        self._unused = self.tokenizer.unused_ids()
        # the weights last: every cheaper mistake above is reported without reading them
        self._weights = (directory, None if dtype == "auto" else WEIGHT_DTYPES[dtype])
        self._model: GPT | None = None
        if load_weights:
            self._model = self.model

    @property
    def model(self) -> GPT:
        """The model, its weights read on first use when they were not read at construction."""
        if self._model is None:
            self._model = load_model(self._weights[0], self.device, self._weights[1])
        return self._model

    def encode_prompt(self, text: str, special: SpecialText = "refuse") -> list[int]:
        """The prompt's ids, after the tokenizer's begin-of-text token if it asks for one."""
        if special == "allow":
            ids = self.tokenizer.encode(text, allowed_special="all")
        elif special == "plain":
            ids = self.tokenizer.encode_ordinary(text)
        else:
            try:
                ids = self.tokenizer.encode(text)
            except TokenizerError as e:
                raise TokenizerError(f"prompt: {e} (--allow-special or --plain-special)") from None
        ids = self.prefix_ids + ids
        if not ids:  # an empty prompt starts where a text starts: an unconditional sample
            ids = self._text_start_ids()
        if not ids:
            raise ConfigError("the prompt is empty and this tokenizer has no token that starts a text")
        limit = self.config.max_seq_len
        if len(ids) >= limit:
            raise ConfigError(
                f"the prompt is {len(ids)} tokens, which leaves no room for a new one: the model reads at most {limit}"
            )
        return ids

    def _text_start_ids(self) -> list[int]:
        """The token a document starts after (`start_id`), else the first stop id. A stop id may end
        a chat turn instead (`<|im_end|>`), so it comes last: what follows it is a reply, not a new
        document."""
        return [self.start_id] if self.start_id is not None else list(self.eos_ids[:1])

    def stream(self, prompt_ids: list[int], *, max_new_tokens: int, temperature: float, top_k: int = 0,
               top_p: float = 1.0, seed: int | None = None, ignore_eos: bool = False) -> Iterator[tuple[int, str]]:
        """(token id, text) pairs as they are drawn; a piece's text is empty while a UTF-8
        character is incomplete, and a last (-1, text) pair, with no token, flushes bytes that
        never completed a character (as U+FFFD)."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for token in stream_tokens(  # checks the settings; only exactly 0 and 1 are translated to "off"
            self.model, prompt_ids, max_new_tokens,
            temperature=temperature, top_k=top_k or None, top_p=None if top_p == 1.0 else top_p,
            eos_id=None if ignore_eos else self.eos_ids, seed=seed,
            vocab_limit=self.tokenizer.vocab_size, suppress_ids=self._unused,
        ):
            yield token, decoder.decode(self.tokenizer.id_to_bytes(token))
        rest = decoder.decode(b"", final=True)
        if rest:
            yield -1, rest

    def complete(self, prompt_ids: list[int], *, max_new_tokens: int, temperature: float, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None, ignore_eos: bool = False,
                 on_text=None) -> Completion:
        """Generate one continuation, handing each piece of text to `on_text` as it comes."""
        started = time.perf_counter()
        ids, pieces = [], []
        for token, piece in self.stream(prompt_ids, max_new_tokens=max_new_tokens, temperature=temperature,
                                        top_k=top_k, top_p=top_p, seed=seed, ignore_eos=ignore_eos):
            if token >= 0:
                ids.append(token)
            if piece:
                pieces.append(piece)
                if on_text is not None:
                    on_text(piece)
        seconds = time.perf_counter() - started
        return Completion(len(prompt_ids), ids, "".join(pieces), self._finish_reason(prompt_ids, ids, max_new_tokens),
                          seconds)

    def _finish_reason(self, prompt_ids: list[int], ids: list[int], max_new_tokens: int) -> str:
        if len(ids) >= max_new_tokens:
            return "length"
        if len(prompt_ids) + len(ids) >= self.config.max_seq_len:
            return "context"
        return "eos"


def _gpt2_hint(directory: Path) -> str:
    """How to use the slow GPT-2 tokenizer files a directory holds instead of a tokenizer.json."""
    if not ((directory / GPT2_VOCAB).is_file() and (directory / GPT2_MERGES).is_file()):
        return ""
    return (
        f" (it holds {GPT2_VOCAB} and {GPT2_MERGES}: `scratchlm tokenizer import --gpt2 "
        f"{directory / GPT2_VOCAB} {directory / GPT2_MERGES} --out TOKDIR` makes one)"
    )


def prefix_ids(tokenizer_file: Path, tokenizer: Tokenizer) -> list[int]:
    """Special tokens a Hugging Face tokenizer puts before every single text, as `transformers`
    encodes a prompt: the leading special tokens of a TemplateProcessing `single` template (alone
    or inside a Sequence), or the `cls` token of Roberta/Bert processing. Tokens a template puts
    after the text are left out: a prompt is continued, not closed."""
    processor = _json_or_empty(tokenizer_file).get("post_processor")

    def malformed(what: str) -> TokenizerError:
        return TokenizerError(f"{tokenizer_file}: its post_processor is malformed ({what})")

    if isinstance(processor, dict) and processor.get("type") == "Sequence":
        processors = processor.get("processors")
        if not isinstance(processors, list):
            raise malformed("a Sequence needs a list of processors")
        processor = next((p for p in processors if isinstance(p, dict) and p.get("type") in _PREFIXING), None)
    if not isinstance(processor, dict) or processor.get("type") not in _PREFIXING:
        return []
    if processor["type"] != "TemplateProcessing":  # RobertaProcessing, BertProcessing: [cls, id]
        cls = processor.get("cls")
        if not (isinstance(cls, list) and len(cls) == 2 and isinstance(cls[0], str)):
            raise malformed("cls must be [token, id]")
        return [_special_id(tokenizer_file, tokenizer, cls[0], [cls[1]])[0]]
    single, table = processor.get("single"), processor.get("special_tokens") or {}
    if not isinstance(single, list) or not isinstance(table, dict):
        raise malformed("a template needs a list 'single' and a map 'special_tokens'")
    ids: list[int] = []
    for item in single:
        special = item.get("SpecialToken") if isinstance(item, dict) else None
        if special is None:
            break  # the text ("Sequence") comes next; what follows it is a suffix
        name = special.get("id") if isinstance(special, dict) else None
        if not isinstance(name, str):
            raise malformed("a SpecialToken needs a string id")
        entry = table.get(name)
        ids += _special_id(tokenizer_file, tokenizer, name, entry.get("ids") if isinstance(entry, dict) else None)
    return ids


_PREFIXING = ("TemplateProcessing", "RobertaProcessing", "BertProcessing")


def _special_id(where: Path, tokenizer: Tokenizer, name: str, ids: object) -> list[int]:
    """The ids a template gives `name`: its own list when it has one (transformers uses those),
    else the tokenizer's id for that special token."""
    if ids is None:
        if name not in tokenizer.special_tokens:
            raise TokenizerError(f"{where}: its template starts texts with {name!r}, which it does not define")
        return [tokenizer.special_tokens[name]]
    if not isinstance(ids, list) or not ids or not all(is_json_int(i) and 0 <= i < tokenizer.vocab_size for i in ids):
        raise TokenizerError(f"{where}: its template gives {name!r} the ids {ids!r}, which are not token ids here")
    return list(ids)


def eos_ids(model_dir: Path, tokenizer_dir: Path, tokenizer: Tokenizer) -> list[int]:
    """The ids that end a continuation (see the module doc for where they come from)."""
    configured = _generation_setting(model_dir, "eos_token_id", tokenizer, several=True)
    if configured is not None:
        return configured
    named = _config_token_id(tokenizer_dir, "eos_token", tokenizer)
    if named is not None:
        return [named]
    return [tokenizer.special_tokens[EOT]] if EOT in tokenizer.special_tokens else []


def start_id(model_dir: Path, tokenizer_dir: Path, tokenizer: Tokenizer) -> int | None:
    """The id a text starts after: `generation_config.json`'s `bos_token_id`, else
    `tokenizer_config.json`'s `bos_token`, else `<|endoftext|>` (which ends the text before)."""
    configured = _generation_setting(model_dir, "bos_token_id", tokenizer)
    if configured is not None:
        return configured
    named = _config_token_id(tokenizer_dir, "bos_token", tokenizer)
    return named if named is not None else tokenizer.special_tokens.get(EOT)


def _config_token_id(tokenizer_dir: Path, key: str, tokenizer: Tokenizer) -> int | None:
    """The id of the special token `tokenizer_config.json` names under `key`, if it names one."""
    name = _json_or_empty(tokenizer_dir / CONFIG_FILE).get(key)
    if isinstance(name, dict):  # older transformers files store an AddedToken object
        name = name.get("content")
    return tokenizer.special_tokens.get(name) if isinstance(name, str) else None


def _generation_setting(model_dir: Path, key: str, tokenizer: Tokenizer, several: bool = False):
    """A token id (or, with `several`, a list of ids) from `generation_config.json`; None if unset."""
    path = model_dir / GENERATION_CONFIG
    value = _json_or_empty(path).get(key)
    if value is None:
        return None
    values = value if several and isinstance(value, list) else [value]
    if not values or not all(is_json_int(v) for v in values):
        raise ModelError(f"{path}: {key} must be a token id{' or a list of them' if several else ''}")
    bad = [v for v in values if not 0 <= v < tokenizer.vocab_size]
    if bad:
        raise ModelError(f"{path}: {key} {bad[0]} is not in the tokenizer")
    return list(dict.fromkeys(values)) if several else values[0]


def _json_or_empty(path: Path) -> dict[str, Any]:
    """A JSON object file's contents, or {} when it is absent; a damaged one is an error."""
    return read_json_object(path, ModelError) if path.is_file() else {}

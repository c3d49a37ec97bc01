"""`Tokenizer`: a trained byte-level BPE with special tokens; encodes with tiktoken's engine.

A tokenizer is its `ranks` (token bytes -> id; the id is also the merge priority), its
`special_tokens` (text -> id, placed after the ordinary tokens) and its pre-tokenization
`pattern`. Encoding and decoding run in tiktoken (Rust), built from exactly these three things;
`scratchlm.tokenizer.reference` holds the pure-Python definition the tests compare it with.

Special-token text inside ordinary text follows tiktoken's rule: `encode` raises unless the
token is allowed (then it becomes the control token) or disallowed checks are switched off (then
it is encoded as plain text); `encode_ordinary` always treats it as plain text. Where one allowed
special is a prefix of another (`[[A`, `[[A]]`), the longest match wins, as in Hugging Face.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Container, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal

import tiktoken

from scratchlm.errors import TokenizerError
from scratchlm.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text, holds_only_files
from scratchlm.tokenizer import formats
from scratchlm.tokenizer.bpe import train_bpe
from scratchlm.tokenizer.patterns import (
    encodable_text,
    pattern_name,
    resolve_pattern,
    skipped_text,
    skips_text,
    word_finder,
)

EOT = "<|endoftext|>"
PAD = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
DEFAULT_SPECIAL_TOKENS = (EOT, PAD, IM_START, IM_END)

# The trainer holds a token as one character, so its ids stay below 0x110000; loaded files are held
# to the same bound, so that a corrupt id cannot make `token_bytes` allocate gigabytes.
MAX_VOCAB = 1_000_000
_BYTE_TOKENS = frozenset(bytes([b]) for b in range(256))  # in every byte-level BPE
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # where transformers >= 4.50 saves a chat template
_TOKENIZER_DIR_FILES = frozenset({TOKENIZER_FILE, CONFIG_FILE})  # what `save` writes


def is_tokenizer_dir(path: Path) -> bool:
    """A directory `Tokenizer.save` wrote: its two files and nothing else. Model and checkpoint
    directories hold a tokenizer.json too, and replacing one of those would lose the model. Hidden
    files are let pass (a `.DS_Store` a file browser drops in), as for tokens and model directories;
    a hidden folder such as `.git/` is not, since replacing the directory would delete it."""
    return (path / TOKENIZER_FILE).is_file() and holds_only_files(path, _TOKENIZER_DIR_FILES.__contains__)


def _special_list(extra: Sequence[str] | None) -> list[str]:
    """The default specials followed by the user's own, without repeats.

    Checked against the byte tokens now, so that a special that can only fail does so before
    training rather than after it.
    """
    names = list(DEFAULT_SPECIAL_TOKENS)
    for name in extra or ():
        if name not in names:
            names.append(name)
    _check_special_names(names, _BYTE_TOKENS)
    return names


def _check_special_names(names: Iterable[object], ranks: Container[bytes], saved: bool = False) -> None:
    """Special tokens are non-empty text that is not an ordinary token's text in tokenizer.json.

    Empty text would match everywhere (encode never ends); text that is also an ordinary token's
    byte-level text makes two vocab entries of one name, so the file could not be read back; and
    text written wholly in GPT-2's byte stand-ins means other bytes to Hugging Face unless each
    character stands for itself: it reads `Ġx` as " x", and decodes `[ß]` as the bytes `[\\xdf]`
    (mojibake). Loading a `saved` tokenizer lets stand-ins that are not UTF-8 pass: they only
    decode wrongly in Hugging Face, and tokenizers saved before they were refused must stay readable.
    """
    for name in names:
        if not isinstance(name, str) or not name:
            raise TokenizerError(f"special token {name!r} must be a non-empty string")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:  # e.g. argv bytes that are not UTF-8, kept as surrogate escapes
            raise TokenizerError(f"special token {name!r} is not valid text (it holds bytes that are not UTF-8)") from None
        token = formats.byte_level_token(name)
        if token in ranks:
            raise TokenizerError(
                f"special token {name!r} is also the text of an ordinary token in tokenizer.json; "
                f"use a delimited form such as '<|{name}|>'"
            )
        if token is not None and token != name.encode():
            _refuse_stand_ins(name, token, saved)


def _refuse_stand_ins(name: str, token: bytes, saved: bool) -> None:
    """Refuse special text that tokenizer.json would read as the other bytes `token` (see above)."""
    try:
        shown = repr(token.decode("utf-8"))
    except UnicodeDecodeError:
        if saved:
            return
        shown = f"the bytes {token!r} (not UTF-8), which Hugging Face would decode as mojibake"
    raise TokenizerError(
        f"special token {name!r} is written in the byte stand-ins of tokenizer.json for {shown}; "
        "use other characters"
    )


def _vocab_size(ranks: Mapping[bytes, int], special_tokens: Mapping[str, int]) -> int:
    """One past the highest id, after checking that every id is distinct and in range."""
    taken = set(ranks.values())
    for name, idx in special_tokens.items():
        if idx in taken:
            raise TokenizerError(f"special token {name!r} has id {idx}, already used by another token")
        taken.add(idx)
    if min(taken) < 0:
        raise TokenizerError("token ids must not be negative")
    if max(taken) >= MAX_VOCAB:
        raise TokenizerError(f"token id {max(taken)} is too large (a vocab has at most {MAX_VOCAB} ids)")
    return max(taken) + 1


def _has_prefix_pair(names: AbstractSet[str]) -> bool:
    """Whether one special token's text starts another's (then the match order matters).

    In sorted order a prefix comes right before some text it starts (everything between them
    starts with it too), so neighbours suffice: O(n log n), where all pairs took seconds to load
    a vocab with thousands of specials.
    """
    ordered = sorted(names)
    return any(b.startswith(a) for a, b in zip(ordered, ordered[1:]))


def _reraise_unless_regex_gave_up(error: BaseException) -> None:
    """Re-raise `error` unless it is tiktoken's regex engine giving up on a text (its backtracking
    stack is bounded): a ValueError from `encode`, or in older tiktoken a Rust panic
    (`PanicException`, a BaseException matched by name since pyo3 does not export it)."""
    if isinstance(error, ValueError) and str(error).startswith("Regex error"):
        return
    if type(error).__name__ == "PanicException":
        return
    raise error


@lru_cache(maxsize=64)
def _special_regex(names: frozenset[str]) -> re.Pattern[str]:
    """Matches any of `names`, the longest first where several start at the same place."""
    return re.compile("|".join(re.escape(name) for name in sorted(names, key=len, reverse=True)))



def tokenizer_file(path: str | Path) -> Path:
    """The `tokenizer.json` a tokenizer path names: the file itself, or the one in the directory."""
    path = Path(path)
    if not path.exists():
        raise TokenizerError(f"{path}: no such tokenizer file or directory")
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.exists():
        raise TokenizerError(f"{path}: no {TOKENIZER_FILE} in this directory")
    return file

class Tokenizer:
    """Byte-level BPE tokenizer. Build with `train`, `load`, `from_gpt2` or `from_hf`."""

    def __init__(self, ranks: Mapping[bytes, int], special_tokens: Mapping[str, int], pattern: str) -> None:
        formats.check_ranks(ranks, "tokenizer")
        self.ranks: dict[bytes, int] = dict(ranks)
        self.special_tokens: dict[str, int] = dict(special_tokens)
        self.pattern: str = resolve_pattern(pattern, probe=False)  # probed where it is chosen
        _check_special_names(self.special_tokens, self.ranks, saved=True)  # new ones: where chosen
        self.vocab_size: int = _vocab_size(self.ranks, self.special_tokens)
        self._special_names = frozenset(self.special_tokens)
        self._specials_overlap = _has_prefix_pair(self._special_names)
        self._pattern_skips = skips_text(self.pattern)  # then each text is checked before encoding
        try:
            self._encoding = tiktoken.Encoding(
                name="scratchlm",
                pat_str=self.pattern,
                mergeable_ranks=self.ranks,
                special_tokens=self.special_tokens,
            )
        except ValueError as e:
            raise TokenizerError(f"pattern {self.pattern!r} is not supported by tiktoken's regex engine: {e}") from None

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        pattern: str = "gpt4",
        special_tokens: Sequence[str] | None = None,
        min_frequency: int = 2,
        workers: int = 1,
        show_progress: bool = True,
    ) -> Tokenizer:
        """Learn a BPE of `vocab_size` ids in all: 256 bytes + merges + special tokens.

        `special_tokens` are added after the defaults (`<|endoftext|>`, `<|pad|>`,
        `<|im_start|>`, `<|im_end|>`). The vocab is smaller when the data runs out of pairs
        occurring at least `min_frequency` times. No merge makes a special token's text, which
        web text often holds literally: tokenizer.json cannot name two tokens alike.
        """
        if isinstance(texts, (str, bytes)):  # iterated, it is one document per character: no merges
            raise TokenizerError("texts must be documents (e.g. a list of str), not one str: pass [text]")
        names = _special_list(special_tokens)
        regex_text = resolve_pattern(pattern)
        if not isinstance(vocab_size, int) or vocab_size < 256 + len(names):
            raise TokenizerError(
                f"vocab size {vocab_size} is too small: it needs 256 byte tokens + {len(names)} special tokens"
            )
        if vocab_size > MAX_VOCAB:
            raise TokenizerError(f"vocab size {vocab_size} is too large (at most {MAX_VOCAB})")
        if min_frequency < 1:
            raise TokenizerError(f"min_frequency must be at least 1, got {min_frequency}")
        vocab, _merges = train_bpe(
            texts,
            vocab_size - 256 - len(names),
            regex_text,
            min_frequency=min_frequency,
            workers=max(1, workers),
            show_progress=show_progress,
            forbidden={token for token in map(formats.byte_level_token, names) if token is not None},
        )
        ranks = {token: idx for idx, token in enumerate(vocab)}
        specials = {name: len(vocab) + i for i, name in enumerate(names)}
        return cls(ranks, specials, regex_text)

    @classmethod
    def load(cls, path: str | Path, imported: bool = False) -> Tokenizer:
        """Load a tokenizer directory (or its `tokenizer.json`) written by `save` or by Hugging Face;
        `imported` runs the checks a foreign file gets once, at import (`formats.read_hf_tokenizer`)."""
        file = tokenizer_file(path)
        return cls._from_file(file, *formats.read_hf_tokenizer(file, imported), imported=imported)

    @classmethod
    def from_hf(cls, tokenizer_json: str | Path) -> Tokenizer:
        """Import a Hugging Face byte-level BPE `tokenizer.json` (or the directory holding it);
        unlike `load`, its pattern must also split text alike in every engine (`check_pattern`)."""
        tok = cls.load(tokenizer_json, imported=True)
        try:
            resolve_pattern(tok.pattern)
        except TokenizerError as e:
            raise TokenizerError(f"{tokenizer_json}: {e}") from None
        return tok

    @classmethod
    def from_gpt2(cls, encoder_json: str | Path, vocab_bpe: str | Path) -> Tokenizer:
        """Import GPT-2's `encoder.json` + `vocab.bpe`: the same ids GPT-2 gives."""
        ranks, specials = formats.read_gpt2(encoder_json, vocab_bpe)
        return cls._from_file(encoder_json, ranks, specials, "gpt2", imported=True)

    @classmethod
    def _from_file(
        cls,
        where: str | Path,
        ranks: Mapping[bytes, int],
        special_tokens: Mapping[str, int],
        pattern: str,
        imported: bool = False,
    ) -> Tokenizer:
        """The constructor, with the file named in its errors: the file is what the user must fix.
        An imported file's specials are new to scratchlm, so they are checked as chosen ones."""
        try:
            if imported:
                _check_special_names(special_tokens, ranks)
            return cls(ranks, special_tokens, pattern)
        except TokenizerError as e:
            raise TokenizerError(f"{where}: {e}") from None

    def add_special_tokens(self, names: Sequence[str]) -> Tokenizer:
        """A copy with more special tokens, given the next free ids; existing ids do not change."""
        _check_special_names(names, self.ranks)
        specials = dict(self.special_tokens)
        next_id = self.vocab_size
        for name in names:
            if name not in specials:
                specials[name] = next_id
                next_id += 1
        return Tokenizer(self.ranks, specials, self.pattern)

    # --- files -------------------------------------------------------------------------------

    def to_hf_json(self, post_processor: dict[str, Any] | None = None) -> bytes:
        """The canonical `tokenizer.json` bytes: what `save` writes."""
        doc = formats.hf_tokenizer_json(self.ranks, self.special_tokens, self.pattern)
        if post_processor is not None:
            doc["post_processor"] = post_processor
        return formats.canonical_json_bytes(doc)

    @cached_property
    def sha256(self) -> str:
        """The tokenizer's identity, recorded in tokens dirs and checkpoints to catch a mismatch.

        It hashes the tokenizer.json of scratchlm's first layout (special tokens only in
        `added_tokens`), not the file `save` now writes (specials in the vocab too): both hold
        the same tokenizer, and hashing the first keeps every recorded hash valid.
        """
        identity = formats.hf_tokenizer_json(
            self.ranks, self.special_tokens, self.pattern, specials_in_vocab=False
        )
        return hashlib.sha256(formats.canonical_json_bytes(identity)).hexdigest()

    def save(
        self,
        directory: str | Path,
        post_processor: dict[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write `tokenizer.json` and `tokenizer_config.json` into `directory` (atomically each). An
        imported tokenizer keeps what generation needs from its source: the `post_processor` (a
        begin-of-text template) and `config` entries (its bos/eos tokens)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(directory / TOKENIZER_FILE, self.to_hf_json(post_processor))
        tokenizer_config = formats.tokenizer_config(self.special_tokens, pattern_name(self.pattern))
        atomic_write_json(directory / CONFIG_FILE, {**tokenizer_config, **(config or {})})
        return directory

    def export_tiktoken(self, path: str | Path) -> Path:
        """Write tiktoken's rank file (`base64(token) rank` per line); specials are not in it."""
        atomic_write_text(path, formats.tiktoken_rank_lines(self.ranks))
        return Path(path)

    # --- ids ---------------------------------------------------------------------------------

    @property
    def eot_id(self) -> int:
        return self._special_id(EOT)

    @property
    def pad_id(self) -> int | None:
        return self.special_tokens.get(PAD)

    def _special_id(self, name: str) -> int:
        try:
            return self.special_tokens[name]
        except KeyError:
            raise TokenizerError(f"this tokenizer has no {name} token") from None

    def token_bytes(self) -> list[int]:
        """Byte length of every id (0 for special tokens and unused ids): for bits per byte."""
        lengths = [0] * self.vocab_size
        for token, idx in self.ranks.items():
            lengths[idx] = len(token)
        return lengths

    def id_to_bytes(self, idx: int) -> bytes:
        """The bytes of one token (a special token's UTF-8 text)."""
        return self.decode_bytes([idx])

    # --- encode / decode ---------------------------------------------------------------------

    def encode(
        self,
        text: str,
        *,
        allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
        disallowed_special: Literal["all"] | Collection[str] = "all",
    ) -> list[int]:
        """Encode text. Special-token text is an error unless allowed (then a control token) or
        removed from `disallowed_special` (then plain text)."""
        names = self._special_names
        allowed = names if allowed_special == "all" else names & frozenset(allowed_special)
        disallowed = names - allowed if disallowed_special == "all" else frozenset(disallowed_special)
        if disallowed:
            self._refuse_disallowed(text, allowed, disallowed)
        if not allowed:
            return self.encode_ordinary(text)
        if self._specials_overlap or self._pattern_skips:  # the latter: its plain stretches get checked
            return self._encode_longest_first(text, allowed)
        try:
            return self._encoding.encode(text, allowed_special=allowed, disallowed_special=())
        except BaseException as e:
            _reraise_unless_regex_gave_up(e)
        return self._encode_longest_first(text, allowed)  # its plain stretches take encode_ordinary's fallback

    @staticmethod
    def _refuse_disallowed(text: str, allowed: frozenset[str], disallowed: frozenset[str]) -> None:
        """Raise at the first disallowed special in `text`. Matches are found as encoding finds
        them (longest first), so a disallowed `[[A` inside an allowed `[[A]]` is no violation."""
        for found in _special_regex(allowed | disallowed).finditer(text):
            if found.group() in disallowed:
                raise TokenizerError(
                    f"the text holds disallowed special token {found.group()!r}: allow it to get the "
                    "control token, or encode it as plain text"
                )

    def _encode_longest_first(self, text: str, allowed: frozenset[str]) -> list[int]:
        """Encode with the longest allowed special winning where several start at one place: Hugging
        Face's rule (tiktoken takes whichever its regex tries first)."""
        ids: list[int] = []
        start = 0
        for found in _special_regex(allowed).finditer(text):
            ids += self.encode_ordinary(text[start : found.start()])
            ids.append(self.special_tokens[found.group()])
            start = found.end()
        return ids + self.encode_ordinary(text[start:])

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text with special-token text treated as plain text.

        Through tiktoken's `encode` with nothing allowed (the same ids as its `encode_ordinary`):
        where the regex engine gives up, that raises an error instead of a Rust panic, which
        also prints a backtrace to stderr. With a pattern that skips characters (a tokenizer saved
        before patterns were checked, or a foreign file), text it would skip is an error, not lost.
        """
        if self._pattern_skips and (lost := skipped_text(self.pattern, text)):
            raise TokenizerError(
                f"this tokenizer's pattern {self.pattern!r} skips {lost[:20]!r} of the text: encoding would "
                "lose it (a pattern must match every character; decoding is unaffected)"
            )
        try:
            return self._encoding.encode(text, allowed_special=frozenset(), disallowed_special=())
        except BaseException as e:
            _reraise_unless_regex_gave_up(e)
        return self._encode_by_words(text)

    def _encode_by_words(self, text: str) -> list[int]:
        """`encode_ordinary` for text whose words tiktoken's regex engine cannot find (a run of
        about a million spaces overflows its backtracking stack): tiktoken's own path that cuts the
        words with Python's `regex`, whose stack is unbounded, and merges each in Rust. Both engines
        cut alike (`check_pattern`), so the ids are those tiktoken would give. The words are the
        regex's whole matches (`word_finder`): tiktoken's own path here, `_encode_only_native_bpe`,
        takes `findall`'s, a group's text where the pattern has one."""
        ids: list[int] = []
        for word in word_finder(self.pattern)(encodable_text(text)):
            ids += self._encoding._encode_single_piece(word)
        return ids

    def encode_batch(self, texts: Sequence[str], num_threads: int = 8) -> list[list[int]]:
        """`encode_ordinary` of many texts on several threads (tiktoken releases the GIL)."""
        with ThreadPoolExecutor(num_threads) as pool:
            return list(pool.map(self.encode_ordinary, texts))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The exact bytes of a sequence of ids (special tokens give their text)."""
        ids = list(ids)
        if ids:
            low, high = min(ids), max(ids)
            if low < 0 or high >= self.vocab_size:
                bad = low if low < 0 else high
                raise TokenizerError(f"token id {bad} is out of range for a vocab of {self.vocab_size}")
        try:
            return self._encoding.decode_bytes(ids)
        except (KeyError, TypeError, OverflowError):
            bad = next((i for i in ids if not isinstance(i, int) or i not in self._valid_ids), ids[0])
            raise TokenizerError(f"token id {bad!r} is not in this tokenizer") from None

    @cached_property
    def _valid_ids(self) -> set[int]:
        return set(self.ranks.values()) | set(self.special_tokens.values())

    def unused_ids(self) -> list[int]:
        """Ids below `vocab_size` that name no token (gaps some imported files leave): a sampler
        must never draw them, since they have no text."""
        return [i for i in range(self.vocab_size) if i not in self._valid_ids]

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Text of a sequence of ids; bytes that are not valid UTF-8 become U+FFFD by default."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, pattern={pattern_name(self.pattern)!r}, "
            f"special_tokens={json.dumps(self.special_tokens)})"
        )

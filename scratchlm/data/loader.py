"""Reading a tokens dir, and deterministic batches from it.

`TokenDataset` memory-maps one split of a tokens dir (`train.bin`/`train.idx`, checked against
`meta.json`). `Batcher` turns it into `(x, y)` batches where the batch for
`(seed, step, micro_step, rank, world_size, grad_accum)` is a pure function of those numbers: a
resumed run needs only its step number, and ranks never overlap.

The rule that makes data parallelism exact: there is one global stream of sequences per seed, and
micro-batch slot `k = (step * grad_accum + micro_step) * world_size + rank` holds sequences
`[k * micro_batch, (k + 1) * micro_batch)` of it. One optimizer step therefore consumes slots
`[step * grad_accum * world_size, (step + 1) * grad_accum * world_size)` whatever the split
between ranks and accumulation, so 2 ranks x A accumulation steps see the same sequences as
1 rank x 2A.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from scratchlm.data import TOKENS_FORMAT_VERSION
from scratchlm.errors import DataError
from scratchlm.fsutil import is_json_int, read_json_object
from scratchlm.wording import counted

Mode = Literal["random", "sequential", "document"]
MODES: tuple[str, ...] = ("random", "sequential", "document")
DTYPES = {"uint16": np.uint16, "uint32": np.uint32}
REQUIRED_META_KEYS = ("dtype", "vocab_size", "tokenizer_sha256", "eot_id", "splits")


def read_meta(tokens_dir: str | Path) -> dict[str, Any]:
    """Load and check `meta.json`; a dir without one is not a (complete) tokens dir."""
    tokens_dir = Path(tokens_dir)
    if tokens_dir.exists() and not tokens_dir.is_dir():  # e.g. its meta.json or train.bin given
        raise DataError(f"{tokens_dir}: not a directory; give the tokens dir that `scratchlm data tokenize` wrote")
    if not tokens_dir.is_dir():
        raise DataError(f"tokens dir not found: {tokens_dir}")
    path = tokens_dir / "meta.json"
    if not path.is_file():
        raise _no_meta_error(tokens_dir)
    meta = read_json_object(path, DataError)
    check_meta(meta, path)
    return meta


def _no_meta_error(tokens_dir: Path) -> DataError:
    """Why a dir has no meta.json, and how to recover when an interrupted append is the cause."""
    from scratchlm.data.tokenize import APPEND_MARKER  # here: tokenize imports pyarrow

    if (tokens_dir / APPEND_MARKER).is_file():
        return DataError(
            f"{tokens_dir}: an append to this tokens dir was interrupted; re-run `scratchlm data tokenize` "
            "with --append into it to roll the append back and redo it, or without --append to rebuild it"
        )
    return DataError(
        f"{tokens_dir}: no meta.json, so not a complete tokens dir "
        "(make one with `scratchlm data tokenize`; an interrupted run leaves none)"
    )


def _is_count(value: Any) -> bool:
    return is_json_int(value) and value >= 0


MAX_VOCAB_SIZE = 1 << 24  # far above any tokenizer's (Gemma's 256K); beyond, meta.json is damaged


def check_meta(meta: Mapping[str, Any], path: Path) -> None:
    """Refuse a meta.json whose fields have the wrong types, so no reader fails on them later."""
    for key in REQUIRED_META_KEYS:
        if key not in meta:
            raise DataError(f"{path}: missing key '{key}'")
    if not isinstance(meta["dtype"], str) or meta["dtype"] not in DTYPES:
        raise DataError(f"{path}: dtype {meta['dtype']!r} is not one of {', '.join(DTYPES)}")
    if not _is_count(meta["vocab_size"]) or not meta["vocab_size"]:
        raise DataError(f"{path}: 'vocab_size' must be a positive integer, got {meta['vocab_size']!r}")
    most = min(MAX_VOCAB_SIZE, 1 << (8 * np.dtype(meta["dtype"]).itemsize))
    if meta["vocab_size"] > most:  # ids the dtype cannot hold, or tables no real vocabulary needs
        raise DataError(f"{path}: 'vocab_size' {meta['vocab_size']} is more than {meta['dtype']} tokens allow ({most})")
    if not _is_count(meta["eot_id"]) or meta["eot_id"] >= meta["vocab_size"]:
        raise DataError(f"{path}: 'eot_id' must be an id below vocab_size, got {meta['eot_id']!r}")
    if not isinstance(meta["tokenizer_sha256"], str):
        raise DataError(f"{path}: 'tokenizer_sha256' must be a string, got {meta['tokenizer_sha256']!r}")
    if not isinstance(meta["splits"], dict):
        raise DataError(f"{path}: 'splits' must be an object")
    for split, counts in meta["splits"].items():
        if split in ("", ".", "..") or split.startswith(".") or "/" in split or "\\" in split:
            # names the split's .bin/.idx beside meta.json: never a path that leaves the tokens dir
            raise DataError(f"{path}: split name {split!r} is not a plain file name")
        if not isinstance(counts, dict) or not all(_is_count(counts.get(k)) for k in ("tokens", "documents")):
            raise DataError(f"{path}: split '{split}' needs 'tokens' and 'documents' counts")
        if not _is_count(counts.get("bytes", 0)):
            raise DataError(f"{path}: split '{split}': 'bytes' must be a count, got {counts['bytes']!r}")
    if not _is_count(meta.get("raw_documents", 0)):  # optional: tokens dirs made before it lack it
        raise DataError(f"{path}: 'raw_documents' must be a whole number >= 0, got {meta['raw_documents']!r}")
    version = meta.get("format_version", TOKENS_FORMAT_VERSION)
    if not is_json_int(version) or not 1 <= version <= TOKENS_FORMAT_VERSION:
        # A newer scratchlm's layout read as this one's would give wrong tokens, not an error.
        raise DataError(
            f"{path}: 'format_version' {version!r} is not one this scratchlm reads (1 to {TOKENS_FORMAT_VERSION}); "
            "tokenize again with this version, or use the scratchlm that made it"
        )


def has_val_split(meta: Mapping[str, Any]) -> bool:
    """Whether a checked meta.json records validation tokens (`data tokenize ... val_every = 0`
    makes none, and a small corpus may leave the split empty)."""
    val = meta["splits"].get("val")
    return val is not None and val["tokens"] > 0


def check_tokenizer_match(meta: Mapping[str, Any], tokenizer_sha256: str) -> None:
    """Refuse tokens made by another tokenizer: the ids would mean different text to the model."""
    made_with = meta.get("tokenizer_sha256")
    if made_with != tokenizer_sha256:
        raise DataError(
            f"the tokens were made with tokenizer sha256 {str(made_with)[:12]}… but this tokenizer is "
            f"{tokenizer_sha256[:12]}…; re-run `scratchlm data tokenize` with the model's tokenizer"
        )


class TokenDataset:
    """One split of a tokens dir: a read-only memmap of token ids plus document start offsets."""

    def __init__(self, tokens: np.ndarray, documents: np.ndarray, meta: dict[str, Any], split: str, path: Path):
        self.tokens = tokens
        self.documents = documents
        self.meta = meta
        self.split = split
        self.path = path

    @classmethod
    def open(cls, tokens_dir: str | Path, split: str = "train") -> TokenDataset:
        tokens_dir = Path(tokens_dir)
        meta = read_meta(tokens_dir)
        info = meta["splits"].get(split)
        if info is None:
            raise DataError(f"{tokens_dir}: no '{split}' split (splits: {', '.join(meta['splits']) or 'none'})")
        n_tokens, n_docs = info["tokens"], info["documents"]  # counts: checked by read_meta
        dtype = np.dtype(DTYPES[meta["dtype"]])
        tokens = _map_checked(tokens_dir / f"{split}.bin", dtype, n_tokens, "tokens")
        documents = _map_checked(tokens_dir / f"{split}.idx", np.dtype(np.int64), n_docs, "document offsets")
        # Every document ends with an end-of-text token, so its start is past the one before:
        # offsets that repeat (an .idx of zeros) made every document-mode window the same one.
        increasing = not np.any(documents[1:] <= documents[:-1])
        if n_docs and (documents[0] != 0 or not 0 <= documents[-1] < n_tokens or not increasing):
            raise DataError(f"{tokens_dir / f'{split}.idx'}: document offsets do not fit {split}.bin (damaged?)")
        return cls(tokens, documents, meta, split, tokens_dir)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def num_documents(self) -> int:
        return int(self.documents.shape[0])

    def document(self, i: int) -> np.ndarray:
        """Token ids of document `i`, ending with its end-of-text token."""
        if not -self.num_documents <= i < self.num_documents:
            raise IndexError(f"document {i} out of range ({counted(self.num_documents, 'document')})")
        i %= self.num_documents
        start = int(self.documents[i])
        end = int(self.documents[i + 1]) if i + 1 < self.num_documents else len(self)
        return self.tokens[start:end]

    def document_lengths(self) -> np.ndarray:
        if self.num_documents == 0:
            return np.zeros(0, dtype=np.int64)
        return np.diff(np.asarray(self.documents), append=len(self))


def _map_checked(path: Path, dtype: np.dtype, count: int, what: str) -> np.ndarray:
    """Memory-map `count` items of `dtype` from `path`, refusing a file of any other size."""
    if not path.is_file():
        raise DataError(f"{path}: file missing from the tokens dir")
    size, expected = path.stat().st_size, count * dtype.itemsize
    if size != expected:
        state = "truncated" if size < expected else "longer than recorded"
        raise DataError(
            f"{path}: {state}: {size} bytes, but meta.json records {count} {what} ({expected} bytes)"
        )
    if count == 0:
        return np.zeros(0, dtype=dtype)
    # A plain ndarray view of the map: slicing and indexing it skip np.memmap's per-call overhead.
    return np.asarray(np.memmap(path, dtype=dtype, mode="r", shape=(count,)))


# --- counter-based randomness: every draw is a pure function of (seed, index) -------------------
# Plain Python integers: a batch needs a few dozen draws, where per-call numpy overhead would
# dominate.

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix64(x: int) -> int:
    """splitmix64's finalizer: a fast, well-mixing bijection on 64-bit integers."""
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _MASK64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _key(*parts: int) -> int:
    """A 64-bit key from small integers (seed, purpose, epoch), well mixed."""
    h = _GOLDEN
    for p in parts:
        h = _mix64(h ^ (p & _MASK64))
    return h


def uniform_ints(key: int, index: Iterable[int], high: int) -> list[int]:
    """The `index`-th draws, uniform in [0, high), of the stream named by `key`.

    The modulo bias is below high / 2**64: negligible for any dataset size.
    """
    return [_mix64((_mix64(i ^ key) + _GOLDEN) & _MASK64) % high for i in index]


@functools.lru_cache(maxsize=64)
def _round_keys(key: int) -> tuple[int, int, int, int]:
    return _key(key, 0), _key(key, 1), _key(key, 2), _key(key, 3)


def permute(index: Iterable[int], n: int, key: int) -> list[int]:
    """Entries `index` of a key-dependent shuffled order of [0, n), without building the order.

    A 4-round Feistel network that splits a `bits`-wide number into a high and a low part and
    alternately xors each with a hash of the other is a bijection on [0, 2**bits), the smallest
    power of two >= n. "Cycle walking" (applying it again while the value is >= n) restricts it
    to a bijection on [0, n). O(1) memory and a few microseconds per entry for any n, so a
    shuffled epoch over billions of windows costs nothing to set up.
    """
    if n <= 0:
        raise ValueError("cannot permute an empty range")
    bits = max(2, (n - 1).bit_length())
    low_bits = bits // 2
    low_mask, high_mask = (1 << low_bits) - 1, (1 << (bits - low_bits)) - 1
    k0, k1, k2, k3 = _round_keys(key)
    out = []
    for x in map(int, index):
        if not 0 <= x < n:
            raise ValueError(f"index {x} outside [0, {n})")
        while True:
            high, low = x >> low_bits, x & low_mask
            high ^= ((((low ^ k0) * _GOLDEN) & _MASK64) >> 32) & high_mask
            low ^= ((((high ^ k1) * _GOLDEN) & _MASK64) >> 32) & low_mask
            high ^= ((((low ^ k2) * _GOLDEN) & _MASK64) >> 32) & high_mask
            low ^= ((((high ^ k3) * _GOLDEN) & _MASK64) >> 32) & low_mask
            x = (high << low_bits) | low
            if x < n:
                break
        out.append(x)
    return out


# --- batches -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """How sequence numbers map to window starts for one mode (computed once per Batcher)."""

    units: int  # windows (sequential) or eligible documents (document) per epoch; 0 for random
    max_start: int  # largest valid window start


class Batcher:
    """Deterministic `(x, y)` batches of `micro_batch` windows of `seq_len + 1` tokens.

    Modes:
    - "random": each sequence starts at a uniformly drawn position (the nanoGPT way).
    - "sequential": epochs over the non-overlapping windows `[w*seq_len, w*seq_len + seq_len]`, in
      a fresh shuffled order each epoch; every window is used exactly once per epoch.
    - "document": windows that start at a document boundary (documents too near the end to fill
      a window are skipped), each eligible document once per epoch in shuffled order.
    """

    def __init__(self, dataset: TokenDataset, seq_len: int, micro_batch: int, seed: int, mode: Mode = "random"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if seq_len < 1 or micro_batch < 1:
            raise ValueError("seq_len and micro_batch must be positive")
        n = len(dataset)
        if n < seq_len + 1:
            raise DataError(
                f"{dataset.path}: split '{dataset.split}' has {n} tokens; a sequence of "
                f"seq_len={seq_len} needs at least {seq_len + 1}"
            )
        self.dataset = dataset
        self.seq_len = seq_len
        self.micro_batch = micro_batch
        self.seed = seed
        self.mode = mode
        max_start = n - seq_len - 1
        if mode == "random":
            units = 0
        elif mode == "sequential":
            units = (n - 1) // seq_len
        else:
            if dataset.num_documents == 0:
                raise DataError(f"{dataset.path}: split '{dataset.split}' records no documents for mode 'document'")
            units = int(np.searchsorted(np.asarray(dataset.documents), max_start, side="right"))
        self._plan = _Plan(units=units, max_start=max_start)
        self._offsets = np.arange(seq_len + 1, dtype=np.int64)

    @property
    def sequences_per_epoch(self) -> int | None:
        """Windows per epoch in sequential/document mode; None for random mode (no epochs)."""
        return self._plan.units or None

    def starts(self, first: int, count: int) -> np.ndarray:
        """Window start positions of global sequences `first .. first + count - 1`."""
        seq = range(first, first + count)
        if self.mode == "random":
            return np.array(uniform_ints(_key(self.seed, 0), seq, self._plan.max_start + 1), dtype=np.int64)
        units = self._plan.units
        chosen = []
        for epoch in range(first // units, (first + count - 1) // units + 1):
            lo, hi = max(first, epoch * units), min(first + count, (epoch + 1) * units)
            positions = range(lo - epoch * units, hi - epoch * units)
            chosen += permute(positions, units, _key(self.seed, 1, epoch))
        picked = np.array(chosen, dtype=np.int64)
        if self.mode == "sequential":
            return picked * self.seq_len
        return np.asarray(self.dataset.documents[picked], dtype=np.int64)

    def batch(
        self,
        step: int,
        micro_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
        grad_accum: int = 1,
        device: torch.device | str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The micro-batch for this slot: int64 tensors (micro_batch, seq_len); y is x shifted by one.

        With a CUDA `device` the batch is built in pinned memory and copied without blocking.
        """
        if not (0 <= rank < world_size and 0 <= micro_step < grad_accum and step >= 0):
            raise ValueError(
                f"bad slot: step={step} micro_step={micro_step}/{grad_accum} rank={rank}/{world_size}"
            )
        slot = (step * grad_accum + micro_step) * world_size + rank
        return self.windows(self.starts(slot * self.micro_batch, self.micro_batch), device)

    def windows(
        self, starts: np.ndarray, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(x, y)` for explicit window starts."""
        device = torch.device(device) if device is not None else None
        pin = device is not None and device.type == "cuda"
        shape = (len(starts), self.seq_len)
        x = torch.empty(shape, dtype=torch.int64, pin_memory=pin)
        y = torch.empty(shape, dtype=torch.int64, pin_memory=pin)
        windows = self.dataset.tokens[np.asarray(starts, dtype=np.int64)[:, None] + self._offsets]
        vocab = self.dataset.meta["vocab_size"]
        if windows.size and int(windows.max()) >= vocab:  # a damaged .bin: refused here, not deep in the model
            raise DataError(
                f"{self.dataset.path / f'{self.dataset.split}.bin'}: holds token ids >= vocab_size {vocab}, "
                "so it is damaged; re-run `scratchlm data tokenize`"
            )
        x.numpy()[:] = windows[:, :-1]
        y.numpy()[:] = windows[:, 1:]
        if device is None or device.type == "cpu":
            return x, y
        return x.to(device, non_blocking=pin), y.to(device, non_blocking=pin)  # pinned: overlaps compute


def validation_batches(
    dataset: TokenDataset, seq_len: int, batch_size: int, num_batches: int, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed set of batches: the same windows for every step and every run with the same seed.

    Taken from a shuffled pass over non-overlapping windows, so they spread over the whole split.
    At most one pass: a split with too few windows for `num_batches` full batches gives only the
    batches its windows fill (one of them all, if fewer than `batch_size`), so no window is
    counted twice in the validation loss, unevenly, as wrapping into a second pass would.
    """
    windows = max(1, (len(dataset) - 1) // seq_len)  # a split too short for one: Batcher says so
    rows = min(batch_size, windows)
    batcher = Batcher(dataset, seq_len, rows, seed, mode="sequential")
    return [batcher.batch(i) for i in range(min(num_batches, windows // rows))]


def has_val_windows(meta: Mapping[str, Any], seq_len: int) -> bool:
    """Whether the validation split holds at least one window of `seq_len + 1` tokens: a split of
    a document or two (`val_every` over a small corpus) may not."""
    return has_val_split(meta) and meta["splits"]["val"]["tokens"] >= seq_len + 1


__all__ = [
    "Batcher",
    "TokenDataset",
    "check_tokenizer_match",
    "has_val_windows",
    "permute",
    "read_meta",
    "validation_batches",
]

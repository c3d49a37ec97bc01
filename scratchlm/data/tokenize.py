"""Tokenize a corpus once into memory-mapped files, so training never re-tokenizes.

Output (a "tokens dir"): `train.bin`/`val.bin` hold every document's token ids followed by
`<|endoftext|>`, back to back (uint16 when the vocab fits, else uint32); `train.idx`/`val.idx`
hold each document's int64 start offset; `meta.json` records dtype, vocab size, the tokenizer's
sha256, the end-of-text id, per-split counts and how many raw documents the val rule has numbered;
`tokenizer/` is a copy of the tokenizer, so the dir is self-contained.

Documents stream through in chunks: worker processes encode chunks while this process reads the
next ones and writes finished ones in input order, so memory stays constant and the bytes are
the same for any worker count. A new dataset is built in a temp dir renamed into place at the
end; `--append` moves `meta.json` aside while it grows the files and rolls back if interrupted.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import chain, groupby
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scratchlm.config import check_workers
from scratchlm.data import TOKENS_FORMAT_VERSION
from scratchlm.data.parallel import (
    ctrl_c_held,
    die_with_parent,
    forks,
    ordered_map,
    pool_context,
    stop_pool_now,
)
from scratchlm.data.sources import (
    Document,
    SourceOptions,
    check_prepared_texts,
    is_prepared_dir,
    iter_documents,
    local_input_paths,
    prepared_columns,
    prepared_part_error,
    prepared_parts,
)
from scratchlm.errors import ConfigError, DataError
from scratchlm.fsutil import (
    atomic_directory,
    atomic_write_json,
    check_output_dir,
    directory_entries,
    exclusive_directory,
    fsync_dir,
    holds_only_files,
    read_json_object,
)
from scratchlm.machine import usable_cores
from scratchlm.progress import progress
from scratchlm.tokenizer import Tokenizer
from scratchlm.tokenizer.patterns import encoded_length
from scratchlm.tokenizer.tokenizer import CONFIG_FILE, TOKENIZER_FILE

SPLITS = ("train", "val")
UINT16_MAX_VOCAB = 65536
APPEND_MARKER = ".meta.json.appending"  # the previous meta.json while an append is in progress


@dataclass
class TokenizeConfig:
    """What `scratchlm data tokenize` does; every field is also a TOML key."""

    inputs: list[str] = field(default_factory=list)  # prepared dirs, or raw inputs `data prepare` takes
    tokenizer: str = ""  # tokenizer dir (tokenizer.json + tokenizer_config.json)
    out: str = ""  # tokens dir to write
    workers: int = 0  # encoding processes; 0 = one per CPU core
    append: bool = False  # add documents to an existing tokens dir instead of replacing it
    val_every: int = 100  # raw inputs only: every N-th document goes to val (0 = no val split)
    chunk_chars: int = 1 << 19  # text per work unit handed to a worker (smaller: less idle tail)
    text_field: str = "text"  # raw JSON/parquet inputs: the field holding the text
    hf_split: str = "train"  # hf:NAME inputs: which split of the dataset to read

    def validate(self) -> None:
        if not self.inputs:
            raise ConfigError("tokenize: give at least one input (a prepared dir or raw files)")
        if not self.tokenizer:
            raise ConfigError("tokenize: 'tokenizer' (a tokenizer dir) is required")
        if not self.out:
            raise ConfigError("tokenize: 'out' (the tokens dir to write) is required")
        check_workers(self.workers, "auto", "tokenize: ")
        if self.val_every < 0:
            raise ConfigError(f"tokenize: val_every must be >= 0, got {self.val_every}")
        if not self.hf_split:
            raise ConfigError("tokenize: hf_split must name a split, e.g. train")
        if self.chunk_chars < 1:
            raise ConfigError(f"tokenize: chunk_chars must be >= 1, got {self.chunk_chars}")


def dtype_for_vocab(vocab_size: int) -> str:
    return "uint16" if vocab_size <= UINT16_MAX_VOCAB else "uint32"


# --- reading documents ---------------------------------------------------------------------------


@dataclass
class Chunk:
    """A work unit: consecutive documents and, for each, whether it belongs to the val split.

    From a prepared dir the texts stay an Arrow string array: it travels to a worker as a few
    buffers, and the worker (not this process) turns it into Python strings.
    """

    texts: list[str] | pa.Array
    is_val: np.ndarray

    def __len__(self) -> int:
        return len(self.texts)


def _prepared_files(dirs: Sequence[Path]) -> list[tuple[Path, bool]]:
    """Every part of every prepared dir: train parts first, then val, each in name order."""
    return [
        (path, split == "val") for split in SPLITS for d in dirs for path in prepared_parts(d, split)
    ]


def _prepared_chunks(files: Sequence[tuple[Path, bool]], chunk_chars: int) -> Iterator[Chunk]:
    for path, is_val in files:
        pending: list[pa.Array] = []
        size = 0
        try:
            parquet = pq.ParquetFile(path)
            prepared_columns(parquet, path)  # refuses a part without a 'text' column
            # Small batches, so a chunk ends close to chunk_chars and the workers finish together.
            # Read by this thread alone: Arrow's reading threads took the cores the workers encode
            # on (0.1-0.2 s of CPU each in a 24 MB run on 2 cores; benchmarks/RESULTS.md, Issue 4).
            for batch in parquet.iter_batches(batch_size=16, columns=["text"], use_threads=False):
                column = batch.column(0)
                check_prepared_texts(column, path)
                pending.append(column)
                size += column.nbytes
                if size >= chunk_chars:
                    texts = pa.concat_arrays(pending)  # one compact array: only its own bytes travel
                    yield Chunk(texts, np.full(len(texts), is_val))
                    pending, size = [], 0
        except (pa.ArrowException, OSError) as e:
            raise prepared_part_error(path, e) from None
        if pending:
            texts = pa.concat_arrays(pending)
            yield Chunk(texts, np.full(len(texts), is_val))


@dataclass
class RawNumbers:
    """The `val_every` rule's numbering of raw documents. The next number is kept in meta.json
    (`raw_documents`), so an --append continues it: appending inputs one by one then splits them
    as tokenizing them together does."""

    next: int = 0

    def __next__(self) -> int:
        taken = self.next
        self.next += 1
        return taken


def _raw_chunks(config: TokenizeConfig, inputs: Sequence[str], numbers: RawNumbers) -> Iterator[Chunk]:
    """Raw inputs' documents; `numbers` counts raw documents across calls for the val rule.

    Empty texts (an empty `.txt`, a JSON record of `""`) are left out and not numbered, as `data
    prepare` drops them: each would be a lone `<|endoftext|>`, and inputs of nothing else made a
    complete-looking tokens dir instead of the "no documents" error."""
    documents = iter_documents(inputs, SourceOptions(text_field=config.text_field, hf_split=config.hf_split))
    texts: list[str] = []
    flags: list[bool] = []
    size = 0
    for doc in documents:
        if not doc.text:
            continue
        texts.append(doc.text)
        flags.append(_goes_to_val(doc, numbers, config.val_every))
        size += len(doc.text)
        if size >= config.chunk_chars:
            yield Chunk(texts, np.array(flags, dtype=bool))
            texts, flags, size = [], [], 0
    if texts:
        yield Chunk(texts, np.array(flags, dtype=bool))


def _goes_to_val(doc: Document, numbers: RawNumbers, every: int) -> bool:
    """A document of a prepared dataset found inside a directory input keeps its split, so no
    val document leaks into train; any other raw document takes the next number of the val rule."""
    if doc.split is not None:
        return doc.split == "val"
    i = next(numbers)
    return every > 0 and i % every == every - 1


def read_chunks(config: TokenizeConfig, numbers: RawNumbers) -> tuple[Iterator[Chunk], int | None]:
    """The input documents in order, in chunks of about `chunk_chars`, and their count if known.

    A prepared dir keeps its own train/val split, also beside raw inputs and inside a directory
    input; raw inputs send every `val_every`-th of their other documents (counted across all raw
    inputs, from `numbers`, which then holds the next number) to val.
    """
    groups = [(prepared, list(specs)) for prepared, specs in groupby(config.inputs, key=_is_prepared)]
    if len(groups) == 1 and groups[0][0]:  # only prepared dirs: their row counts give the total
        files = _prepared_files([Path(p) for p in config.inputs])
        return _prepared_chunks(files, config.chunk_chars), _row_count(files)
    return _chunks(config, groups, numbers), None


def _is_prepared(spec: str) -> bool:
    return is_prepared_dir(Path(spec))


def _chunks(
    config: TokenizeConfig, groups: Sequence[tuple[bool, list[str]]], numbers: RawNumbers
) -> Iterator[Chunk]:
    """Chunks of each run of prepared dirs or of raw inputs, in input order."""
    for prepared, specs in groups:
        if prepared:
            yield from _prepared_chunks(_prepared_files([Path(p) for p in specs]), config.chunk_chars)
        else:
            yield from _raw_chunks(config, specs, numbers)


def _row_count(files: Sequence[tuple[Path, bool]]) -> int:
    total = 0
    for path, _ in files:
        try:
            total += pq.ParquetFile(path).metadata.num_rows
        except (pa.ArrowException, OSError) as e:
            raise prepared_part_error(path, e) from None
    return total


# --- encoding ------------------------------------------------------------------------------------


@dataclass
class Encoded:
    """A chunk's ids, each document followed by eot, plus per-document token and byte counts."""

    tokens: np.ndarray
    lengths: np.ndarray
    nbytes: np.ndarray


def encode_texts(tokenizer: Tokenizer, texts: Sequence[str] | pa.Array, dtype: str) -> Encoded:
    """Encode documents as plain text (special-token strings stay text) and end each with eot."""
    if isinstance(texts, pa.Array):
        # Lengths counted in Python, not by Arrow: an Arrow array made into a numpy one imports
        # pandas, 0.15 s in each worker's first chunk, which then starts that much later.
        texts = texts.to_pylist()
    nbytes = np.fromiter(map(encoded_length, texts), np.int64, len(texts))
    encode, eot = tokenizer.encode_ordinary, tokenizer.eot_id  # one thread: workers give the parallelism
    ids = [encode(text) for text in texts]
    for row in ids:
        row.append(eot)  # cheaper than masking eot positions into the flat array afterwards
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    tokens = np.fromiter(chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))
    return Encoded(tokens, lengths, nbytes)


_worker_state: dict[str, Any] = {}


def _init_worker(tokenizer: Tokenizer | str, dtype: str) -> None:
    """A forked worker inherits the parent's tokenizer; a spawned one loads it from its dir."""
    die_with_parent()
    _worker_state["tokenizer"] = Tokenizer.load(tokenizer) if isinstance(tokenizer, str) else tokenizer
    _worker_state["dtype"] = dtype


def _encode_in_worker(texts: list[str] | pa.Array) -> Encoded:
    return encode_texts(_worker_state["tokenizer"], texts, _worker_state["dtype"])


class ChunkEncoder:
    """Encodes chunks in order, in this process (workers <= 1) or in `workers` processes.

    Workers are forked on Linux: they start in milliseconds with the tokenizer already in
    memory. They are started as soon as the encoder is made, before this process reads any input
    or shows a progress bar, so no helper thread exists yet at fork time. Elsewhere they are
    spawned and load the tokenizer from its dir.
    """

    def __init__(self, tokenizer: Tokenizer, tokenizer_dir: str, dtype: str, workers: int):
        self.tokenizer, self.dtype, self.workers = tokenizer, dtype, workers
        self._pool: ProcessPoolExecutor | None = None
        if workers > 1:
            initargs = (tokenizer if forks() else tokenizer_dir, dtype)
            self._pool = ProcessPoolExecutor(workers, pool_context(), initializer=_init_worker, initargs=initargs)
            gc.freeze()  # see below
            try:
                with ctrl_c_held():  # workers start inside this submit: Ctrl-C is this process's to handle
                    started = self._pool.submit(int)
                started.result()  # start the workers now
            except BaseException:
                stop_pool_now(self._pool)
                raise
            finally:
                # Forked workers share this process's memory until they write to it, and Python's
                # garbage collector writes to every object it scans: frozen, the objects that exist
                # at fork time are not scanned in the workers, whose pages then stay shared.
                gc.unfreeze()

    def __enter__(self) -> ChunkEncoder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if self._pool is None:
            return
        if exc_type is None:
            self._pool.shutdown(wait=True)
        else:  # interrupted or failed: the workers' work is abandoned (`stop_pool_now`)
            stop_pool_now(self._pool)

    def map(self, chunks: Iterable[Chunk]) -> Iterator[tuple[Chunk, Encoded]]:
        """Yield `(chunk, encoded)` in input order; at most two chunks per worker in flight."""
        if self._pool is None:
            for chunk in chunks:
                yield chunk, encode_texts(self.tokenizer, chunk.texts, self.dtype)
            return
        jobs = ((chunk, chunk.texts) for chunk in chunks)
        yield from ordered_map(self._pool, _encode_in_worker, jobs, 2 * self.workers, "tokenize")


# --- writing -------------------------------------------------------------------------------------


class SplitWriter:
    """Appends documents to `<split>.bin` and their start offsets to `<split>.idx`."""

    def __init__(
        self, directory: Path, split: str, tokens: int = 0, documents: int = 0, nbytes: int = 0, append: bool = False
    ):
        mode = "ab" if append else "wb"
        self.split = split
        self.tokens = tokens
        self.documents = documents
        self.nbytes = nbytes
        self._bin: BinaryIO = open(directory / f"{split}.bin", mode)
        self._idx: BinaryIO = open(directory / f"{split}.idx", mode)

    def write(self, tokens: np.ndarray, lengths: np.ndarray, nbytes: int) -> None:
        if not lengths.size:
            return
        starts = self.tokens + np.concatenate(([0], np.cumsum(lengths[:-1])))
        self._bin.write(tokens.tobytes())
        self._idx.write(starts.astype(np.int64).tobytes())
        self.tokens += int(tokens.size)
        self.documents += int(lengths.size)
        self.nbytes += nbytes

    def close(self, sync: bool = True) -> None:
        for f in (self._bin, self._idx):
            if sync and not f.closed:
                f.flush()
                os.fsync(f.fileno())
            f.close()


def route(encoded: Encoded, is_val: np.ndarray, writers: dict[str, SplitWriter]) -> None:
    """Send each document of an encoded chunk to its split's writer, keeping order."""
    if not is_val.any():
        writers["train"].write(encoded.tokens, encoded.lengths, int(encoded.nbytes.sum()))
        return
    if is_val.all():
        writers["val"].write(encoded.tokens, encoded.lengths, int(encoded.nbytes.sum()))
        return
    token_is_val = np.repeat(is_val, encoded.lengths)
    writers["val"].write(encoded.tokens[token_is_val], encoded.lengths[is_val], int(encoded.nbytes[is_val].sum()))
    writers["train"].write(
        encoded.tokens[~token_is_val], encoded.lengths[~is_val], int(encoded.nbytes[~is_val].sum())
    )


def _stream_into(
    config: TokenizeConfig, tokenizer: Tokenizer, dtype: str, writers: dict[str, SplitWriter], numbers: RawNumbers
) -> None:
    """Encode every input document into `writers`, then close them (synced only on success).
    Inputs without a document are refused, as `data prepare` refuses them: a tokens dir of nothing
    (or an append of nothing) would look like a finished stage."""
    workers = config.workers or usable_cores()
    try:
        documents = 0
        with ChunkEncoder(tokenizer, config.tokenizer, dtype, workers) as encoder:
            chunks, total = read_chunks(config, numbers)
            with progress(total=total, unit="doc", desc="tokenize") as bar:
                for chunk, encoded in encoder.map(chunks):
                    route(encoded, chunk.is_val, writers)
                    bar.update(len(chunk))
                    documents += len(chunk)
        if not documents:
            raise DataError(f"no documents found in the inputs: {', '.join(map(str, config.inputs))}")
    except BaseException:
        for w in writers.values():
            w.close(sync=False)
        raise
    for w in writers.values():
        w.close()


def _meta(tokenizer: Tokenizer, dtype: str, splits: dict[str, dict[str, int]], numbers: RawNumbers) -> dict[str, Any]:
    return {
        "format_version": TOKENS_FORMAT_VERSION,
        "dtype": dtype,
        "vocab_size": tokenizer.vocab_size,
        "tokenizer_sha256": tokenizer.sha256,
        "eot_id": tokenizer.eot_id,
        "splits": splits,
        "raw_documents": numbers.next,
    }


def _raw_numbers(meta: dict[str, Any]) -> RawNumbers:
    """Where an append continues the `val_every` numbering. A meta.json older than
    `raw_documents` gives its document count: exact when, as usual, it holds only raw documents,
    and never a restart at 0, which would send to val the same few positions of every append."""
    if "raw_documents" not in meta:
        return RawNumbers(sum(counts["documents"] for counts in meta["splits"].values()))
    return RawNumbers(meta["raw_documents"])  # checked with the rest of meta.json (`check_meta`)


def _split_counts(writers: dict[str, SplitWriter]) -> dict[str, dict[str, int]]:
    return {
        name: {"tokens": w.tokens, "documents": w.documents, "bytes": w.nbytes} for name, w in writers.items()
    }


def is_tokens_dir(path: Path) -> bool:
    """A tokens dir, complete or left by an interrupted append: one an --append can grow."""
    return (path / "meta.json").is_file() or (path / APPEND_MARKER).is_file()


_TOKENS_FILES = frozenset(f"{split}{suffix}" for split in SPLITS for suffix in (".bin", ".idx")) | {"meta.json"}
_TOKENIZER_FILES = frozenset({TOKENIZER_FILE, CONFIG_FILE})


def _is_replaceable_tokens_dir(path: Path) -> bool:
    """A tokens dir holding nothing but what `data tokenize` writes (hidden files aside), which a
    new run may replace whole. A folder that also holds other things, a training run's
    checkpoints say, merely contains a tokens dir's files: replacing it would delete them."""
    entries = directory_entries(path, hidden_dirs=True) if is_tokens_dir(path) else None
    if entries is None:
        return False
    for name, is_dir in entries.items():
        if not is_dir and name not in _TOKENS_FILES:
            return False
        if is_dir and (name != "tokenizer" or (path / name).is_symlink() or not _only_tokenizer_files(path / name)):
            return False
    return True


def _only_tokenizer_files(path: Path) -> bool:
    """Whether the `tokenizer/` copy holds the tokenizer's files only (hidden files aside)."""
    return holds_only_files(path, _TOKENIZER_FILES.__contains__)


def _output_rules(config: TokenizeConfig) -> dict[str, Any]:
    """What `check_output_dir` needs to refuse an `out` whose replacement would lose something.
    An append replaces nothing, so any tokens dir will do for it."""
    inputs = local_input_paths(config.inputs)
    replaceable = is_tokens_dir if config.append else _is_replaceable_tokens_dir
    return dict(what="a tokens directory", replaceable=replaceable, inputs=inputs, error=DataError)


@contextlib.contextmanager
def _tokens_dir_in_use(out: Path) -> Iterator[None]:
    """Keep other `data tokenize` runs out of the tokens dir while this one writes it: an append
    would otherwise take a live append's moved-aside meta.json for a dead one's and cut its files
    back, and a replacement would move the directory from under it, or replace a first write's
    output with its own. A tokens dir written for the first time is made now, empty, so there is
    something to lock; it is removed again if the run fails before filling it."""
    try:
        out.mkdir(parents=True)
        created = True
    except FileExistsError:
        created = False
    busy = f"{out}: another `data tokenize` is writing this tokens dir now; wait for it to finish"
    try:
        with exclusive_directory(out, busy, DataError):
            yield
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only while empty: never another run's output
        raise


def _write_new(config: TokenizeConfig, tokenizer: Tokenizer) -> dict[str, Any]:
    out = Path(config.out)
    dtype = dtype_for_vocab(tokenizer.vocab_size)
    numbers = RawNumbers()
    with _tokens_dir_in_use(out), atomic_directory(out, **_output_rules(config)) as tmp:
        writers = {split: SplitWriter(tmp, split) for split in SPLITS}
        _stream_into(config, tokenizer, dtype, writers, numbers)
        # Written anew, not copied: the copy describes these tokens, which every run and checkpoint
        # made from them carries. Documents here end with <|endoftext|> and start without a
        # begin-of-text token, whatever an imported tokenizer's own template and eos say, so a
        # model trained on them must stop at <|endoftext|> and be prompted without that token.
        tokenizer.save(tmp / "tokenizer")
        meta = _meta(tokenizer, dtype, _split_counts(writers), numbers)
        atomic_write_json(tmp / "meta.json", meta)
    return meta


def _restore_interrupted_append(out: Path) -> None:
    """Undo a half-finished append: cut the files back to what the old meta.json recorded."""
    marker = out / APPEND_MARKER
    if not marker.is_file():
        return
    if (out / "meta.json").is_file():  # the append finished; only the clean-up was missed
        marker.unlink()
        return
    from scratchlm.data.loader import check_meta  # here: the loader pulls in torch

    old = read_json_object(marker, DataError)
    check_meta(old, marker)
    itemsize = np.dtype(old["dtype"]).itemsize
    for split, counts in old["splits"].items():
        for suffix, size in ((".bin", counts["tokens"] * itemsize), (".idx", counts["documents"] * 8)):
            path = out / f"{split}{suffix}"
            if path.is_file() and path.stat().st_size > size:
                os.truncate(path, size)
    os.replace(marker, out / "meta.json")
    fsync_dir(out)


def _append(config: TokenizeConfig, tokenizer: Tokenizer) -> dict[str, Any]:
    out = Path(config.out)
    with _tokens_dir_in_use(out):
        return _append_alone(out, config, tokenizer)


def _append_alone(out: Path, config: TokenizeConfig, tokenizer: Tokenizer) -> dict[str, Any]:
    """The append, with no other `data tokenize` in the directory."""
    # The loader's checks (meta keys, file sizes) guard the existing data. Imported here: the
    # loader pulls in torch, which tokenizing does not otherwise need.
    from scratchlm.data.loader import TokenDataset, check_tokenizer_match, read_meta

    _restore_interrupted_append(out)
    old = read_meta(out)
    check_tokenizer_match(old, tokenizer.sha256)
    for split in old["splits"]:
        TokenDataset.open(out, split)  # the files hold what meta.json counts
    counts = {split: old["splits"].get(split, {}) for split in SPLITS}
    numbers = _raw_numbers(old)
    os.replace(out / "meta.json", out / APPEND_MARKER)
    fsync_dir(out)
    try:
        writers = {
            split: SplitWriter(out, split, c.get("tokens", 0), c.get("documents", 0), c.get("bytes", 0), append=True)
            for split, c in counts.items()
        }
        _stream_into(config, tokenizer, old["dtype"], writers, numbers)
    except BaseException:
        _restore_interrupted_append(out)
        raise
    meta = {**old, "splits": {**old["splits"], **_split_counts(writers)}, "raw_documents": numbers.next}
    atomic_write_json(out / "meta.json", meta)
    (out / APPEND_MARKER).unlink()
    fsync_dir(out)
    return meta


def tokenize_dataset(config: TokenizeConfig) -> dict[str, Any]:
    """Tokenize `config.inputs` into the tokens dir `config.out`; returns its meta.json content."""
    config.validate()
    for p in local_input_paths(config.inputs):
        if not Path(p).exists():
            raise DataError(f"input not found: {p}")
    out = Path(config.out)
    check_output_dir(out, **_output_rules(config))  # before any work, for an append too
    tokenizer = Tokenizer.load(config.tokenizer)
    if config.append and is_tokens_dir(out):
        return _append(config, tokenizer)
    return _write_new(config, tokenizer)


__all__ = ["TokenizeConfig", "dtype_for_vocab", "encode_texts", "is_tokens_dir", "tokenize_dataset"]

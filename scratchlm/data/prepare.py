"""`data prepare`: read, clean, quality-filter, deduplicate and split a corpus into parquet shards.

Documents stream through in batches. Worker processes do the per-document work (cleaning, quality
rules, hashes, MinHash) while the main process reads ahead, keeps the dedup index and writes; the
main process consumes results strictly in input order, so the output is the same for any number
of workers. Memory stays bounded (a few batches in flight plus one parquet row group per split)
except for the dedup index, which grows by about 0.5 KB per kept document (see `dedup.py`).

The output directory is built in a temporary directory and renamed into place at the end, so an
interrupted run never leaves something that looks like a finished dataset.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scratchlm.config import check_workers
from scratchlm.data.clean import CleanConfig, clean_text
from scratchlm.data.dedup import DedupConfig, DedupIndex, MinHasher, exact_key, near_duplicate_features
from scratchlm.data.filters import FilterConfig, first_failing_rule
from scratchlm.data.parallel import die_with_parent, ordered_map
from scratchlm.data.sources import (
    Document,
    SourceOptions,
    SourceStats,
    is_replaceable_prepared_dir,
    iter_documents,
    local_input_paths,
)
from scratchlm.errors import ConfigError, DataError
from scratchlm.fsutil import atomic_directory, atomic_write_json, atomic_write_text
from scratchlm.machine import usable_cores
from scratchlm.progress import progress

_MASK64 = (1 << 64) - 1
_EXAMPLE_CHARS = 2000


@dataclass
class PrepareConfig:
    """Everything `scratchlm data prepare` does; TOML sections `source`, `clean`, `filters`, `dedup`."""

    inputs: list[str] = field(default_factory=list)
    out: str = ""
    val_fraction: float = 0.01  # share of documents, chosen by a hash of the text, that go to val/
    split_seed: int = 0  # changes which documents land in val/
    # Processes doing the per-document work: 0 = one per CPU beyond the first (at most 8), 1 = none.
    workers: int = 0
    batch_bytes: int = 1_000_000  # text per worker task
    part_bytes: int = 256_000_000  # text per parquet file before a new part starts
    examples_per_rule: int = 3  # removed documents kept per reason in removed_examples.jsonl
    source: SourceOptions = field(default_factory=SourceOptions)
    clean: CleanConfig = field(default_factory=CleanConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)

    def validate(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        check_workers(self.workers, "auto")
        if self.batch_bytes < 1 or self.part_bytes < 1 or self.examples_per_rule < 0:
            raise ConfigError("batch_bytes and part_bytes must be positive, examples_per_rule not negative")
        if self.source.separator == "":  # it would silently mean one document per file
            raise ConfigError("source.separator is empty; leave it unset to read each .txt file as one document")
        if not self.source.hf_split:  # as data tokenize and tokenizer train refuse it
            raise ConfigError("source.hf_split must name a split, e.g. train")
        if any(not glob for glob in (*self.source.include, *self.source.exclude)):  # matches no file at all
            raise ConfigError("--include and --exclude take non-empty globs, e.g. '*.txt'")
        self.dedup.validate()


@dataclass
class _BatchResult:
    """What a worker sends back for one batch: per-document verdicts plus dedup features."""

    texts: list[str]  # cleaned texts; removed ones cut to example length (less to send back)
    reasons: list[str | None]  # "empty" / "quality:<rule>" or None when still in play
    bytes_in: int
    invalid_utf8: int
    exact_keys: np.ndarray  # uint64 per document
    bands: np.ndarray | None  # (survivors, bands) LSH keys, rows aligned with `survivors`
    sketches: np.ndarray | None
    has_words: np.ndarray | None
    survivors: np.ndarray  # indices of documents that passed cleaning and filters


class _BatchWorker:
    """The per-document work of a batch; one per process."""

    def __init__(self, config: PrepareConfig):
        self.config = config
        self.hasher = MinHasher(config.dedup) if config.dedup.near else None

    def __call__(self, batch: list[tuple[str, bool]]) -> _BatchResult:
        cfg = self.config
        texts, reasons = [], []
        bytes_in = invalid = 0
        for raw, bad in batch:
            bytes_in += len(raw) if raw.isascii() else len(raw.encode("utf-8", "surrogatepass"))
            text, repaired = clean_text(raw, cfg.clean)
            invalid += bad or repaired
            if not text.strip():
                reason: str | None = "empty"
                text = raw
            else:
                rule = first_failing_rule(text, cfg.filters)
                reason = f"quality:{rule}" if rule else None
            texts.append(text if reason is None else text[:_EXAMPLE_CHARS])
            reasons.append(reason)
        survivors = np.array([i for i, r in enumerate(reasons) if r is None], dtype=np.int64)
        keys = np.array([exact_key(texts[i]) for i in survivors], dtype=np.uint64)
        bands = sketches = has_words = None
        if self.hasher is not None:
            bands, sketches, has_words = near_duplicate_features(self.hasher, [texts[i] for i in survivors])
        return _BatchResult(texts, reasons, bytes_in, invalid, keys, bands, sketches, has_words, survivors)


_worker: _BatchWorker | None = None


def _init_process(config: PrepareConfig) -> None:
    global _worker
    die_with_parent()
    _worker = _BatchWorker(config)


def _run_in_process(batch: list[tuple[str, bool]]) -> _BatchResult:
    assert _worker is not None
    return _worker(batch)


def _batches(
    docs: Iterator[Document], batch_bytes: int
) -> Iterator[tuple[list[tuple[str, bool]], list[str]]]:
    """Group documents into batches of about `batch_bytes` characters: (payload, sources)."""
    payload: list[tuple[str, bool]] = []
    sources: list[str] = []
    size = 0
    for doc in docs:
        payload.append((doc.text, doc.invalid_utf8))
        sources.append(doc.source)
        size += len(doc.text)
        if size >= batch_bytes:
            yield payload, sources
            payload, sources, size = [], [], 0
    if payload:
        yield payload, sources


def _ordered_results(config: PrepareConfig, batches):
    """(sources, result) per batch, in input order, with a bounded number of batches in flight."""
    workers = config.workers or max(1, min(usable_cores() - 1, 8))
    if workers <= 1:
        worker = _BatchWorker(config)
        for payload, sources in batches:
            yield sources, worker(payload)
        return
    # spawn: safe with threads in the parent and the same on every OS; a pool (unlike
    # multiprocessing.Pool) fails loudly instead of hanging when a worker cannot start.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_process, initargs=(config,)) as pool:
        jobs = ((sources, payload) for payload, sources in batches)
        yield from ordered_map(pool, _run_in_process, jobs, 2 * workers, "prepare")


class _PartWriter:
    """Writes one split as `part-00000.parquet`, ... with columns `text` and `source`."""

    def __init__(self, directory: Path, part_bytes: int, row_group_bytes: int = 32_000_000):
        self.directory = directory
        self.part_bytes = part_bytes
        self.row_group_bytes = min(row_group_bytes, part_bytes)
        self.texts: list[str] = []
        self.sources: list[str] = []
        self.buffered = 0
        self.part = 0
        self.part_written = 0
        self.writer = None
        directory.mkdir(parents=True, exist_ok=True)

    def add(self, text: str, source: str) -> None:
        self.texts.append(text)
        self.sources.append(source)
        self.buffered += len(text)
        if self.buffered >= self.row_group_bytes:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({"text": _string_array(self.texts), "source": _string_array(self.sources)})
        if self.writer is None:
            path = self.directory / f"part-{self.part:05d}.parquet"
            self.writer = pq.ParquetWriter(path, table.schema, compression="zstd")
        self.writer.write_table(table)
        self.part_written += self.buffered
        self.texts, self.sources, self.buffered = [], [], 0
        if self.part_written >= self.part_bytes:
            self.writer.close()
            self.writer = None
            self.part += 1
            self.part_written = 0

    def close(self) -> None:
        if self.texts or (self.part == 0 and self.writer is None):
            self._flush()  # an empty split still gets one (empty) part, so readers find its schema
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _string_array(values: list[str]):
    """An Arrow string array built from UTF-8 buffers (pa.array on str objects imports pandas)."""
    import pyarrow as pa

    encoded = [v.encode("utf-8") for v in values]
    ends = np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)))
    if len(ends) and ends[-1] >= 2**31:  # beyond 32-bit offsets (a gigantic document)
        return pa.array(values, pa.large_string())
    offsets = np.concatenate(([0], ends)).astype(np.int32)
    return pa.StringArray.from_buffers(len(encoded), pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded)))


def _is_val(key: int, val_fraction: float, seed: int) -> bool:
    """Deterministic split: a document's place depends only on its text (and the seed)."""
    h = (key ^ (seed * 0x9E3779B97F4A7C15)) & _MASK64
    h = ((h ^ (h >> 31)) * 0xBF58476D1CE4E5B9) & _MASK64
    h ^= h >> 29
    return h < val_fraction * 2.0**64


def prepare(config: PrepareConfig) -> dict:
    """Run the whole preparation into `config.out`; returns the statistics also saved as stats.json."""
    config.validate()
    if not config.out:
        raise ConfigError("no output directory: set out (the --out option)")
    if not config.inputs:
        raise DataError("no inputs given: name at least one file, directory, builtin:NAME or hf:NAME")
    start = time.perf_counter()
    out = Path(config.out)
    inputs = local_input_paths(config.inputs)
    output = dict(what="a prepared dataset", replaceable=is_replaceable_prepared_dir, inputs=inputs, error=DataError)
    source_stats = SourceStats()
    removed: Counter[str] = Counter()
    examples: dict[str, list[dict]] = {}
    totals = Counter()
    index = DedupIndex(config.dedup)
    docs = iter_documents(config.inputs, config.source, source_stats)
    bar = progress(desc="prepare", unit="B", unit_scale=True)

    def note_removed(reason: str, source: str, text: str) -> None:
        removed[reason] += 1
        kept = examples.setdefault(reason, [])
        if len(kept) < config.examples_per_rule:
            kept.append({"reason": reason, "source": source, "text": text[:_EXAMPLE_CHARS]})

    with atomic_directory(out, **output) as tmp:
        writers = {split: _PartWriter(tmp / split, config.part_bytes) for split in ("train", "val")}
        for sources, result in _ordered_results(config, _batches(docs, config.batch_bytes)):
            totals["documents_in"] += len(sources)
            totals["bytes_in"] += result.bytes_in
            totals["invalid_utf8"] += result.invalid_utf8
            bar.update(result.bytes_in)
            for i, reason in enumerate(result.reasons):
                if reason is not None:
                    note_removed(reason, sources[i], result.texts[i])
            verdicts = index.check(
                result.exact_keys, result.bands, result.sketches,
                eligible=np.ones(len(result.survivors), dtype=bool), has_words=result.has_words,
            )  # fmt: skip
            for j, i in enumerate(result.survivors.tolist()):
                text = result.texts[i]
                if verdicts[j] is not None:
                    note_removed(verdicts[j], sources[i], text)
                    continue
                is_val = _is_val(int(result.exact_keys[j]), config.val_fraction, config.split_seed)
                writers["val" if is_val else "train"].add(text, sources[i])
                totals["documents_out"] += 1
                totals["bytes_out"] += len(text) if text.isascii() else len(text.encode("utf-8"))
        bar.close()
        if source_stats.bad_records:
            removed["bad_record"] += source_stats.bad_records
            for message in source_stats.bad_record_messages[: config.examples_per_rule]:
                examples.setdefault("bad_record", []).append(
                    {"reason": "bad_record", "source": message, "text": ""}
                )
        if totals["documents_in"] == 0 and not source_stats.bad_records:
            raise DataError(f"no documents found in the inputs: {', '.join(config.inputs)}")
        for writer in writers.values():
            writer.close()
        stats = {
            "documents_in": totals["documents_in"] + source_stats.bad_records,
            "documents_out": totals["documents_out"],
            "bytes_in": totals["bytes_in"],
            "bytes_out": totals["bytes_out"],
            "removed": dict(sorted(removed.items())),
            "invalid_utf8_documents": totals["invalid_utf8"],
            "seconds": round(time.perf_counter() - start, 3),
        }
        lines = [json.dumps(e, ensure_ascii=False) for reason in sorted(examples) for e in examples[reason]]
        atomic_write_text(tmp / "removed_examples.jsonl", "".join(line + "\n" for line in lines))
        atomic_write_json(tmp / "stats.json", stats)
    return stats

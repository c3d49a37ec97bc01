"""Where documents come from: files, directories, prepared datasets, the built-in corpus, `datasets`.

`iter_documents` turns a list of inputs into one ordered stream of `Document`s. It streams: a
JSONL, parquet or separated text file is read piece by piece, so a corpus larger than memory
flows through (only a whole-file `.json` or a `.txt` without a separator is read at once).
Problems a user can fix (missing path, a line that is not JSON, a missing field) raise
`DataError` naming the file and line, or are counted and skipped with `skip_bad_records`.
"""

from __future__ import annotations

import codecs
import fnmatch
import gzip
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from scratchlm.errors import ConfigError, DataError
from scratchlm.fsutil import directory_entries, parse_json

BUILTIN_PREFIX = "builtin:"
HF_PREFIX = "hf:"
FORMATS = (".txt", ".jsonl", ".json", ".parquet")
COMPRESSIONS = (".gz", ".zst")
DEFAULT_INCLUDE = tuple(f"*{fmt}{comp}" for fmt in FORMATS for comp in ("", *COMPRESSIONS))
_TEXT_CHUNK = 1 << 20
# Compressed bytes decompressed per step: small, so that the output held at once stays small (text
# compresses 3-10:1: tens of KB; even a file of one repeated byte, zstd's extreme, stays near 100 MB).
# Measured as fast as 64 KB steps and as zstandard's own stream reader.
_ZSTD_READ = 1 << 12


@dataclass
class Document:
    """One document: its text and where it came from (a path, `builtin:...` or `hf:...`).

    `invalid_utf8` is set when the bytes read were not valid UTF-8 and were repaired with U+FFFD.
    `split` names the split of the prepared dataset it was read from, so a reader that keeps
    splits (`data tokenize`) can keep them for a prepared dataset found inside a directory too;
    None for every other input.
    """

    text: str
    source: str
    invalid_utf8: bool = False
    split: str | None = None


@dataclass
class SourceOptions:
    """How inputs are read. `text_field` names the JSON key and the parquet/`datasets` column."""

    text_field: str = "text"
    separator: str | None = None  # split .txt files on this string; None = one document per file
    # Globs for files inside directories. The default ones ignore case, as the format check does
    # (DATA.JSONL is JSONL); globs the user gives match case-sensitively, like the shell's.
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    skip_bad_records: bool = False  # count and skip bad JSON lines / missing fields instead of failing
    # Which split of a prepared directory to read: all by default, since re-preparing one must not
    # lose its val documents; tokenizer training asks for "train".
    split: Literal["train", "val", "all"] = "all"
    hf_split: str = "train"  # which split of a `hf:NAME` dataset to read


@dataclass
class SourceStats:
    """Counts that reading produces besides documents (records skipped with `skip_bad_records`)."""

    bad_records: int = 0
    bad_record_messages: list[str] = field(default_factory=list)

    def add_bad(self, message: str, keep: int = 5) -> None:
        self.bad_records += 1
        if len(self.bad_record_messages) < keep:  # kept as valid UTF-8: they are written to files
            self.bad_record_messages.append(message.encode("utf-8", "backslashreplace").decode("utf-8"))


def local_input_paths(inputs: Sequence[str]) -> list[str]:
    """The inputs that are files or directories here, so an output is never put in or over one:
    paths, and `hf:NAME` where NAME is a local path (a saved dataset); not `builtin:` or hub names."""
    paths = []
    for spec in map(str, inputs):
        if spec.startswith(HF_PREFIX):
            name = spec[len(HF_PREFIX) :]
            if name and Path(name).exists():
                paths.append(name)
        elif not spec.startswith(BUILTIN_PREFIX):
            paths.append(spec)
    return paths


def iter_documents(
    inputs: Sequence[str], options: SourceOptions | None = None, stats: SourceStats | None = None
) -> Iterator[Document]:
    """Yield the documents of every input, in input order (directories in sorted path order)."""
    options = options or SourceOptions()
    stats = stats if stats is not None else SourceStats()
    if not inputs:
        raise DataError("no inputs given: name at least one file, directory, builtin:NAME or hf:NAME")
    for spec in inputs:
        yield from _iter_input(str(spec), options, stats)


def _iter_input(spec: str, options: SourceOptions, stats: SourceStats) -> Iterator[Document]:
    if spec.startswith(BUILTIN_PREFIX):
        from scratchlm.data.builtin import iter_builtin

        yield from iter_builtin(spec[len(BUILTIN_PREFIX) :])
        return
    if spec.startswith(HF_PREFIX):
        yield from _iter_hf(spec[len(HF_PREFIX) :], options, stats)
        return
    path = Path(spec)
    if not path.exists():
        raise DataError(f"{spec}: no such file or directory")
    if path.is_dir():
        _refuse_tokens_dir(path)
        if is_prepared_dir(path):
            yield from _iter_prepared(path, options)
        else:
            yield from _iter_directory(path, options, stats)
        return
    if _format_of(path) is None:
        raise DataError(
            f"{spec}: unsupported file type; supported: {', '.join(FORMATS)} (optionally .gz or .zst)"
        )
    yield from _iter_file(path, options, stats)


# What `data prepare` writes at the top of its output: name -> whether it is a directory.
_PREPARED_ENTRIES = {"train": True, "val": True, "stats.json": False, "removed_examples.jsonl": False}
# The keys of the stats.json that `data prepare` writes.
PREPARED_STATS_KEYS = frozenset(
    ("documents_in", "documents_out", "bytes_in", "bytes_out", "removed", "invalid_utf8_documents", "seconds")
)


def is_prepared_dir(path: Path) -> bool:
    """Whether to read `path` as a `data prepare` output: `stats.json` beside `train/`.

    A folder so shaped that also holds anything prepare does not write is a DataError naming the
    first such entry, not a silent guess: read as a prepared dataset its other files would be
    skipped; read as plain files, its stats and removed examples would become documents and val
    would join train. Hidden entries are ignored, as reading ignores them (`.ipynb_checkpoints`).
    """
    if not (os.path.lexists(path / "train") and os.path.lexists(path / "stats.json")):
        return False  # the usual folder, decided without listing it (every folder of a walk asks)
    entries = directory_entries(path, hidden_dirs=False)
    if entries is None or not {"train", "stats.json"} <= entries.keys():
        return False
    stray = _stray_entry(path, entries)
    if stray is not None:
        raise DataError(
            f"{path}: holds stats.json beside train/ like a prepared dataset, but also {stray}; "
            "move one or the other out (or --exclude the folder), so it is read as one kind"
        )
    return True


def is_replaceable_prepared_dir(path: Path) -> bool:
    """Whether `--out` may replace `path` whole: nothing in it but what prepare writes, hidden
    files aside; a hidden directory (`.git`) is someone's data, which the replacement would delete."""
    entries = directory_entries(path, hidden_dirs=True)
    return entries is not None and {"train", "stats.json"} <= entries.keys() and _stray_entry(path, entries, True) is None


def _stray_entry(path: Path, entries: dict[str, bool], hidden_dirs: bool = False) -> str | None:
    """The first entry of a prepared-looking folder that `data prepare` does not write, described;
    None when there is none: split folders of `*.parquet` parts only, a stats.json of prepare's keys."""
    for name, is_dir in sorted(entries.items()):
        if _PREPARED_ENTRIES.get(name) is not is_dir:
            return f"{name}/" if is_dir else name
        if is_dir:
            parts = directory_entries(path / name, hidden_dirs) or {}
            odd = sorted(part for part, part_is_dir in parts.items() if part_is_dir or not part.endswith(".parquet"))
            if odd:
                return f"{name}/{odd[0]}"
    if not _is_prepared_stats(path / "stats.json"):
        return "a stats.json that data prepare did not write"
    return None


def _is_prepared_stats(path: Path) -> bool:
    """Whether a stats.json is a JSON object holding only keys that `data prepare` writes."""
    try:
        stats = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(stats, dict) and stats.keys() <= PREPARED_STATS_KEYS


def prepared_parts(path: Path, split: str) -> list[Path]:
    """The parquet parts of one split of a `data prepare` output, in name (= write) order. Hidden
    files are not parts (an editor's or sync tool's `.part-00000.parquet` copy, macOS's `._` files),
    as the check of what a prepared folder holds leaves them out too."""
    return sorted(part for part in (path / split).glob("*.parquet") if not part.name.startswith("."))


def write_prepared_dir(
    path: Path, train: Sequence[str], val: Sequence[str], source: str = "text", rows_per_part: int = 500
) -> Path:
    """Documents already split into train and val, written as a `data prepare` output (parquet
    parts of `rows_per_part` rows plus stats.json) that `data tokenize` reads like any other."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for split, docs in (("train", train), ("val", val)):
        (path / split).mkdir(parents=True, exist_ok=True)
        for part, start in enumerate(range(0, max(len(docs), 1), rows_per_part)):
            rows = list(docs[start : start + rows_per_part])
            pq.write_table(pa.table({"text": rows, "source": [source] * len(rows)}), path / split / f"part-{part:05d}.parquet")
    (path / "stats.json").write_text(json.dumps({"documents_out": len(train) + len(val)}) + "\n", encoding="utf-8")
    return path


def prepared_part_error(part: Path, error: Exception) -> DataError:
    return DataError(f"{part}: not a readable prepared parquet file ({error})")


def prepared_columns(parquet, part: Path) -> list[str]:
    """The columns to read from a prepared part (`text`, and `source` where it has one); a part
    without `text` is refused, where pyarrow would quietly read no column at all."""
    names = parquet.schema_arrow.names
    if "text" not in names:
        raise DataError(f"{part}: a prepared part needs a 'text' column (it has: {', '.join(names) or 'none'})")
    return ["text", "source"] if "source" in names else ["text"]


def check_prepared_texts(column, part: Path) -> None:
    """Refuse a `text` column (an Arrow array) holding anything but valid UTF-8 strings: a foreign
    or hand-edited part would otherwise fail later, deep inside cleaning or encoding (Arrow writers
    need not validate what they store as strings)."""
    import pyarrow as pa

    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise DataError(f"{part}: the 'text' column holds {column.type}, not strings")
    if column.null_count:
        raise DataError(f"{part}: the 'text' column has null values")
    try:
        column.validate(full=True)
    except pa.ArrowInvalid:
        raise DataError(f"{part}: the 'text' column holds bytes that are not UTF-8 text") from None


def _source_name(path: Path) -> str:
    """A path as the `source` of its documents, always valid UTF-8 (filename bytes that are not
    UTF-8 appear as backslash escapes), so it can be written to parquet and JSON."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def _format_of(path: Path) -> str | None:
    """The file's format under at most one compression suffix: only one layer is decompressed, so
    `a.txt.zst.gz` is no known format (its text would be the zstd frame's bytes)."""
    name = path.name.lower()
    comp = _compression_of(path)
    if comp:
        name = name[: -len(comp)]
    return next((fmt for fmt in FORMATS if name.endswith(fmt)), None)


def _compression_of(path: Path) -> str | None:
    name = path.name.lower()
    return next((comp for comp in COMPRESSIONS if name.endswith(comp)), None)


def _matches(rel: str, patterns: Iterable[str], fold_case: bool = False) -> bool:
    """Whether a glob matches the path below the root or the bare file name; `fold_case` for the
    (lowercase) default globs, since the format check ignores case."""
    if fold_case:
        rel = rel.lower()
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def _folder_excluded(rel: str, exclude: Iterable[str]) -> bool:
    """Whether `exclude` skips a folder, so everything below it (a prepared dataset's parts too):
    a glob matching its path or name (`old`), or its path and a slash (`old/`, `old/*`), since
    `*` matches any characters, `/` included."""
    return _matches(rel, exclude) or any(fnmatch.fnmatchcase(f"{rel}/", p) for p in exclude)


def _iter_directory(root: Path, options: SourceOptions, stats: SourceStats) -> Iterator[Document]:
    """Every matching file below `root`, recursively, in sorted order; hidden entries are skipped.

    A prepared dataset inside is read as one (its documents, not its stats or removed examples);
    `exclude` skips files and whole folders, prepared datasets included; `include` picks files only.
    """
    for path, prepared in _directory_inputs(root, options):
        yield from _iter_prepared(path, options) if prepared else _iter_file(path, options, stats)


def _directory_inputs(root: Path, options: SourceOptions) -> Iterator[tuple[Path, bool]]:
    """The files below `root` that reading takes and its prepared datasets (flagged True), in
    reading order: shared by the reading and by `refuse_unused_settings`, so both see the same inputs."""
    include = options.include or list(DEFAULT_INCLUDE)

    def excluded(folder: Path) -> bool:
        return _folder_excluded(folder.relative_to(root).as_posix(), options.exclude)

    found = False
    for path, prepared in _walk(root, {os.path.realpath(root)}, excluded):
        rel = path.relative_to(root).as_posix()
        if not prepared and (
            _matches(rel, options.exclude) or not _matches(rel, include, fold_case=not options.include)
        ):
            continue
        found = True
        if path.name == "meta.json":  # read as a document only if it is a text file of the corpus
            _refuse_tokens_dir(path.parent, " (or --exclude it)")
        yield path, prepared
    if not found:
        raise DataError(f"{root}: no files matching {', '.join(include)} in this directory")


_DIRECTORY = "directory"  # a directory input that is not a prepared dataset: what include/exclude act on
# The reading settings (`SourceOptions` fields, and the config keys and flags of the same names) and
# the kinds of input (a file format, "prepared", "hf", a directory) that use each.
_SETTING_USERS: dict[str, tuple[frozenset[str], str]] = {
    "text_field": (
        frozenset((".jsonl", ".json", ".parquet", "hf")),
        "names the field of .jsonl, .json and .parquet files and hf: datasets, and no input is one",
    ),
    "hf_split": (frozenset(("hf",)), "picks the split of an hf:NAME input, and there is none"),
    "split": (frozenset(("prepared",)), "picks the split of a prepared dataset (data prepare's output), and no input is one"),
    "separator": (frozenset((".txt",)), "splits .txt files into documents, and no input is one"),
    "include": (frozenset((_DIRECTORY,)), "picks the files read inside directory inputs, and no input is one"),
    "exclude": (frozenset((_DIRECTORY,)), "skips files and folders inside directory inputs, and no input is one"),
    "skip_bad_records": (
        frozenset((".jsonl", ".json", ".parquet", "hf")),
        "skips bad records of .jsonl, .json and .parquet files and hf: datasets, and no input is one",
    ),
}
_UNKNOWN = "?"  # an input the reading will refuse (missing, unsupported): its own error says more
READING_SETTINGS = tuple(_SETTING_USERS)


def _flag(name: str) -> str:
    """The flag of a reading setting: `text_field` -> `--text-field`."""
    return f"--{name.replace('_', '-')}"


def refuse_unused_settings(inputs: Sequence[str], config: object, typed: Iterable[str], section: str = "") -> None:
    """Refuse a reading setting the user gave that no input can use (`--hf-split` without an `hf:`
    input, `text_field` from a config file with only .txt inputs), which would be accepted and do
    nothing. `config` is the stage's config or its `SourceOptions` (whose keys are under `section`),
    `typed` the settings given as flags (`cli.typed_options`). One input that uses a setting is enough: a directory of mixed formats
    takes `--text-field` for its JSON files. Every command that reads inputs calls this;
    directories are listed, not read, and only while needed."""
    wanted = {shown: _SETTING_USERS[name] for name, shown in _given_settings(config, typed, section).items()}
    if not wanted or not inputs:
        return
    found: set[str] = set()
    options = config if isinstance(config, SourceOptions) else SourceOptions()
    for kind in _input_kinds(inputs, options):
        if kind == _UNKNOWN:
            return
        found.add(kind)
        if all(users & found for users, _ in wanted.values()):
            return
    for shown, (users, why) in wanted.items():
        if not users & found:
            raise ConfigError(f"{shown} {why}; leave it out")


def _given_settings(config: object, typed: Iterable[str], section: str) -> dict[str, str]:
    """The reading settings the user gave, each named as given: the flag where one was typed, else
    the config key and value where it differs from the default (a config file, `--set`): a setting
    from a file does nothing just as the same flag typed does."""
    typed = set(typed)
    defaults = type(config)()
    given = {}
    for name in READING_SETTINGS:
        if name in typed:
            given[name] = _flag(name)
        elif hasattr(config, name) and getattr(config, name) != getattr(defaults, name):
            given[name] = f"{section}{name} = {getattr(config, name)!r}"
    return given


def _input_kinds(inputs: Sequence[str], options: SourceOptions) -> Iterator[str]:
    """The kind of each input, and of each file and prepared dataset inside directory inputs (after
    the directory's own kind, which `--include`/`--exclude` need)."""
    for spec in map(str, inputs):
        path = Path(spec)
        if spec.startswith(BUILTIN_PREFIX):
            yield "builtin"
        elif spec.startswith(HF_PREFIX):
            yield "hf"
        elif not path.exists():
            yield _UNKNOWN
        elif path.is_dir() and is_prepared_dir(path):
            yield "prepared"
        elif path.is_dir():
            yield _DIRECTORY
            for inner, prepared in _directory_inputs(path, options):
                yield "prepared" if prepared else _format_of(inner) or ".txt"  # as `_iter_file` reads it
        else:
            yield _format_of(path) or _UNKNOWN


def _walk(directory: Path, seen: set[str], excluded: Callable[[Path], bool]) -> Iterator[tuple[Path, bool]]:
    """The files below `directory` and the prepared datasets (flagged True), files of a directory
    before its subdirectories, each in name order, leaving out the `excluded` directories. Linked
    directories are followed, as linked files are read; `seen` holds the real paths visited, so a
    link loop or a second link to the same directory is read once."""
    try:
        with os.scandir(directory) as listing:
            entries = sorted((e for e in listing if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"{directory}: cannot list directory: {e.strerror}") from None
    dirs = [Path(e.path) for e in entries if e.is_dir()]
    yield from ((Path(e.path), False) for e in entries if not e.is_dir())  # broken links too: an error, not a skip
    for path in dirs:
        real = os.path.realpath(path)
        if excluded(path) or real in seen:
            continue
        seen.add(real)
        if is_prepared_dir(path):
            yield path, True
        else:
            yield from _walk(path, seen, excluded)


def _refuse_tokens_dir(path: Path, remedy: str = "") -> None:
    """A `data tokenize` output given as text: read as files, its meta.json would be taken for a
    document ("no field 'text'"). Inside a directory input it is refused only where its meta.json
    would be read (`--include '*.txt'` never reads it)."""
    if (path / "meta.json").is_file() and (path / "train.bin").is_file():
        raise DataError(
            f"{path}: is a tokens dir (already tokenized), not text; give the text it was made from{remedy}"
        )


def _open_binary(path: Path) -> IO[bytes]:
    """Open a file for reading bytes, decompressing .gz and .zst transparently.

    An empty .gz or .zst file is refused as truncated: both decompressors would read it as no
    bytes at all, i.e. one empty document, hiding a download that never arrived.
    """
    compression = _compression_of(path)
    try:
        raw = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror}") from None
    if compression is None:
        return raw
    try:
        if not raw.peek(1):
            raise DataError(f"{path}: cannot read: the file is empty, a truncated {compression} archive")
    except BaseException:
        raw.close()
        raise
    if compression == ".gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    return io.BufferedReader(_ZstdFrames(raw))


class _ZstdFrames(io.RawIOBase):
    """The decompressed bytes of a .zst file, frame after frame.

    zstandard's `stream_reader` ends quietly when the data stops inside a frame, so a truncated
    download would read as a shorter corpus. This reader knows where each frame ends and raises
    EOFError, as `gzip` does, when the file ends inside one.
    """

    def __init__(self, raw: IO[bytes]):
        import zstandard

        self._raw = raw
        self._decompressor = zstandard.ZstdDecompressor()
        self._frame = None  # the decompressor of the frame being read; None between frames
        self._output = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._output:
            compressed = self._raw.read(_ZSTD_READ)
            if not compressed:
                if self._frame is not None:
                    raise EOFError("Compressed file ended before the end-of-frame marker was reached")
                return 0
            self._output = memoryview(self._decompress(compressed))
        n = min(len(buffer), len(self._output))
        buffer[:n] = self._output[:n]
        self._output = self._output[n:]
        return n

    def _decompress(self, data: bytes) -> bytes:
        pieces = []
        while data:
            if self._frame is None:
                self._frame = self._decompressor.decompressobj()
            pieces.append(self._frame.decompress(data))
            data = b""
            if self._frame.eof:  # the rest, if any, starts the next frame
                data, self._frame = self._frame.unused_data, None
        return b"".join(pieces)

    def close(self) -> None:
        self._raw.close()
        super().close()


def _decode(data: bytes) -> tuple[str, bool]:
    """UTF-8 text and whether invalid bytes had to be replaced."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), True


def _iter_file(path: Path, options: SourceOptions, stats: SourceStats) -> Iterator[Document]:
    fmt = _format_of(path) or ".txt"  # files picked by an explicit include glob are read as text
    try:
        if fmt == ".jsonl":
            yield from _iter_jsonl(path, options, stats)
        elif fmt == ".json":
            yield from _iter_json(path, options, stats)
        elif fmt == ".parquet":
            yield from _iter_parquet(path, options, stats)
        else:
            yield from _iter_txt(path, options)
    except DataError:
        raise
    except (OSError, EOFError, ValueError) as e:  # corrupt archives, truncated files
        raise DataError(f"{path}: cannot read: {e}") from None
    except Exception as e:
        if type(e).__module__.startswith("zstandard"):
            raise DataError(f"{path}: cannot read: {e}") from None
        raise


def _without_bom(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """A file's pieces, the first without a leading UTF-8 BOM: Windows editors write one, and it
    marks the encoding, it is not text (JSON parsers refuse it, tokenizers would learn it)."""
    pieces = iter(pieces)
    for first in pieces:
        yield first.removeprefix(codecs.BOM_UTF8)
        break
    yield from pieces


def _iter_txt(path: Path, options: SourceOptions) -> Iterator[Document]:
    source = _source_name(path)
    with _open_binary(path) as f:
        pieces = _split_stream(f, options.separator.encode("utf-8")) if options.separator else [f.read()]
        for piece in _without_bom(pieces):
            text, bad = _decode(piece)
            yield Document(text, source, bad)


def _split_stream(f: IO[bytes], sep: bytes) -> Iterator[bytes]:
    """The pieces of a stream between separators, read up to `_TEXT_CHUNK` bytes at a time.

    Each byte is searched once (plus `len(sep) - 1` bytes of overlap for a separator straddling
    two chunks), so a long stretch without a separator costs linear time, not quadratic. `read1`,
    not `read`: from a pipe or a slow source, `read(n)` waits in C until all n bytes came, and a
    Ctrl-C or SIGTERM that the kernel hands to another thread waits with it; `read1` returns what
    one read gives, so the stage sees the signal as soon as the input moves.
    """
    read = getattr(f, "read1", f.read)
    pattern, longest = _separator_pattern(sep)
    piece = bytearray()
    while chunk := read(_TEXT_CHUNK):
        search_from = max(0, len(piece) - longest + 1)
        piece += chunk
        start = 0
        with memoryview(piece) as view:  # slices of a view copy once, slices of piece twice
            while found := pattern.search(piece, max(start, search_from)):
                yield bytes(view[start : found.start()])
                start = found.end()
        del piece[:start]
    yield bytes(piece)


def _separator_pattern(sep: bytes) -> tuple[re.Pattern[bytes], int]:
    """The separator as a pattern in which each newline may also be written CRLF, and its longest
    match: a separator typed with \\n must split Windows files too, whose line ends cleaning turns
    into LF only after the split."""
    sep = sep.replace(b"\r\n", b"\n")  # one line end, however it is typed
    return re.compile(re.escape(sep).replace(b"\\\n", b"\\r?\\n")), len(sep) + sep.count(b"\n")


def _text_of_record(record: object, source: str, where: str, options: SourceOptions, stats: SourceStats):
    """The text of one JSON record, or None (counted) when bad and skipping is on: its text field,
    or the record itself when it is a bare string, whether an item of a whole-file list or a line
    of JSON Lines (a string has no fields, so `text_field` does not apply to it)."""
    key = options.text_field
    if isinstance(record, str):
        return record
    if isinstance(record, dict) and isinstance(record.get(key), str):
        return record[key]
    if isinstance(record, dict) and key in record:
        problem = f"field '{key}' is {type(record[key]).__name__}, not a string"
    elif isinstance(record, dict):
        shown = ", ".join(list(record)[:8]) or "none"
        problem = f"no field '{key}' (keys: {shown}); choose one with --text-field"
    else:
        problem = f"expected a string or a JSON object with field '{key}', got {type(record).__name__}"
    message = f"{source}:{where}: {problem}"
    if not options.skip_bad_records:
        raise DataError(message)
    stats.add_bad(message)
    return None


def _iter_jsonl(path: Path, options: SourceOptions, stats: SourceStats) -> Iterator[Document]:
    source = _source_name(path)
    with _open_binary(path) as f:
        for lineno, raw in enumerate(_without_bom(f), 1):
            if not raw.strip():
                continue
            try:
                record = parse_json(_decode_escaped(raw), f"{source}:{lineno}", DataError)
            except DataError as e:
                if not options.skip_bad_records:
                    raise
                stats.add_bad(str(e))
                continue
            text = _text_of_record(record, source, str(lineno), options, stats)
            if text is not None:
                yield _repaired_document(text, source)


def _iter_json(path: Path, options: SourceOptions, stats: SourceStats) -> Iterator[Document]:
    """A whole JSON file: a list of objects (or strings), or one object; or JSON Lines named
    `.json` (C4's and Dolma's `.json.gz`), read record by record as a `.jsonl` file is.

    Invalid bytes are kept as escapes while parsing and repaired per document, so only the
    documents holding them count as invalid UTF-8, not every document of the file.
    """
    source = _source_name(path)
    with _open_binary(path) as f:
        value, lines = _whole_json_or_lines(f, source)
    if lines:
        yield from _iter_jsonl(path, options, stats)
        return
    records = value if isinstance(value, list) else [value]
    for i, record in enumerate(records):
        text = _text_of_record(record, source, f"item {i}", options, stats)
        if text is not None:
            yield _repaired_document(text, source)


def _whole_json_or_lines(f: IO[bytes], source: str) -> tuple[object, bool]:
    """(the file's JSON value, False), or (None, True) when it is JSON Lines: its first line is a
    whole JSON value and more text follows, which one JSON value cannot have, or its first line
    is damaged and its second is a whole record. Deciding on the first lines keeps a JSON Lines
    file streamed, never read whole."""
    lines = _without_bom(f)
    head = _through_next_nonblank(lines)
    try:
        value = json.loads(_decode_escaped(head))
    except (ValueError, RecursionError):
        # One JSON value laid out over lines, or JSON Lines whose first record is damaged (to be
        # reported or skipped as any bad line is): then the next line is a whole record, an
        # object, which no line inside a JSON array or object is (those end in a comma or span lines).
        following = _through_next_nonblank(lines)
        if not head.lstrip().startswith(b"[") and _is_json_object(following):
            return None, True
        head += following + f.read()  # a whole file, checked with a clear error
        return parse_json(_decode_escaped(head), source, DataError), False
    if any(line.strip() for line in lines):
        return None, True
    return value, False


def _through_next_nonblank(lines: Iterator[bytes]) -> bytearray:
    """The lines up to and including the next one that is not blank."""
    taken = bytearray()
    for line in lines:
        taken += line
        if line.strip():
            break
    return taken


def _is_json_object(line: bytes | bytearray) -> bool:
    try:
        return isinstance(json.loads(_decode_escaped(line)), dict)
    except (ValueError, RecursionError):
        return False


def _decode_escaped(data: bytes | bytearray) -> str:
    """JSON bytes as text with invalid bytes kept as escapes, for `_repaired_document` to mend
    in the text field only: a bad byte in another field must not mark the document."""
    return data.decode("utf-8", errors="surrogateescape")


def _repaired_document(text: str, source: str) -> Document:
    repaired, bad = _repair_escaped_bytes(text)
    return Document(repaired, source, bad)


_ESCAPED_BYTES = re.compile("[\udc80-\udcff]+")  # what errors="surrogateescape" makes of invalid bytes


def _repair_escaped_bytes(text: str) -> tuple[str, bool]:
    """Text with escaped invalid bytes replaced as `_decode` would, and whether there were any."""
    if text.isascii() or not _ESCAPED_BYTES.search(text):
        return text, False
    return _ESCAPED_BYTES.sub(_replace_escaped, text), True


def _replace_escaped(run: re.Match[str]) -> str:
    return run.group().encode("utf-8", "surrogateescape").decode("utf-8", errors="replace")


def _iter_parquet(path: Path, options: SourceOptions, stats: SourceStats) -> Iterator[Document]:
    import pyarrow.parquet as pq

    source = _source_name(path)
    if _compression_of(path):
        with _open_binary(path) as f:
            handle: object = io.BytesIO(f.read())
    else:
        handle = str(path)
    try:
        pf = pq.ParquetFile(handle)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for non-parquet bytes
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    column = options.text_field
    names = pf.schema_arrow.names
    if column not in names:
        raise DataError(
            f"{path}: no column '{column}' (columns: {', '.join(names)}); choose one with --text-field"
        )
    raw = _raw_bytes_type(pf.schema_arrow.field(column).type)
    values = _column_values(pf, column, raw)
    yield from _iter_text_values(values, source, column, options, stats, utf8_bytes=raw is not None)


def _column_values(pf, column: str, as_type) -> Iterator[object]:
    """One column's values, batch by batch, cast to `as_type` first unless it is None."""
    for batch in pf.iter_batches(columns=[column], batch_size=1024):
        values = batch.column(0)
        yield from (values.cast(as_type) if as_type is not None else values).to_pylist()


def _raw_bytes_type(column_type):
    """The binary type to read a string column as, else None: pyarrow refuses a whole file over
    one value that is not UTF-8, while read as bytes each value is repaired (and counted)."""
    import pyarrow as pa

    if pa.types.is_string(column_type):
        return pa.binary()
    if pa.types.is_large_string(column_type):
        return pa.large_binary()
    return None


def _iter_text_values(
    values: Iterable[object],
    source: str,
    column: str,
    options: SourceOptions,
    stats: SourceStats,
    utf8_bytes: bool = False,
) -> Iterator[Document]:
    """Documents from a column's values; a non-string row is an error or, if asked, a counted skip.
    With `utf8_bytes`, bytes values are text read raw (a string column), decoded with repair."""
    for row, value in enumerate(values, 1):
        if isinstance(value, str):
            yield Document(value, source)
            continue
        if utf8_bytes and isinstance(value, bytes):
            text, bad = _decode(value)
            yield Document(text, source, bad)
            continue
        message = f"{source}: row {row}: column '{column}' is {type(value).__name__}, not a string"
        if not options.skip_bad_records:
            raise DataError(message)
        stats.add_bad(message)


def _iter_prepared(path: Path, options: SourceOptions) -> Iterator[Document]:
    """The texts of a `data prepare` output, split by split, part by part, row by row."""
    import pyarrow.parquet as pq

    splits = ["train", "val"] if options.split == "all" else [options.split]
    for split in splits:
        for part in prepared_parts(path, split):
            try:
                pf = pq.ParquetFile(part)
                for batch in pf.iter_batches(columns=prepared_columns(pf, part), batch_size=1024):
                    check_prepared_texts(batch.column(0), part)
                    texts = batch.column(0).to_pylist()
                    sources = _prepared_sources(batch, part) if batch.num_columns > 1 else [None] * len(texts)
                    for text, source in zip(texts, sources):
                        yield Document(text, source or _source_name(part), split=split)
            except DataError:
                raise
            except Exception as e:
                raise prepared_part_error(part, e) from None


def _prepared_sources(batch, part: Path) -> list[str | None]:
    """A prepared part's `source` values, refused unless the column holds strings (or only nulls):
    a foreign part with, say, integer ids there was read, and `data prepare` then died writing
    them, a traceback. The column's type decides, once a batch, not each value."""
    import pyarrow as pa

    column = batch.column(1)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or pa.types.is_null(column.type)):
        raise DataError(f"{part}: the 'source' column holds {column.type}, not strings")
    return column.to_pylist()


def _iter_hf(name: str, options: SourceOptions, stats: SourceStats) -> Iterator[Document]:
    """A `datasets` dataset: a directory saved with `save_to_disk`, or anything `load_dataset` takes."""
    try:
        import datasets
    except ImportError:
        raise DataError("hf:NAME inputs need the `datasets` package: pip install 'scratchlm[hf]'") from None
    if not name:
        raise DataError("hf: needs a dataset name, e.g. hf:roneneldan/TinyStories")
    local = Path(name)
    try:
        if local.is_dir() and (
            (local / "dataset_info.json").is_file() or (local / "dataset_dict.json").is_file()
        ):
            ds = _pick_split(datasets.load_from_disk(str(local)), name, options.hf_split)
        else:
            ds = datasets.load_dataset(name, split=options.hf_split, streaming=True)
    except DataError:
        raise
    except Exception as e:  # not found, offline, bad split: the library's message says which
        raise DataError(f"hf:{name}: cannot load dataset ({type(e).__name__}: {e})") from None
    columns = ds.column_names
    column = options.text_field
    if columns is not None and column not in columns:
        raise DataError(
            f"hf:{name}: no column '{column}' (columns: {', '.join(columns)}); choose one with --text-field"
        )
    source = f"{HF_PREFIX}{name}"
    try:  # a streamed dataset reads its files only now: a bad record or a dropped connection
        yield from _iter_text_values((record.get(column) for record in ds), source, column, options, stats)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"hf:{name}: cannot read dataset ({type(e).__name__}: {e})") from None


def _pick_split(ds, name: str, split: str):
    """One split of a saved `DatasetDict`. A saved single `Dataset` has no splits: asking it for
    one other than the default "train" is refused, not silently answered with all its rows."""
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"hf:{name}: no split '{split}' (splits: {', '.join(ds) or 'none'})")
        return ds[split]
    if split != "train":
        raise DataError(f"hf:{name}: a saved single Dataset has no splits; cannot read split '{split}'")
    return ds

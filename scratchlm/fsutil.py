"""Atomic file and directory writes: a crash never leaves a half-written file that looks whole."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from scratchlm.errors import ScratchLMError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; writers are not kept apart there
    fcntl = None


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory entry (a rename) to disk; a no-op where the OS does not allow it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# Windows flushes only a file opened for writing (EBADF otherwise); POSIX flushes any descriptor.
_FLUSH_OPEN_FLAGS = os.O_RDWR if os.name == "nt" else os.O_RDONLY


def fsync_tree(path: str | os.PathLike) -> None:
    """Flush every file and directory under `path` to disk. Why: writers such as safetensors and
    torch.save leave their bytes in the page cache, and a directory renamed into place (and a
    pointer naming it) can reach the disk before them: after a power loss or a kernel crash the
    output would look whole with empty files. A failed flush is a failed write (an OSError); a file
    system that cannot flush a file (EINVAL) is passed over, as for directories."""
    for folder, _, files in os.walk(path):
        for name in files:
            file = os.path.join(folder, name)
            if not stat.S_ISREG(os.lstat(file).st_mode):
                continue  # a link's target is not part of this output; a FIFO would block the open
            fd = os.open(file, _FLUSH_OPEN_FLAGS)
            try:
                os.fsync(fd)
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOTSUP):
                    raise
            finally:
                os.close(fd)
        fsync_dir(folder)


def current_umask() -> int:
    """The process's file-creation mask (read without changing it where Linux allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def as_created(path: str | os.PathLike, mode: int) -> None:
    """Give a temp file/dir (made private by `tempfile`) the mode a plain create would have:
    without it, every output would be readable by its owner alone, whatever the umask says."""
    os.chmod(path, mode & ~current_umask())


_MAX_STEM_BYTES = 120  # of an output's name in its temp names; the rest fits a file system's 255


def temp_stem(name: str) -> str:
    """An output's name as its temp files and directories carry it: whole, or, when that would
    take the temp name past the usual 255-byte limit on a file name, its start and a hash of it
    (a valid long output name was refused, with an error naming the temp path)."""
    raw = os.fsencode(name)
    if len(raw) <= _MAX_STEM_BYTES:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:16]
    start = name
    while len(os.fsencode(start)) > _MAX_STEM_BYTES - len(digest) - 1:  # cut between characters
        start = start[:-1]
    return f"{start}~{digest}"


def _is_hashed(stem: str) -> bool:
    """Whether a temp name's stem is a long name's start and hash (`temp_stem`), not the name."""
    size = len(os.fsencode(stem))  # a cut between characters stops up to 3 bytes short
    return _MAX_STEM_BYTES - 3 <= size <= _MAX_STEM_BYTES and re.search(r"~[0-9a-f]{16}$", stem) is not None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file beside `path`, fsync it, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{temp_stem(path.name)}.", suffix=".tmp", dir=path.parent)
    try:
        as_created(tmp, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def check_output_dir(
    final: str | os.PathLike,
    *,
    what: str,
    replaceable: Callable[[Path], bool] | None = None,
    inputs: Iterable[str | os.PathLike] = (),
    error: type[ScratchLMError] = ScratchLMError,
) -> Path:
    """Refuse, before any work, an output directory whose replacement would lose something.

    `final` may be new, an empty directory, or (when `replaceable` says so) an earlier output of
    the same kind (`what`, e.g. "a tokenizer directory"). Anything else — a file, a directory of
    other things, the current directory or one above it, an input or a directory holding one —
    is one `error`. Returns `final` as an absolute path (so `.` and `..` have names).
    """
    shown = os.fspath(final)
    require_utf8_path(shown, "", error)
    try:
        path = Path(final).expanduser().resolve()
    except (RuntimeError, OSError) as e:  # a symlink loop (RuntimeError before Python 3.13)
        raise error(f"{shown}: cannot be resolved ({e})") from None
    cwd = Path.cwd().resolve()
    if path == cwd or path in cwd.parents:
        raise error(f"{shown}: is the current directory or holds it; choose another output directory")
    for given in inputs:
        source = Path(given).expanduser().resolve()
        if path == source or path in source.parents:
            raise error(f"{shown}: holds the input {os.fspath(given)}; choose an output outside the inputs")
        if source in path.parents:
            raise error(f"{shown}: is inside the input {os.fspath(given)}; choose an output outside the inputs")
    if path.exists():
        if not path.is_dir():
            raise error(f"{shown}: exists and is not a directory; refusing to replace it")
        if any(path.iterdir()) and not (replaceable is not None and replaceable(path)):
            raise error(f"{shown}: exists and is not {what}; refusing to replace it (choose another output)")
    else:
        ancestor = next(parent for parent in path.parents if parent.exists())
        if not ancestor.is_dir():  # found now, not when the work is done and the directory is made
            raise error(f"{shown}: cannot be made, {ancestor} is a file")
    return path


def require_utf8_path(path: str | os.PathLike, what: str, error: type[ScratchLMError]) -> None:
    """One `error` for an output path whose bytes are not UTF-8 (a name typed in another
    encoding): parquet, TensorBoard and the JSON files that record it take UTF-8 paths only, and
    would fail with a traceback halfway through the work. `what` prefixes the message."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(path)
        shown = raw.decode("utf-8", "backslashreplace")  # the bad bytes as \xNN
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise error(f"{what}{shown}: the path is not UTF-8; name the output in UTF-8") from None
        raise error(  # UTF-8 bytes that this locale's file system encoding cannot read as text
            f"{what}{shown}: the path is UTF-8 but the locale's file system encoding is "
            f"{sys.getfilesystemencoding()}; set a UTF-8 locale or PYTHONUTF8=1"
        ) from None


# Outputs this process is writing through `atomic_directory` now: a temp directory tagged with this
# process's own id is one of these, or was left by an earlier process that had the same id (a
# restarted container often hands a trainer the same PID on the same host name).
_WRITING: set[Path] = set()


@contextlib.contextmanager
def atomic_directory(
    final: str | os.PathLike,
    *,
    what: str = "an earlier output of this kind",
    replaceable: Callable[[Path], bool] | None = None,
    inputs: Iterable[str | os.PathLike] = (),
    error: type[ScratchLMError] = ScratchLMError,
) -> Iterator[Path]:
    """Yield a temp directory beside `final`; on success its files are flushed to disk and it
    replaces `final` in one rename.

    `final` is first checked with `check_output_dir` (same arguments), so an existing directory
    is only replaced when `replaceable` recognises it as an earlier output of this kind. On any
    exception the temp directory is removed and `final` is left as it was, so an interrupted
    stage never leaves an output directory that looks complete.
    """
    final = check_output_dir(final, what=what, replaceable=replaceable, inputs=inputs, error=error)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_temp_dirs(final.parent, final.name)
    prefix = _temp_prefix(final.name)
    tmp: Path | None = None
    writing = final.parent.resolve() / temp_stem(final.name)  # as `remove_abandoned_temp_dirs` names it
    _WRITING.add(writing)
    try:
        # Made inside the try: a signal between the directory's creation and the try would leave it.
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".partial", dir=final.parent))
        as_created(tmp, 0o777)
        yield tmp
        fsync_tree(tmp)  # every byte on disk before the output can be seen whole
        if final.exists():
            # Named as a temp directory: if this process dies before the next line, the next writer's
            # `remove_abandoned_temp_dirs` deletes it instead of leaving it on disk for good.
            old = final.with_name(f"{prefix}old.partial")
            try:
                os.replace(final, old)
                os.replace(tmp, final)
            except BaseException:
                if not os.path.lexists(final) and os.path.lexists(old):  # moved aside, not replaced
                    with contextlib.suppress(OSError):
                        os.replace(old, final)  # the earlier output back where it was
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        # Interrupted inside mkdtemp, after the directory was made: found by this writer's prefix.
        made = [tmp] if tmp is not None else final.parent.glob(f"{glob.escape(prefix)}*.partial")
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
        raise
    finally:
        _WRITING.discard(writing)


def remove_directory(path: str | os.PathLike) -> None:
    """Delete a directory tree, renamed first to a temp name of this writer's. Why: deleting takes
    a while (a checkpoint's gigabytes), and a kill in the middle would leave the output half gone,
    looking like an output still; the temp name is one `remove_abandoned_temp_dirs` clears. A link
    is left alone, as `shutil.rmtree` leaves it."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return
    doomed = path.with_name(f"{_temp_prefix(path.name)}{secrets.token_hex(4)}.partial")
    try:
        os.replace(path, doomed)
    except OSError:
        doomed = path  # cannot be renamed: deleted where it is
    shutil.rmtree(doomed, ignore_errors=True)


@contextlib.contextmanager
def exclusive_directory(path: str | os.PathLike, busy: str, error: type[ScratchLMError]) -> Iterator[None]:
    """Hold an advisory lock on the directory `path` while the block runs; when another process
    holds it, raise `error(busy)` at once. Why: a stage that changes a directory in place (an
    append) cannot tell a run that died half-way, whose leftovers it must undo, from one still
    writing, whose work undoing would destroy. The kernel drops the lock when its holder exits,
    however it ends, so a killed run leaves nothing stale behind and no lock file is made. Where
    the file system cannot lock a directory (some network file systems), the block runs unlocked,
    as it did before locks were taken."""
    if fcntl is None:
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise error(busy) from None
        except OSError:  # EBADF, ENOLCK, EOPNOTSUPP: no locks here
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def _host() -> str:
    """This host's name as temp directory names hold it: dots made underscores, so that the name
    splits on its dots unambiguously."""
    return socket.gethostname().replace(".", "_")


def _temp_prefix(name: str) -> str:
    """How this writer's temp directories for the output `name` begin (`remove_abandoned_temp_dirs`
    reads the writer back from it)."""
    return f".{temp_stem(name)}.{_writer_tag()}."


def _writer_tag() -> str:
    """HOST-PID of this process, part of each temp directory's name, so that a later writer can
    tell an abandoned one from one being written."""
    return f"{_host()}-{os.getpid()}"


def _process_alive(pid: int) -> bool:
    """Whether a process of this host with this id runs (or might: when unsure, it does)."""
    if os.name != "posix":  # elsewhere signal 0 is not a harmless probe
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def remove_abandoned_temp_dirs(parent: str | os.PathLike, name: str | None = None) -> int:
    """Delete the temp directories `atomic_directory` left in `parent` (for the output `name`, or
    for any) when its process was killed outright (kill -9, out of memory, power loss), which no
    clean-up runs for: a checkpoint's or a tokens dir's worth of disk each. Only directories whose
    writer ran on this host and is gone are deleted: its process id no longer runs, or is this
    process's own, which is not writing that output. Returns how many were.

    A writer killed between its two renames left the earlier output moved aside (`...old.partial`)
    and nothing in its place: that one is put back, not deleted (a replaced checkpoint would
    otherwise be lost, and a resume would go back to the one before)."""
    pattern = f".{glob.escape(temp_stem(name)) if name is not None else '*'}.*.partial"
    host = _host()
    abandoned: list[tuple[Path, str, str]] = []  # (temp dir, its output's stem, its random part)
    for path in Path(parent).glob(pattern):
        parts = path.name[: -len(".partial")].rsplit(".", 2)  # [".NAME", "HOST-PID", random]
        writer_host, _, pid = parts[1].rpartition("-") if len(parts) == 3 else ("", "", "")
        if writer_host != host or not pid.isdigit() or not path.is_dir():
            continue
        if name is not None and parts[0][1:] != temp_stem(name):  # `.model.*` also matches `.model.v2.*`
            continue
        if not _may_be_writing(int(pid), Path(parent).resolve() / parts[0][1:]):
            abandoned.append((path, parts[0][1:], parts[2]))
    removed = 0
    for path, stem, random_part in sorted(abandoned, key=lambda entry: entry[2] != "old"):  # moved-aside first
        if random_part == "old":
            if name is None and _is_hashed(stem):  # a long name, known only by its hash: kept, not guessed
                continue
            final = Path(parent) / (name if name is not None else stem)
            if not os.path.lexists(final):
                os.replace(path, final)
                fsync_dir(parent)
                continue
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    return removed


def _may_be_writing(pid: int, output: Path) -> bool:
    """Whether process `pid` of this host may still be writing `output` (its resolved folder and
    `temp_stem`): this process, only if it is now (else the temp directory is a predecessor's with
    the same id); another, while it runs."""
    if pid == os.getpid():
        return output in _WRITING
    return _process_alive(pid)


def directory_entries(path: str | os.PathLike, hidden_dirs: bool = False) -> dict[str, bool] | None:
    """A directory's entry names -> whether each is a directory; None if it cannot be listed.
    Hidden files are left out (a `.DS_Store` a file browser drops in), and hidden directories
    unless `hidden_dirs`: the checks of what an output directory holds count a `.git/` (replacing
    the directory would delete it) but not a browser's litter."""
    try:
        with os.scandir(path) as listing:
            return {
                entry.name: entry.is_dir()
                for entry in listing
                if not entry.name.startswith(".") or (hidden_dirs and entry.is_dir())
            }
    except OSError:
        return None


def holds_only_files(path: str | os.PathLike, allowed: Callable[[str], bool]) -> bool:
    """Whether the directory holds nothing but files whose names `allowed` accepts (hidden files
    aside; a hidden directory such as `.git/` counts, as replacing the directory would delete it)."""
    entries = directory_entries(path, hidden_dirs=True)
    return entries is not None and all(not is_dir and allowed(name) for name, is_dir in entries.items())


def read_text_file(path: str | os.PathLike, error: type[ScratchLMError]) -> str:
    """A file's UTF-8 text, exactly (line ends as written: a prompt's CRLF is part of it); every
    reason it cannot be read is one `error` naming the file."""
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, not a file") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror or e})") from None


def parse_json(text: str, where: str, error: type[ScratchLMError]) -> Any:
    """`json.loads`, with every way it fails on bad input as one `error` starting with `where`:
    bad syntax, a number too long to convert (ValueError), nesting too deep (RecursionError)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise error(f"{where}: not valid JSON (nested too deeply)") from None
    except ValueError as e:
        raise error(f"{where}: not valid JSON ({e})") from None


def read_json(path: str | os.PathLike, error: type[ScratchLMError]) -> Any:
    """The JSON value in a file; anything unreadable is one clear `error` naming the file."""
    return parse_json(read_text_file(path, error), str(path), error)


def read_json_object(path: str | os.PathLike, error: type[ScratchLMError]) -> dict[str, Any]:
    """A JSON file that must hold an object; anything else is one clear `error` naming the file."""
    data = read_json(path, error)
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object")
    return data


def is_json_int(value: Any) -> bool:
    """A JSON integer: Python's bool is an int, and a float like 1.0 is not one."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_json_number(value: Any) -> bool:
    """A JSON number, integer or not (never a bool, which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def brief(value: Any, limit: int = 80) -> str:
    """`repr(value)` cut short, so an error message quoting it stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

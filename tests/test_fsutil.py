"""Atomic writes: a failure in the middle leaves the old state, never a half-written one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scratchlm.fsutil import (
    atomic_directory,
    atomic_write_json,
    atomic_write_text,
    check_output_dir,
    remove_abandoned_temp_dirs,
)


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "a" / "f.json"
    atomic_write_json(target, {"x": 1})
    atomic_write_json(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert [p.name for p in target.parent.iterdir()] == ["f.json"]


def test_atomic_directory_appears_only_on_success(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_directory(final) as tmp:
            atomic_write_text(tmp / "part.txt", "half")
            raise RuntimeError("crash in the middle")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []

    with atomic_directory(final) as tmp:
        atomic_write_text(tmp / "done.txt", "whole")
    assert (final / "done.txt").read_text() == "whole"


def test_atomic_directory_failure_keeps_previous_output(tmp_path):
    final = tmp_path / "out"
    ours = dict(replaceable=lambda p: any(p.glob("v*.txt")))
    with atomic_directory(final, **ours) as tmp:
        atomic_write_text(tmp / "v1.txt", "1")
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(final, **ours) as tmp:
            atomic_write_text(tmp / "v2.txt", "2")
            raise KeyboardInterrupt
    assert sorted(p.name for p in final.iterdir()) == ["v1.txt"]
    with atomic_directory(final, **ours) as tmp:
        atomic_write_text(tmp / "v3.txt", "3")
    assert sorted(p.name for p in final.iterdir()) == ["v3.txt"]


def writer_inside_atomic_directory(final) -> subprocess.Popen:
    """Another process, paused halfway through writing `final` (its temp directory exists)."""
    code = textwrap.dedent(f"""
        import time
        from scratchlm.fsutil import atomic_directory, atomic_write_text
        with atomic_directory({str(final)!r}) as tmp:
            atomic_write_text(tmp / "half.bin", "x" * 1000)
            print("writing", flush=True)
            time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    return child


@pytest.mark.skipif(os.name != "posix", reason="kill -9 and the liveness probe are POSIX")
def test_temp_dirs_of_killed_writers_are_removed_and_those_of_live_ones_kept(tmp_path):
    """kill -9 runs no clean-up: its temp directory (a checkpoint's size) must not stay forever."""
    final = tmp_path / "out"
    killed = writer_inside_atomic_directory(final)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    (abandoned,) = tmp_path.glob(".out.*.partial")
    assert f"-{killed.pid}." in abandoned.name and (abandoned / "half.bin").exists()
    assert remove_abandoned_temp_dirs(tmp_path, "other") == 0  # another output's name: not touched
    assert abandoned.exists()
    live = writer_inside_atomic_directory(final)  # the next writer of `out` clears the dead one's
    try:
        (in_progress,) = tmp_path.glob(".out.*.partial")
        assert f"-{live.pid}." in in_progress.name
        with atomic_directory(final) as tmp:  # a live writer's is left alone
            atomic_write_text(tmp / "whole.txt", "done")
        assert list(tmp_path.glob(".out.*.partial")) == [in_progress]
        assert (final / "whole.txt").read_text() == "done"
    finally:
        live.kill()
        live.wait()
    assert remove_abandoned_temp_dirs(tmp_path) == 1
    assert list(tmp_path.glob(".*.partial")) == []


def test_a_temp_dir_tagged_with_this_process_id_is_removed_unless_this_process_is_writing_it(tmp_path):
    """A restarted container often gives the trainer the PID its killed predecessor had: that
    one's temp directory used to pass for a live writer's and stay on disk for good."""
    from scratchlm.fsutil import _writer_tag

    left_over = tmp_path / f".out.{_writer_tag()}.abcd1234.partial"
    left_over.mkdir()
    with atomic_directory(tmp_path / "other") as writing:
        assert remove_abandoned_temp_dirs(tmp_path) == 1  # the leftover, not the one being written
        assert writing.is_dir() and not left_over.exists()
        atomic_write_text(writing / "whole.txt", "done")
    assert (tmp_path / "other" / "whole.txt").read_text() == "done"
    left_over.mkdir()
    with atomic_directory(tmp_path / "out") as tmp:  # the next writer of `out` clears it too
        atomic_write_text(tmp / "whole.txt", "done")
    assert list(tmp_path.glob(".*.partial")) == []


def test_read_json_object_gives_one_clear_error_of_the_callers_kind(tmp_path):
    from scratchlm.errors import DataError, ModelError
    from scratchlm.fsutil import read_json_object

    good = tmp_path / "good.json"
    good.write_text('{"a": 1}')
    assert read_json_object(good, DataError) == {"a": 1}
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ModelError, match="broken.json: not valid JSON"):
        read_json_object(broken, ModelError)
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    with pytest.raises(DataError, match="list.json: expected a JSON object"):
        read_json_object(listing, DataError)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DataError, match="binary.json: not UTF-8 text"):
        read_json_object(binary, DataError)
    for name, text, problem in [
        ("deep.json", "[" * 100_000 + "]" * 100_000, r"not valid JSON \(nested too deeply\)"),
        ("long-number.json", '{"n": ' + "9" * 5000 + "}", "not valid JSON"),
    ]:
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=f"{name}: {problem}"):
            read_json_object(tmp_path / name, DataError)
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(DataError, match="dir.json: is a directory"):
        read_json_object(tmp_path / "dir.json", DataError)


def test_output_directory_that_is_not_an_earlier_output_is_refused_before_any_work(tmp_path):
    from scratchlm.errors import DataError

    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "notes.txt").write_text("important")
    started = []
    with pytest.raises(DataError, match="exists and is not a model directory; refusing to replace it"):
        with atomic_directory(project, what="a model directory", replaceable=lambda p: False, error=DataError):
            started.append(True)
    assert not started
    assert (project / "notes.txt").read_text() == "important" and (project / "src").is_dir()
    a_file = tmp_path / "f.txt"
    a_file.write_text("keep")
    with pytest.raises(DataError, match="exists and is not a directory"):
        check_output_dir(a_file, what="x", error=DataError)
    assert a_file.read_text() == "keep"
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_directory(empty) as tmp:
        atomic_write_text(tmp / "x.txt", "x")
    assert (empty / "x.txt").is_file()


def test_output_directory_must_not_be_the_current_directory_or_hold_or_sit_in_an_input(tmp_path, monkeypatch):
    from scratchlm.errors import ScratchLMError

    data = tmp_path / "data"
    data.mkdir()
    (data / "c.txt").write_text("corpus")
    monkeypatch.chdir(data)
    for out in (".", "..", str(tmp_path)):
        with pytest.raises(ScratchLMError, match="current directory"):
            check_output_dir(out, what="x", replaceable=lambda p: True)
    monkeypatch.chdir(tmp_path)
    for out, inputs, word in [
        (data / "c.txt", [data / "c.txt"], "holds the input"),
        (data, [data / "c.txt"], "holds the input"),
        (data / "out", [data], "is inside the input"),
    ]:
        with pytest.raises(ScratchLMError, match=word):
            check_output_dir(out, what="x", replaceable=lambda p: True, inputs=inputs)
    assert check_output_dir("elsewhere", what="x", inputs=[data]) == tmp_path / "elsewhere"
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(ScratchLMError, match="loop: cannot be resolved"):
        check_output_dir("loop", what="x")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ScratchLMError, match="a-file/deeper/out: cannot be made, .*a-file is a file"):
        check_output_dir("a-file/deeper/out", what="x")
    assert (data / "c.txt").read_text() == "corpus"


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_outputs_get_the_permissions_the_umask_gives(tmp_path, mask):
    import os
    import stat

    previous = os.umask(mask)
    try:
        with atomic_directory(tmp_path / "out") as tmp:
            atomic_write_text(tmp / "f.txt", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((tmp_path / "out" / "f.txt").stat().st_mode) == 0o666 & ~mask


def test_a_signal_as_the_temp_directory_is_made_leaves_no_temp_directory(tmp_path, monkeypatch):
    """SIGTERM right after mkdtemp made the directory, before the clean-up's try began, left it
    behind (CI caught `data prepare` doing so once)."""
    import tempfile

    real_mkdtemp = tempfile.mkdtemp

    def interrupted(*args, **kwargs):
        real_mkdtemp(*args, **kwargs)
        raise KeyboardInterrupt  # as the signal handler raises it, the directory made

    monkeypatch.setattr(tempfile, "mkdtemp", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(tmp_path / "out"):
            pass
    assert list(tmp_path.iterdir()) == []


def _replace_a_first_output_with_renames_patched(final: Path, monkeypatch, patched_replace) -> None:
    """Write "first" into `final`, then try to replace it with "second" while `os.replace` is
    `patched_replace(real_replace, src, dst)`; the interruption it raises is expected."""
    with atomic_directory(final) as tmp:
        (tmp / "a.txt").write_text("first")
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: patched_replace(real_replace, src, dst))
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(final, replaceable=lambda _: True) as tmp:
            (tmp / "a.txt").write_text("second")
    monkeypatch.undo()


def test_an_interruption_between_the_two_renames_puts_the_earlier_output_back(tmp_path, monkeypatch):
    """The earlier output was moved aside, then the new one failed to take its place: the output
    was gone and its copy left under a name no clean-up knew."""
    final = tmp_path / "out"

    def second_rename_interrupted(real_replace, src, dst):
        if Path(dst) == final and not Path(src).name.endswith(".old.partial"):  # the new output's rename
            raise KeyboardInterrupt
        return real_replace(src, dst)

    _replace_a_first_output_with_renames_patched(final, monkeypatch, second_rename_interrupted)
    assert (final / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_signal_right_after_the_new_output_took_its_place_stays_that_signal(tmp_path, monkeypatch):
    """The restore then tried to move the earlier output onto the new one: "Directory not empty",
    an OSError in place of the interrupt (exit 2 and a false error instead of 130/143)."""
    final = tmp_path / "out"

    def renamed_then_interrupted(real_replace, src, dst):
        real_replace(src, dst)
        if Path(dst) == final:
            raise KeyboardInterrupt

    _replace_a_first_output_with_renames_patched(final, monkeypatch, renamed_then_interrupted)
    assert (final / "a.txt").read_text() == "second"


def test_a_utf8_path_under_an_ascii_locale_is_blamed_on_the_locale(tmp_path):
    """Its bytes are UTF-8: "the path is not UTF-8" sent the user to rename a correct path."""
    script = textwrap.dedent(f"""
        import os, sys
        from scratchlm.errors import ScratchLMError
        from scratchlm.fsutil import check_output_dir
        if sys.getfilesystemencoding().lower().replace("-", "") == "utf8":
            print("UTF8-ANYWAY")
        else:
            try:
                check_output_dir(os.fsdecode({bytes(tmp_path)!r} + b"/caf\\xc3\\xa9"), what="x")
            except ScratchLMError as e:
                print(ascii(str(e)))
    """)
    env = {**os.environ, "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "LC_ALL": "C", "LANG": "C"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env).stdout
    if "UTF8-ANYWAY" in out:
        pytest.skip("this Python reads file names as UTF-8 even in the C locale")
    assert "the path is UTF-8 but the locale's file system encoding is" in out and "PYTHONUTF8=1" in out


def test_a_long_output_name_gets_temp_names_within_the_file_name_limit(tmp_path):
    """A 240-byte output name is valid, but its temp directory's name (name + writer tag + random
    part) went past 255 bytes, and the stage failed with "File name too long" on the temp path."""
    from scratchlm.fsutil import _writer_tag, temp_stem

    name = "o" * 200 + "é" * 20  # 240 bytes in UTF-8
    final = tmp_path / name
    with atomic_directory(final) as tmp:
        assert len(os.fsencode(tmp.name)) <= 200
        assert remove_abandoned_temp_dirs(tmp_path) == 0  # this process is writing it: kept
        atomic_write_text(tmp / ("f" * 250), "whole")  # a long file name, written atomically too
    assert (final / ("f" * 250)).read_text() == "whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    assert temp_stem("short") == "short" and temp_stem(name) != temp_stem(name[:-1] + "e")
    left_over = tmp_path / f".{temp_stem(name)}.{_writer_tag()}.abcd1234.partial"  # a predecessor's, same PID
    left_over.mkdir()
    with atomic_directory(final, replaceable=lambda _: True) as tmp:  # the next writer of the long name clears it
        atomic_write_text(tmp / "again.txt", "done")
    assert not left_over.exists() and (final / "again.txt").read_text() == "done"


def test_a_long_output_name_is_accepted_by_a_stage(tmp_path, capsys):
    from scratchlm.cli import main

    (tmp_path / "doc.txt").write_text("a document long enough to be kept by nobody's filters, surely")
    out = tmp_path / ("o" * 240)
    assert main(["data", "prepare", str(tmp_path / "doc.txt"), "--out", str(out), "--no-filters", "--workers", "1"]) == 0
    assert (out / "stats.json").is_file()


@pytest.mark.skipif(os.name != "posix", reason="the liveness probe is POSIX")
@pytest.mark.parametrize("named", [True, False])
def test_an_output_a_killed_writer_had_moved_aside_is_put_back_not_deleted(tmp_path, named):
    """Killed between its two renames, a writer leaves the earlier output moved aside and nothing
    in its place; the next writer's clean-up used to delete it (a replaced checkpoint lost, and a
    resume went back to the one before)."""
    final = tmp_path / "step-000008"
    with atomic_directory(final) as tmp:
        atomic_write_text(tmp / "weights", "step 8")
    code = textwrap.dedent(f"""
        import os
        from scratchlm.fsutil import atomic_directory, atomic_write_text
        real_replace = os.replace
        def replace(src, dst):
            real_replace(src, dst)
            if str(dst).endswith(".old.partial"):
                os._exit(137)  # killed right after the earlier output was moved aside
        os.replace = replace
        with atomic_directory({str(final)!r}, replaceable=lambda _: True) as tmp:
            atomic_write_text(tmp / "weights", "step 8 again")
    """)
    assert subprocess.run([sys.executable, "-c", code]).returncode == 137
    assert not final.exists() and len(list(tmp_path.glob(".step-000008.*.partial"))) == 2
    removed = remove_abandoned_temp_dirs(tmp_path, "step-000008" if named else None)
    assert removed == 1  # the killed writer's new copy; the earlier output is back
    assert (final / "weights").read_text() == "step 8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000008"]


@pytest.mark.skipif(os.name != "posix", reason="advisory directory locks are POSIX")
def test_a_directory_lock_keeps_a_second_holder_out_and_a_file_system_without_locks_runs_unlocked(
    tmp_path, monkeypatch
):
    import errno

    from scratchlm.errors import DataError
    from scratchlm.fsutil import exclusive_directory

    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from scratchlm.errors import DataError
        from scratchlm.fsutil import exclusive_directory
        with exclusive_directory({str(tmp_path)!r}, "busy", DataError):
            print("holding", flush=True)
            time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(DataError, match="^busy$"):
            with exclusive_directory(tmp_path, "busy", DataError):
                pass
    finally:
        holder.kill()
        holder.wait()
    with exclusive_directory(tmp_path, "busy", DataError):  # the kernel dropped the dead holder's lock
        pass
    import fcntl

    def no_locks_here(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks_here)
    ran = []
    with exclusive_directory(tmp_path, "busy", DataError):
        ran.append(True)
    assert ran == [True]


@pytest.mark.skipif(os.name != "posix", reason="the liveness probe is POSIX")
def test_the_clean_up_for_one_output_leaves_another_outputs_temp_dirs_alone(tmp_path):
    """`.model.*.partial` also matches `model.v2`'s temp dirs: the clean-up for `model` deleted
    them, and once moved-aside outputs were put back, it put `model.v2`'s in place as `model`."""
    from scratchlm.fsutil import _host

    dead = subprocess.Popen(["true"])
    dead.wait()  # a process id that no longer runs
    moved_aside = tmp_path / f".model.v2.{_host()}-{dead.pid}.old.partial"
    moved_aside.mkdir()
    (moved_aside / "weights").write_text("model.v2's earlier output")
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "model") as tmp:
            (tmp / "weights").write_text("new model")
            raise RuntimeError("the write of model fails")
    assert sorted(p.name for p in tmp_path.iterdir()) == [moved_aside.name]
    assert remove_abandoned_temp_dirs(tmp_path, "model.v2") == 0  # its own clean-up puts it back
    assert (tmp_path / "model.v2" / "weights").read_text() == "model.v2's earlier output"


def test_a_long_name_is_cut_between_characters_in_temp_names():
    from scratchlm.fsutil import _is_hashed, temp_stem

    for name in ("é" * 120, "a" + "é" * 119, "漢" * 90, "o" * 300):
        stem = temp_stem(name)
        assert stem.encode("utf-8")  # no lone surrogate: valid UTF-8 however the cut fell
        assert len(os.fsencode(stem)) <= 120 and _is_hashed(stem)
    assert not _is_hashed("short~0123456789abcdef")

"""The CLI front: one-line errors with exit code 2, tracebacks only with --debug."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from scratchlm.cli import build_parser, main


def test_every_group_registers_subcommands():
    parser = build_parser()
    help_text = parser.format_help()
    for group in ("data", "tokenizer", "export", "import", "pretrain"):
        assert group in help_text


def test_user_error_is_one_line_and_exit_2(capsys, tmp_path):
    code = main(["data", "prepare", str(tmp_path / "does-not-exist.txt"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("scratchlm: error:")
    assert "does-not-exist.txt" in lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("stage", [
    ["data", "prepare", "{text}", "--out", "{out}"],
    ["data", "tokenize", "{text}", "--tokenizer", "{out}", "--out", "{out}"],
    ["tokenizer", "train", "{text}", "--vocab-size", "300", "--out", "{out}"],
])
def test_a_worker_count_no_machine_has_is_a_one_line_error(capsys, tmp_path, stage):
    """Past C's int it used to end in an OverflowError traceback deep in multiprocessing."""
    (tmp_path / "a.txt").write_text("some text to read")
    args = [a.format(text=tmp_path / "a.txt", out=tmp_path / "o") for a in stage]
    assert main([*args, "--workers", "99999999999"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "workers must be 0" in err[0] and "to 1024, got 99999999999" in err[0]


def test_debug_shows_the_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "scratchlm", "--debug", "data", "prepare", str(tmp_path / "nope.txt"),
         "--out", str(tmp_path / "o")],
        capture_output=True, text=True,
    )
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr


def test_group_without_subcommand_prints_help_and_fails(capsys):
    assert main(["data"]) == 2
    assert "SUBCOMMAND" in capsys.readouterr().err


def test_bad_set_override_is_a_one_line_error(capsys, tmp_path):
    code = main(["data", "prepare", "builtin:python-docs", "--out", str(tmp_path / "o"), "--set", "nokey"])
    assert code == 2
    assert "section.key=value" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--version"]])
def test_version(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    assert "scratchlm" in capsys.readouterr().out


def test_a_path_that_cannot_be_made_is_a_one_line_error(capsys, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("some words for a tokenizer, repeated. " * 50)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code = main(["tokenizer", "train", str(corpus), "--vocab-size", "300", "--out", str(blocker / "tok")])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("scratchlm: error:") and "a-file" in lines[0], err
    assert blocker.read_text() == "not a directory"


def test_sigterm_stops_a_stage_like_ctrl_c_and_leaves_no_partial_output(tmp_path):
    import os
    import signal
    import threading
    import time

    if not hasattr(os, "mkfifo"):
        pytest.skip("needs a named pipe (POSIX) to hold the stage mid-run")
    # The input is a named pipe that never ends while the stage runs, so the stage is mid-run, its
    # output half written, whenever the signal comes. Documents keep trickling in: a signal the
    # kernel hands to one of the process's helper threads is acted on when the main thread's
    # read returns, as it would be with any real input.
    source = tmp_path / "docs.txt"
    os.mkfifo(source)
    out = tmp_path / "prepared"
    proc = subprocess.Popen(
        [sys.executable, "-m", "scratchlm", "data", "prepare", str(source), "--out", str(out),
         "--separator", "\n===\n", "--workers", "1", "--no-filters"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    stop = threading.Event()

    def feed() -> None:
        with open(source, "wb", buffering=0) as pipe:
            i = 0
            while not stop.is_set():
                try:
                    pipe.write(f"document {i} says something of its own\n===\n".encode())
                except BrokenPipeError:  # the stage has ended
                    return
                i += 1
                time.sleep(0.01)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        deadline = time.monotonic() + 60
        while not any(p.name.endswith(".partial") for p in tmp_path.iterdir()):  # the stage has started writing
            assert proc.poll() is None and time.monotonic() < deadline, "prepare ended before it could be signalled"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
        feeder.join(timeout=10)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "terminated" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.txt"]  # no output, no temp directory


SWALLOWS_SIGTERM = (
    "import signal\n"
    "try:\n"
    "    signal.raise_signal(signal.SIGTERM)  # arrives while this module is set up\n"
    "except BaseException:  # as Cython's generated set-up code does\n"
    "    pass\n"
)


def _importable_module(monkeypatch, tmp_path, source: str) -> str:
    """A module made of `source`, importable (once, fresh) for this test; returns its name."""
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "sigterm_in_import.py").write_text(source)
    monkeypatch.syspath_prepend(str(modules))
    monkeypatch.delitem(sys.modules, "sigterm_in_import", raising=False)
    return "sigterm_in_import"


def test_sigterm_during_an_import_that_swallows_it_still_stops_the_stage(tmp_path, monkeypatch, capsys):
    """Module set-up code may swallow any exception: Cython's does around `Sequence.register`, and
    `data prepare` first imports such a module (numpy.random) mid-stage. A SIGTERM handled there
    was lost and the stage ran to the end; it must stop the stage once the import is over."""
    import importlib
    import signal
    import time

    import scratchlm.data.prepare as prepare_module

    module = _importable_module(monkeypatch, tmp_path, SWALLOWS_SIGTERM)
    set_up = prepare_module._BatchWorker.__init__

    def import_then_work(self, config) -> None:
        importlib.import_module(module)
        set_up(self, config)
        for _ in range(500):  # the stage goes on working after the import (5 s at most)
            time.sleep(0.01)

    monkeypatch.setattr(prepare_module._BatchWorker, "__init__", import_then_work)
    data = tmp_path / "data"
    data.mkdir()
    (data / "docs.txt").write_text("one document\n===\nanother document\n")
    code = main([
        "data", "prepare", str(data / "docs.txt"), "--out", str(data / "prepared"),
        "--separator", "\n===\n", "--workers", "1", "--no-filters",
    ])  # fmt: skip
    assert code == 128 + signal.SIGTERM and "terminated" in capsys.readouterr().err
    assert sorted(p.name for p in data.iterdir()) == ["docs.txt"]  # no output, no temp directory


def test_os_errors_are_described_in_one_line_whatever_they_name():
    import errno

    from scratchlm.cli import describe_os_error

    assert describe_os_error(OSError(errno.ENOENT, "No such file", "a.txt")) == "a.txt: No such file"
    assert describe_os_error(OSError(errno.EXDEV, "Cross-device", b"a", None, "b")) == "a -> b: Cross-device"
    assert describe_os_error(OSError(errno.EBADF, "Bad file descriptor", 987)).startswith("file descriptor 987")
    assert describe_os_error(OSError("disk on fire")) == "disk on fire"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux's /proc, where nothing can be made")
def test_a_directory_the_system_refuses_to_make_is_a_one_line_error(capsys, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("some words for a tokenizer, repeated. " * 50)
    code = main(["tokenizer", "train", str(corpus), "--vocab-size", "300", "--out", "/proc/scratchlm-none/tok"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("scratchlm: error: /proc/scratchlm-none"), err


def test_flags_win_over_the_config_file(capsys, tmp_path):
    for i in (1, 2):
        (tmp_path / f"{i}.txt").write_text(f"document {i} has enough words to be kept by every filter here. " * 20)
    cfg = tmp_path / "prep.toml"
    cfg.write_text(f'inputs = ["{tmp_path / "2.txt"}"]\nout = "{tmp_path / "from-file"}"\nworkers = 1\n')
    code = main(["data", "prepare", "--config", str(cfg), "--out", str(tmp_path / "from-flag"),
                 str(tmp_path / "1.txt"), "--no-filters"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "from-flag").is_dir() and not (tmp_path / "from-file").exists()
    import pyarrow.parquet as pq

    sources = {s for part in (tmp_path / "from-flag").glob("*/*.parquet") for s in pq.read_table(part)["source"].to_pylist()}
    assert sources == {str(tmp_path / "1.txt")}


def test_every_dtype_flag_offers_exactly_the_weight_dtypes_the_library_accepts(capsys):
    from typing import get_args

    from scratchlm.cli import WEIGHT_DTYPE_CHOICES, build_parser
    from scratchlm.device import WEIGHT_DTYPES, WeightDtype

    assert WEIGHT_DTYPE_CHOICES == get_args(WeightDtype) == ("auto", *WEIGHT_DTYPES)
    parser = build_parser()
    for command in (["generate"], ["export", "hf"], ["import", "hf"]):
        with pytest.raises(SystemExit):
            parser.parse_args([*command, "--dtype", "int8"])
        err = capsys.readouterr().err
        assert "invalid choice: 'int8'" in err and "'bfloat16'" in err, (command, err)


def test_the_command_line_starts_without_importing_torch(tmp_path):
    """Importing torch costs over a second; `scratchlm --help` and the data commands never use it."""
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"text": "a short document"}\n', encoding="utf-8")
    probe = (
        "import sys\n"
        "from scratchlm.cli import build_parser, main\n"
        "build_parser().format_help()\n"
        f"main(['data', 'prepare', {str(docs)!r}, '--out', {str(tmp_path / 'prepared')!r}])\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_out_of_memory_is_recognised_in_each_of_torchs_wordings():
    """Linux (a real failed allocation), Windows' "not enough memory" and CUDA's wording; sizes in
    the unit that reads; torch's C++ prefix dropped; other errors are not taken for it."""
    import torch

    from scratchlm.cli import describe_out_of_memory, is_out_of_memory

    with pytest.raises(RuntimeError) as real:
        torch.empty(1 << 50, dtype=torch.uint8)
    assert is_out_of_memory(real.value)
    assert describe_out_of_memory(real.value) == "out of memory: an allocation of 1,048,576.0 GiB failed"
    windows = RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
                           "you tried to allocate 911360 bytes.")
    assert is_out_of_memory(windows)
    assert describe_out_of_memory(windows) == "out of memory: an allocation of 890.0 KiB failed"
    cuda = RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 79.2 GiB total)\nmore lines")
    assert is_out_of_memory(cuda)
    assert describe_out_of_memory(cuda) == "out of memory: CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 79.2 GiB total)"
    assert not is_out_of_memory(RuntimeError("Expected all tensors to be on the same device"))


@pytest.mark.parametrize("argv, expected", [
    (["tokenizer", "train", "x", "--vocab-size", "1e3", "--out", "t"],
     "scratchlm: error: tokenizer train: argument --vocab-size: invalid int value: '1e3' (see scratchlm tokenizer train --help)"),
    (["bogus"], "scratchlm: error: argument COMMAND: invalid choice: 'bogus'"),
    (["data", "prepare", "x", "--out", "y", "--bogus"],
     "scratchlm: error: data prepare: unrecognized arguments: --bogus (see scratchlm data prepare --help)"),
    (["pretrain", "--bogus", "1"], "scratchlm: error: pretrain: unrecognized arguments: --bogus 1 (see scratchlm pretrain --help)"),
    (["--bogus"], "scratchlm: error: unrecognized arguments: --bogus (see scratchlm --help)"),
    (["pretrain", "--debug"], "scratchlm: error: unrecognized arguments: --debug (scratchlm's own options go before "
     "the command) (see scratchlm --help)"),
    (["--bogus", "pretrain"], "scratchlm: error: unrecognized arguments: --bogus (scratchlm's own options go before "
     "the command) (see scratchlm --help)"),
])  # fmt: skip
def test_a_usage_mistake_is_one_error_line_like_any_other(argv, expected):
    """argparse printed its usage block and then `scratchlm tokenizer train: error: ...`. An unknown
    option pointed at `scratchlm --help`, which does not list a command's options: it names the
    command and its own --help, except for scratchlm's own options (`--debug`), which go before
    the command and are listed by `scratchlm --help`."""
    proc = subprocess.run([sys.executable, "-m", "scratchlm", *argv], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith(expected), proc.stderr


def test_an_output_path_that_is_not_utf8_is_one_line_before_any_work(tmp_path):
    """pyarrow's writer failed on it with a traceback, after the run had started."""
    source = tmp_path / "a.jsonl"
    source.write_text('{"text": "a short document of a few words"}\n')
    out = os.fsdecode(os.fsencode(str(tmp_path)) + b"/\xffout")
    proc = subprocess.run([sys.executable, "-m", "scratchlm", "data", "prepare", str(source), "--out", out],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.endswith("\\xffout: the path is not UTF-8; name the output in UTF-8\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]


def test_a_config_path_that_is_a_directory_or_empty_says_so(tmp_path, capsys):
    assert main(["pretrain", "--config", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"scratchlm: error: {tmp_path}: is a directory, not a file\n"
    assert main(["pretrain", "--config", ""]) == 2
    assert capsys.readouterr().err == "scratchlm: error: --config is empty; name a TOML file\n"


def test_error_text_is_one_line_with_control_characters_escaped():
    from scratchlm.errors import one_line

    assert one_line("x: cannot read: unknown type: \x0e\nPage header failed.\n") == (
        "x: cannot read: unknown type: \\x0e; Page header failed."
    )
    assert one_line("a\r\n\r\n  b\u2028c\x1bd\x7f") == "a; b; c\\x1bd\\x7f"
    assert one_line("tabs\tstay") == "tabs\tstay"


def test_a_library_error_spanning_lines_is_printed_as_one(tmp_path, capsys):
    """pyarrow's message for a damaged data page spans three lines and holds a raw control byte."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"text": [f"document number {i} " + "word " * 30 for i in range(2000)]}), good,
                   row_group_size=200)
    damaged = bytearray(good.read_bytes())
    for i in range(len(damaged) // 3, len(damaged) // 3 + 200):
        damaged[i] ^= 0xFF
    (tmp_path / "damaged.parquet").write_bytes(bytes(damaged))
    code = main(["data", "prepare", str(tmp_path / "damaged.parquet"), "--out", str(tmp_path / "out"),
                 "--workers", "1", "--no-filters"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("scratchlm: error: ") and "damaged.parquet" in err
    assert err.endswith("\n") and err.count("\n") == 1
    assert not any(ord(c) < 32 and c != "\n" or 0x7F <= ord(c) <= 0x9F for c in err)
    assert not (tmp_path / "out").exists()


def _stage_that_imports(monkeypatch, tmp_path, module_source: str, after_import) -> list[str]:
    """`data prepare` args whose stage (`prepare`, replaced) imports a module made of
    `module_source`, then calls `after_import()` and returns a finished stage's stats."""
    import importlib

    import scratchlm.data.prepare as prepare_module

    module = _importable_module(monkeypatch, tmp_path, module_source)

    def stage(config) -> dict:
        importlib.import_module(module)
        after_import()
        return {"documents_in": 1, "documents_out": 1, "bytes_in": 1, "bytes_out": 1, "seconds": 0.0, "removed": {}}

    monkeypatch.setattr(prepare_module, "prepare", stage)
    (tmp_path / "docs.txt").write_text("one document\n")
    return ["data", "prepare", str(tmp_path / "docs.txt"), "--out", str(tmp_path / "prepared")]




def test_a_sigterm_held_by_an_import_is_reported_when_the_stage_ends_first(tmp_path, monkeypatch, capsys):
    """The stage finished before the held-back signal was sent again: it used to exit 0, as if no
    SIGTERM had come (and a later re-send could hit whatever handler the caller had)."""
    import signal

    args = _stage_that_imports(monkeypatch, tmp_path, SWALLOWS_SIGTERM, lambda: None)
    assert main(args) == 128 + signal.SIGTERM
    assert "terminated (after the stage had finished" in capsys.readouterr().err


def test_a_held_sigterm_interrupts_a_blocking_read_after_the_import(tmp_path, monkeypatch, capsys):
    """The signal is sent again as a real signal: a read that waits for data is interrupted, as the
    first signal would have interrupted it (a simulated one waits for the read to return)."""
    import signal
    import threading
    import time

    read_end, write_end = os.pipe()
    unblock = threading.Timer(20.0, os.write, (write_end, b"x"))  # safety: the read ends anyway
    unblock.start()
    try:
        args = _stage_that_imports(monkeypatch, tmp_path, SWALLOWS_SIGTERM, lambda: os.read(read_end, 1))
        start = time.monotonic()
        assert main(args) == 128 + signal.SIGTERM
        assert time.monotonic() - start < 10
    finally:
        unblock.cancel()
        os.close(read_end)
        os.close(write_end)
    assert capsys.readouterr().err.strip() == "scratchlm: terminated"


def test_a_sigterm_is_held_by_an_import_for_a_bounded_time(tmp_path, monkeypatch, capsys):
    """An import that never ends must not keep SIGTERM from stopping the stage."""
    import signal
    import time

    from scratchlm.sigterm import MAX_HOLD_S

    slow = "import signal, time\nsignal.raise_signal(signal.SIGTERM)\nfor _ in range(3000):\n    time.sleep(0.01)\n"
    args = _stage_that_imports(monkeypatch, tmp_path, slow, lambda: None)
    start = time.monotonic()
    assert main(args) == 128 + signal.SIGTERM
    assert MAX_HOLD_S <= time.monotonic() - start < MAX_HOLD_S + 10  # not the import's 30 s
    assert capsys.readouterr().err.strip() == "scratchlm: terminated"


def test_sweep_lr_help_names_its_defaults(capsys):
    """`--lrs` and `--steps` have defaults (the grid, 200 steps) that --help left out."""
    from scratchlm.train.sweep import DEFAULT_GRID, DEFAULT_STEPS

    with pytest.raises(SystemExit):
        main(["sweep-lr", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default {','.join(f'{lr:g}' for lr in DEFAULT_GRID)})" in text
    assert f"steps per learning rate (default {DEFAULT_STEPS})" in text


def test_commands_print_to_a_standard_output_that_is_not_utf8(tmp_path):
    """Only `generate` escaped what a non-UTF-8 stdout (a Latin-1 locale, a Windows pipe) cannot
    encode: `tokenizer decode`, `data inspect` and the stages naming their --out ended in a
    UnicodeEncodeError traceback, exit 1, after the work was done; JSON got Python's escapes."""
    import json

    text = tmp_path / "corpus.txt"
    text.write_text("señor 漢字 😀 " * 40)
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}

    def cli(*argv: str) -> str:
        done = subprocess.run([sys.executable, "-m", "scratchlm", *argv], capture_output=True, env=env, timeout=120)
        assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr.decode()
        return done.stdout.decode("ascii")

    prepared, tok, tokens = tmp_path / "準備", tmp_path / "tok", tmp_path / "tokens"
    assert "\\u6e96" in cli("data", "prepare", str(text), "--out", str(prepared), "--set", "filters.enabled=false")
    cli("tokenizer", "train", str(text), "--vocab-size", "300", "--out", str(tok))
    ids = json.loads(cli("tokenizer", "encode", "--tokenizer", str(tok), "--text", "漢字"))
    assert cli("tokenizer", "decode", "--tokenizer", str(tok), *map(str, ids)) == "\\u6f22\\u5b57\n"
    cli("data", "tokenize", str(prepared), "--tokenizer", str(tok), "--out", str(tokens))
    assert "\\U0001f600" in cli("data", "inspect", str(tokens))
    info = json.loads(cli("data", "inspect", str(tokens), "--json"))  # JSON's own \u escapes
    assert "漢字" in info["splits"]["train"]["sample"]
    stats = json.loads(cli("tokenizer", "stats", "--tokenizer", str(tok), str(text), "--json"))
    assert stats["documents"] == 1

"""The CLI front: one-line errors with exit code 2, tracebacks only with --debug."""

from __future__ import annotations

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

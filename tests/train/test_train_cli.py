"""`scratchlm pretrain` and `scratchlm sweep-lr` from the command line."""

from __future__ import annotations

import json

import pytest
from train_core_helpers import build_tokens_dir, events, read_rows, tiny_config, write_toml

from scratchlm.cli import main


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    return build_tokens_dir(tmp_path_factory.mktemp("cli-data"))


def test_pretrain_with_overrides_then_resume(tokens, tmp_path, capsys):
    out = tmp_path / "run"
    toml = write_toml(tiny_config(tokens, out, train={"max_steps": 3}), tmp_path / "run.toml")
    assert main(["pretrain", "--config", str(toml), "--set", "train.max_steps=2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 2
    assert main(["pretrain", "--config", str(toml), "--resume"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 3
    assert events(read_rows(out), "resume")[0]["step"] == 2


def test_pretrain_config_mistakes_are_one_line_errors(tokens, tmp_path, capsys):
    toml = write_toml(tiny_config(tokens, tmp_path / "run"), tmp_path / "run.toml")
    assert main(["pretrain", "--config", str(toml), "--set", "train.learning_rate=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'train.learning_rate'" in err and len(err.strip().splitlines()) == 1
    assert main(["pretrain", "--config", str(toml), "--set", "data.tokens=nowhere"]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_sweep_lr_reports_the_best(tokens, tmp_path, capsys):
    toml = write_toml(tiny_config(tokens, tmp_path / "sweep"), tmp_path / "sweep.toml")
    assert main(["sweep-lr", "--config", str(toml), "--lrs", "1e-6,1e-2", "--steps", "8"]) == 0
    out = capsys.readouterr().out
    assert "best learning rate: 0.01" in out
    report = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [r["lr"] for r in report["results"]] == [1e-6, 1e-2] and report["best_lr"] == 1e-2

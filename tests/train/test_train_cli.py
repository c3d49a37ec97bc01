"""`scratchlm pretrain` and `scratchlm sweep-lr` from the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_core_helpers import build_tokens_dir, events, read_rows, tiny_config, write_toml

from scratchlm.cli import main
from scratchlm.train import trainer as trainer_module
from scratchlm.train.trainer import PretrainRun


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
    # the run folder is a model directory for generation: its latest checkpoint, with its tokenizer
    rows = []
    for model in (out, out / "checkpoints" / "step-000003"):
        argv = ["generate", "--model", str(model), "the", "--max-new-tokens", "4", "--seed", "0", "--jsonl",
                "--ignore-eos"]
        assert main(argv) == 0
        row = json.loads(capsys.readouterr().out)
        row.pop("seconds")
        rows.append(row)
    assert rows[0] == rows[1]  # the run folder is its latest checkpoint
    assert rows[0]["prompt"] == "the" and rows[0]["completion_tokens"] == 4 and rows[0]["finish_reason"] == "length"


def test_pretrain_config_mistakes_are_one_line_errors(tokens, tmp_path, capsys):
    toml = write_toml(tiny_config(tokens, tmp_path / "run"), tmp_path / "run.toml")
    assert main(["pretrain", "--config", str(toml), "--set", "train.learning_rate=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'train.learning_rate'" in err and len(err.strip().splitlines()) == 1
    assert main(["pretrain", "--config", str(toml), "--set", "data.tokens=nowhere"]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_a_finished_run_resumed_reports_its_last_loss(tokens, tmp_path, capsys):
    """With nothing left to train, the summary said final_loss null, and so did a resumed sweep's
    report for a rate that had finished before the sweep was killed."""
    toml = write_toml(tiny_config(tokens, tmp_path / "run", train={"max_steps": 3}), tmp_path / "run.toml")
    assert main(["pretrain", "--config", str(toml)]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["pretrain", "--config", str(toml), "--resume"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert first["final_loss"] is not None and again["final_loss"] == first["final_loss"]


def test_a_file_named_checkpoints_in_the_run_folder_is_refused_before_training(tokens, tmp_path, capsys):
    """It used to be found at the first save, after the training that save was to keep."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoints").write_text("notes")
    toml = write_toml(tiny_config(tokens, out, train={"max_steps": 4, "checkpoint_every": 4}), tmp_path / "run.toml")
    assert main(["pretrain", "--config", str(toml)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a file named checkpoints" in err[0]
    assert (out / "checkpoints").read_text() == "notes" and not (out / "metrics.jsonl").exists()


def test_a_model_too_large_for_memory_is_a_one_line_error(tokens, tmp_path, capsys):
    """torch's failed allocation used to end the command with a traceback; now the training state
    is checked against the free memory before the model is built."""
    toml = write_toml(tiny_config(tokens, tmp_path / "run"), tmp_path / "run.toml")
    # the largest size a config may name (model.MAX_SIZE): SwiGLU's 2 × (2³¹ − 1) × 4,096 floats
    big = ["--set", "model.d_model=4096", "--set", f"model.d_ff={2**31 - 1}"]
    assert main(["pretrain", "--config", str(toml), *big]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("scratchlm: error: the model has 26,388,347,486,208 parameters") and "available" in err[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_layer_count_too_large_for_memory_is_refused_before_the_model_is_built(tokens, tmp_path, capsys):
    """Each layer alone fits, so building them used to fill memory for minutes before the kernel
    killed the process without a word."""
    toml = write_toml(tiny_config(tokens, tmp_path / "run"), tmp_path / "run.toml")
    start = time.monotonic()
    assert main(["pretrain", "--config", str(toml), "--set", "model.n_layer=10000000"]) == 2
    assert time.monotonic() - start < 30
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "parameters" in err[0] and "make the model smaller" in err[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_sweep_lr_reports_the_best(tokens, tmp_path, capsys):
    toml = write_toml(tiny_config(tokens, tmp_path / "sweep"), tmp_path / "sweep.toml")
    assert main(["sweep-lr", "--config", str(toml), "--lrs", "1e-6,1e-2", "--steps", "8"]) == 0
    out = capsys.readouterr().out
    assert "best learning rate: 0.01" in out
    report = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [r["lr"] for r in report["results"]] == [1e-6, 1e-2] and report["best_lr"] == 1e-2


def test_weights_that_an_update_broke_stop_the_run_as_diverged_and_the_sweep_goes_on(tokens, tmp_path, capsys):
    """An update can overflow the weights although its loss was finite; the evaluation after it
    met NaN logits in its sample and ended the run with a model error, no diagnosis, and ended a
    whole `sweep-lr` (its later rates never ran, and a resume died the same way)."""
    toml = write_toml(tiny_config(tokens, tmp_path / "sweep"), tmp_path / "sweep.toml")
    assert main(["sweep-lr", "--config", str(toml), "--lrs", "1e-2,1e7,3e-2", "--steps", "2"]) == 0
    capsys.readouterr()
    report = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [r["lr"] for r in report["results"]] == [1e-2, 1e7, 3e-2] and report["best_lr"] in (1e-2, 3e-2)
    diverged = report["results"][1]
    assert diverged["diverged"] and "weights are no longer finite" in diverged["reason"]
    out = tmp_path / "run"
    toml = write_toml(tiny_config(tokens, out, train={"lr": 1e7, "eval_every": 2}), tmp_path / "run.toml")
    assert main(["pretrain", "--config", str(toml)]) == 2
    err = capsys.readouterr().err
    assert "weights are no longer finite after step 2" in err and "lower the learning rate" in err
    assert [e["kind"] for e in events(read_rows(out), "diagnosis")] == ["nonfinite_weights"]
    assert not (out / "checkpoints").exists()  # broken weights are worth no checkpoint


def start_cli(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "scratchlm", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def wait_for_train_row(metrics: Path, step: int, child: subprocess.Popen, timeout: float = 60) -> None:
    """Until `metrics` holds the train row of `step`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.is_file():
            for line in metrics.read_text().splitlines():
                row = json.loads(line) if line.endswith("}") else {}
                if "loss" in row and "event" not in row and row["step"] >= step:
                    return
        if child.poll() is not None:
            pytest.fail(f"the command ended before it could be interrupted: {child.communicate()}")
        time.sleep(0.02)
    pytest.fail(f"no train row for step {step} in {metrics}")


def test_signal_during_the_final_evaluation_stops_it_and_saves(tmp_path):
    out = tmp_path / "run"
    # A long final evaluation (seconds) so the signal lands in it, not before or after: a val split
    # of thousands of windows (an evaluation never counts one twice), and a wider model.
    (tmp_path / "data").mkdir()
    tokens = build_tokens_dir(tmp_path / "data", val_every=2, documents=3000)
    cfg = tiny_config(
        tokens,
        out,
        model={"n_layer": 4, "d_model": 256, "d_ff": 512},
        train={"max_steps": 3, "eval_batches": 400, "eval_batch_size": 16, "sample_tokens": 0},
    )
    child = start_cli(["pretrain", "--config", str(write_toml(cfg, tmp_path / "run.toml"))])
    wait_for_train_row(out / "metrics.jsonl", 3, child)
    os.kill(child.pid, signal.SIGTERM)
    stdout, stderr = child.communicate(timeout=60)
    rows = read_rows(out)
    assert [(e["step"], e["reason"]) for e in events(rows, "checkpoint")] == [(3, "signal")], stderr
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-000003"
    assert not [r for r in rows if "val_loss" in r]  # cut short, and nothing half-measured recorded
    assert child.returncode == 143 and json.loads(stdout)["stopped"] == "SIGTERM"


def signals_after_step(monkeypatch, step: int, *signums: int, pause: float = 0.0) -> None:
    """Send `signums` (real signals, to this process) once the run has applied `step` updates,
    `pause` seconds apart."""
    real_step = PretrainRun._step

    def step_then_signals(self):
        outcome = real_step(self)
        if self.state.step == step and outcome["applied"]:
            for i, signum in enumerate(signums):
                if i and pause:
                    time.sleep(pause)
                os.kill(os.getpid(), signum)
        return outcome

    monkeypatch.setattr(PretrainRun, "_step", step_then_signals)


def ctrl_c_after_step(monkeypatch, step: int) -> None:
    """Press Ctrl-C (a real SIGINT to this process) once the run has applied `step` updates."""
    signals_after_step(monkeypatch, step, signal.SIGINT)


def test_pretrain_stopped_by_sigint_exits_130_after_saving(tokens, tmp_path, capsys, monkeypatch):
    ctrl_c_after_step(monkeypatch, 2)
    out = tmp_path / "run"
    toml = write_toml(tiny_config(tokens, out, train={"max_steps": 6}), tmp_path / "run.toml")
    assert main(["pretrain", "--config", str(toml)]) == 130
    assert json.loads(capsys.readouterr().out)["stopped"] == "SIGINT"
    assert [(e["step"], e["reason"]) for e in events(read_rows(out), "checkpoint")] == [(2, "signal")]


def test_a_second_sigterm_stops_at_once_with_sigterms_exit_code(tokens, tmp_path, monkeypatch):
    """The first signal asks for a checkpoint; a second one ends the run at once, and a scheduler
    that sent SIGTERM twice must still see 143, not Ctrl-C's 130."""
    monkeypatch.setattr(trainer_module, "REPEATED_SIGNAL_S", 0.0)  # every repeat is a second signal
    signals_after_step(monkeypatch, 2, signal.SIGTERM, signal.SIGTERM)
    out = tmp_path / "run"
    toml = write_toml(tiny_config(tokens, out, train={"max_steps": 6}), tmp_path / "run.toml")
    assert main(["pretrain", "--config", str(toml)]) == 143
    assert events(read_rows(out), "checkpoint") == []  # at once: the first signal's checkpoint was not made


def test_a_sigterm_delivered_twice_at_once_is_one_stop_that_saves_a_checkpoint(tokens, tmp_path, capsys, monkeypatch):
    """A torchrun worker's parent-death SIGTERM comes once per thread of the dying launcher, ms
    apart: taken for a second signal, it ended the run before its checkpoint."""
    signals_after_step(monkeypatch, 2, signal.SIGTERM, signal.SIGTERM, pause=0.05)  # the first handled first
    out = tmp_path / "run"
    toml = write_toml(tiny_config(tokens, out, train={"max_steps": 6}), tmp_path / "run.toml")
    assert main(["pretrain", "--config", str(toml)]) == 143
    assert json.loads(capsys.readouterr().out)["stopped"] == "SIGTERM"
    assert [(e["step"], e["reason"]) for e in events(read_rows(out), "checkpoint")] == [(2, "signal")]


def test_ctrl_c_stops_the_sweep_without_a_false_result(tokens, tmp_path, capsys, monkeypatch):
    ctrl_c_after_step(monkeypatch, 2)
    out = tmp_path / "sweep"
    toml = write_toml(tiny_config(tokens, out), tmp_path / "sweep.toml")
    assert main(["sweep-lr", "--config", str(toml), "--lrs", "1e-3,1e-2", "--steps", "8"]) == 130
    assert "stopped by SIGINT" in capsys.readouterr().err
    assert not (out / "lr-0.01").exists()  # the next rate was not started
    report = json.loads((out / "sweep.json").read_text())
    assert report["stopped"] == "SIGINT" and report["results"] == [] and report["best_lr"] is None


def test_an_interrupted_sweep_resumes_its_interrupted_rate_and_keeps_the_finished_ones(
    tokens, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "sweep"
    toml = str(write_toml(tiny_config(tokens, out), tmp_path / "sweep.toml"))
    sweep = ["sweep-lr", "--config", toml, "--lrs", "1e-3,1e-2", "--steps", "8"]
    ctrl_c_after_step(monkeypatch, 2)
    assert main(sweep) == 130
    monkeypatch.undo()
    assert main(sweep) == 2  # the rate's folder holds a checkpoint: continuing is asked for, not assumed
    assert "pass --resume" in capsys.readouterr().err
    assert main([*sweep, "--resume"]) == 0
    rows = read_rows(out / "lr-0.001")
    assert [e["step"] for e in events(rows, "resume")] == [2]  # continued, not restarted
    first = json.loads((out / "sweep.json").read_text())
    assert [r["lr"] for r in first["results"]] == [1e-3, 1e-2] and first["finished"] and first["best_lr"] is not None
    assert main([*sweep, "--resume"]) == 0  # a finished sweep resumed: its results, no run again
    assert json.loads((out / "sweep.json").read_text())["results"] == first["results"]
    assert len(events(read_rows(out / "lr-0.001"), "resume")) == 1
    capsys.readouterr()
    assert main(["sweep-lr", "--config", toml, "--lrs", "1e-3,1e-2", "--steps", "9", "--resume"]) == 2
    assert "resume it with --steps 8" in capsys.readouterr().err
    assert main([*sweep, "--resume", "--set", "model.d_model=64"]) == 2  # another model: not comparable
    assert "other settings (model.d_model)" in capsys.readouterr().err
    # another grid: the rates already run stay in the report, and only the new one trains
    assert main(["sweep-lr", "--config", toml, "--lrs", "1e-2,3e-3", "--steps", "8", "--resume"]) == 0
    report = json.loads((out / "sweep.json").read_text())
    assert [r["lr"] for r in report["results"]] == [1e-3, 1e-2, 3e-3] and report["finished"]
    assert report["best_lr"] == min(report["results"], key=lambda r: r["val_loss"])["lr"]
    assert len(events(read_rows(out / "lr-0.001"), "resume")) == 1


def test_a_sweep_started_over_an_earlier_sweeps_report_is_refused_before_training(tokens, tmp_path, capsys):
    """Without --resume, a sweep into a folder holding a report trained its first rate and then
    replaced that report with its own: the earlier rates' results were gone from sweep.json (and a
    rate of both grids then failed for its checkpoints, after the others had trained)."""
    out = tmp_path / "sweep"
    toml = str(write_toml(tiny_config(tokens, out), tmp_path / "sweep.toml"))
    assert main(["sweep-lr", "--config", toml, "--lrs", "1e-2", "--steps", "2"]) == 0
    before = (out / "sweep.json").read_bytes()
    capsys.readouterr()
    assert main(["sweep-lr", "--config", toml, "--lrs", "3e-3,1e-2", "--steps", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds the report of an earlier sweep" in err[0] and "--resume" in err[0]
    assert (out / "sweep.json").read_bytes() == before and not (out / "lr-0.003").exists()


@pytest.mark.parametrize("report", [
    '{"steps": 8, "results": [{"lr": 0.01}]}', "[1, 2", '{"results": []}',
    '{"steps": 8, "results": [], "settings": [1]}', '{"steps": 8, "results": [], "settings": {"train": 3}}',
])
def test_resuming_a_sweep_from_a_damaged_report_is_a_one_line_error(tokens, tmp_path, capsys, report):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep.json").write_text(report)
    toml = str(write_toml(tiny_config(tokens, out), tmp_path / "sweep.toml"))
    assert main(["sweep-lr", "--config", toml, "--lrs", "1e-2", "--steps", "8", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a sweep report this sweep can resume" in err[0]
    assert not (out / "lr-0.01").exists()  # refused before any training


def test_a_rate_that_diverges_is_recorded_and_the_sweep_goes_on(tokens, tmp_path, capsys):
    cfg = tiny_config(tokens, tmp_path / "sweep", monitor={"max_nonfinite": 1})
    toml = write_toml(cfg, tmp_path / "sweep.toml")
    assert main(["sweep-lr", "--config", str(toml), "--lrs", "1e6,1e-2", "--steps", "8"]) == 0
    report = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    diverged, trained = report["results"]
    assert diverged["lr"] == 1e6 and diverged["diverged"] and "non-finite" in diverged["reason"]
    assert trained["lr"] == 1e-2 and not trained["diverged"] and report["best_lr"] == 1e-2
    assert "best learning rate: 0.01" in capsys.readouterr().out


def test_a_sweep_killed_between_rates_leaves_a_partial_report(tokens, tmp_path, monkeypatch):
    """Between rates no run has signal handlers installed, so SIGTERM ends the process at once:
    the report of the rates that finished must already be on disk."""
    from scratchlm.train import trainer
    from scratchlm.train.sweep import sweep_lr

    def train_then_die(cfg, resume=False):
        if cfg.train.lr == 1e-2:
            raise SystemExit(143)  # as the process dies, for the sweep
        return {"stopped": None, "val_loss": 3.0, "val_bpb": 1.5, "final_loss": 3.1}

    monkeypatch.setattr(trainer, "train", train_then_die)
    out = tmp_path / "sweep"
    with pytest.raises(SystemExit):
        sweep_lr(tiny_config(tokens, out), [1e-3, 1e-2], steps=2)
    report = json.loads((out / "sweep.json").read_text())
    assert [r["lr"] for r in report["results"]] == [1e-3]
    assert report["finished"] is False and report["best_lr"] is None


def test_a_run_without_a_terminal_logs_its_progress_as_lines(tokens, tmp_path, capsys):
    """stderr captured (as under nohup, `| tee` or a cluster's job log): no bar, so every logged
    training row and every evaluation is a line, with the same figures as metrics.jsonl."""
    out = tmp_path / "run"
    cfg = tiny_config(tokens, out, train={"max_steps": 6, "log_every": 3, "eval_every": 3, "progress_bar": True})
    assert main(["pretrain", "--config", str(write_toml(cfg, tmp_path / "run.toml"))]) == 0
    err = capsys.readouterr().err.splitlines()
    rows = read_rows(out)
    train_rows = [r for r in rows if "loss" in r and "event" not in r]
    eval_rows = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in train_rows] == [1, 3, 6] and [r["step"] for r in eval_rows] == [3, 6]
    train_lines = [line for line in err if " loss " in line]
    assert len(train_lines) == 3
    for row, line in zip(train_rows, train_lines):
        assert line.startswith(f"scratchlm: step {row['step']}/6  loss {row['loss']:.4f}  lr {row['lr']:.2e}")
    eval_lines = [line for line in err if "val_loss" in line]
    assert [line.split("  ")[0] for line in eval_lines] == ["scratchlm: step 3", "scratchlm: step 6"]
    for row, line in zip(eval_rows, eval_lines):
        assert f"val_loss {row['val_loss']:.4f}  val_bpb {row['val_bpb']:.4f}" in line
        assert "sample " + json.dumps(row["sample"][:160], ensure_ascii=False) in line


def test_a_run_or_sweep_into_its_tokens_or_nowhere_is_a_one_line_error(tokens, tmp_path, capsys):
    """`--set train.out=` wrote the run into the current directory, and a train.out at the tokens
    put checkpoints where the next `data tokenize --out` deletes them."""
    toml = str(write_toml(tiny_config(tokens, tmp_path / "run"), tmp_path / "run.toml"))
    before = sorted(p.relative_to(tokens) for p in tokens.rglob("*"))
    for command in (["pretrain"], ["sweep-lr", "--lrs", "1e-2", "--steps", "2"]):
        for out, message in [("", "train.out is empty"), (str(tokens), f"train.out = {tokens}: is the tokens dir"),
                             (f"{tokens}/run", f"train.out = {tokens}/run: is inside the tokens dir")]:
            assert main([*command, "--config", toml, "--set", f"train.out={out}"]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith(f"scratchlm: error: {message}"), err
    assert sorted(p.relative_to(tokens) for p in tokens.rglob("*")) == before


def test_sweep_lr_needs_no_budget_in_the_config(tokens, tmp_path, capsys):
    """--steps is each rate's budget; a config without one was refused for lacking it."""
    out = tmp_path / "sweep"
    toml = write_toml(tiny_config(tokens, out), tmp_path / "sweep.toml")
    toml.write_text(toml.read_text().replace("max_steps = 12", "max_steps = 0"))
    assert main(["sweep-lr", "--config", str(toml), "--lrs", "1e-2", "--steps", "3"]) == 0
    assert "best learning rate: 0.01" in capsys.readouterr().out
    assert [r["step"] for r in read_rows(out / "lr-0.01") if "loss" in r] == [1, 2, 3]


def test_a_sweep_resumes_on_the_same_tokens_dir_however_it_is_spelled(tokens, tmp_path, capsys):
    """`tokens/` against `tokens`: the trainer's resume takes them for one directory, the sweep's
    check refused them as other settings."""
    out = tmp_path / "sweep"
    toml = str(write_toml(tiny_config(tokens, out), tmp_path / "sweep.toml"))
    sweep = ["sweep-lr", "--config", toml, "--steps", "2", "--resume"]
    assert main([*sweep, "--lrs", "1e-2"]) == 0
    assert main([*sweep, "--lrs", "1e-2,3e-3", "--set", f"data.tokens={tokens}/"]) == 0
    assert [r["lr"] for r in json.loads((out / "sweep.json").read_text())["results"]] == [1e-2, 3e-3]
    (tmp_path / "other").mkdir()
    other = build_tokens_dir(tmp_path / "other")
    capsys.readouterr()
    assert main([*sweep, "--lrs", "1e-2", "--set", f"data.tokens={other}"]) == 2  # another directory still differs
    assert "other settings (data.tokens)" in capsys.readouterr().err


def test_a_sweep_resumes_whatever_its_runs_set_themselves_or_only_show(tokens, tmp_path, capsys):
    """Each rate's run sets its own budget, evaluation, checkpoints and (cut) warmup, and the
    display settings change no result: none of them may stop a sweep from resuming."""
    out = tmp_path / "sweep"
    toml = str(write_toml(tiny_config(tokens, out), tmp_path / "sweep.toml"))
    sweep = ["sweep-lr", "--config", toml, "--steps", "2", "--resume"]
    assert main([*sweep, "--lrs", "1e-2"]) == 0
    first = json.loads((out / "sweep.json").read_text())["results"]
    changed = ["train.max_steps=50", "train.max_tokens=99999", "train.max_seconds=9.5", "train.eval_every=7",
               "train.checkpoint_every=3", "train.checkpoint_minutes=2", "train.keep_last=9",
               "train.warmup_steps=5", "train.progress_bar=false", "train.keep_host_memory=false",
               "train.log_every=4"]  # warmup 5 and the config's 2 are both cut to 1 for 2 steps
    assert main([*sweep, "--lrs", "1e-2,3e-3", *(a for s in changed for a in ("--set", s))]) == 0
    report = json.loads((out / "sweep.json").read_text())
    assert report["results"][0] == first[0] and [r["lr"] for r in report["results"]] == [1e-2, 3e-3]
    capsys.readouterr()
    for setting, key in [("train.warmup_steps=0", "train.warmup_steps"), ("train.seed=8", "train.seed")]:
        assert main([*sweep, "--lrs", "1e-2", "--set", setting]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"other settings ({key})" in err[0]


def test_a_resumed_sweeps_stop_counts_todays_rates_only(tokens, tmp_path, capsys, monkeypatch):
    """A report keeps the rates an earlier grid finished; the stop message counts those of the
    grid it was given (it said "1 of 1" when the one rate asked for had not finished)."""
    out = tmp_path / "sweep"
    toml = write_toml(tiny_config(tokens, out), tmp_path / "sweep.toml")
    assert main(["sweep-lr", "--config", str(toml), "--lrs", "1e-3", "--steps", "4"]) == 0
    ctrl_c_after_step(monkeypatch, 2)
    assert main(["sweep-lr", "--config", str(toml), "--lrs", "1e-2", "--steps", "4", "--resume"]) == 130
    assert "stopped by SIGINT after 0 of 1 learning rates" in capsys.readouterr().err
    assert [r["lr"] for r in json.loads((out / "sweep.json").read_text())["results"]] == [1e-3]

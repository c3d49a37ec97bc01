"""Exact resumption: a run killed with SIGKILL (or stopped by SIGTERM) and resumed from `latest`
produces, on CPU in fp32, bit-for-bit the losses and weights of a run never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_core_helpers import build_tokens_dir, events, read_rows, tiny_config, train_losses, write_toml

from scratchlm.errors import CheckpointError, ConfigError
from scratchlm.train.checkpoint import find_latest
from scratchlm.train.trainer import train

STEPS = 40
# The child trains with the same thread count as this process, so float sums are ordered alike.
CHILD = """
import sys, torch
torch.set_num_threads(int(sys.argv[2]))
from scratchlm.train.config import load_pretrain_config
from scratchlm.train.trainer import train
print(train(load_pretrain_config(sys.argv[1]))["stopped"], flush=True)
"""


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    return build_tokens_dir(tmp_path_factory.mktemp("resume-data"))


def run_config(tokens: Path, out: Path):
    # Wide enough that a step takes a few milliseconds, so the kill lands mid-run.
    return tiny_config(
        tokens,
        out,
        model={"n_layer": 2, "d_model": 64, "d_ff": 128},
        train={"max_steps": STEPS, "checkpoint_every": 3, "keep_last": 2, "eval_every": 10},
    )


def start_child(cfg, tmp_path: Path) -> subprocess.Popen:
    toml = write_toml(cfg, tmp_path / f"{Path(cfg.train.out).name}.toml")
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(toml), str(torch.get_num_threads())],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_checkpoint(ckpt_root: Path, min_step: int, child: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        latest = find_latest(ckpt_root)
        if latest is not None and int(latest.name.split("-")[1]) >= min_step:
            return
        if child.poll() is not None:
            pytest.fail(f"the run ended before it could be interrupted: {child.communicate()}")
        time.sleep(0.005)
    pytest.fail("no checkpoint appeared in time")


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "checkpoints" / f"step-{STEPS:06d}" / "model.safetensors"))


@pytest.fixture(scope="module")
def reference(tokens, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    train(run_config(tokens, out))
    return out


def assert_same_run(out: Path, reference: Path) -> None:
    rows = read_rows(out)
    resumed = train_losses(rows, after_event="resume")
    expected = train_losses(read_rows(reference))
    assert resumed, "the resumed run logged no steps"
    assert max(resumed) == STEPS
    for step, loss in resumed.items():
        assert loss == expected[step], f"step {step}: {loss!r} != {expected[step]!r}"
    ref_vals = {r["step"]: r["val_loss"] for r in read_rows(reference) if "val_loss" in r}
    for r in rows[[i for i, r in enumerate(rows) if r.get("event") == "resume"][-1] :]:
        if "val_loss" in r:
            assert r["val_loss"] == ref_vals[r["step"]]
    ref_w, got_w = final_weights(reference), final_weights(out)
    assert ref_w.keys() == got_w.keys()
    assert all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)


def interrupted_run(tokens: Path, tmp_path: Path, name: str, after_step: int, sig: signal.Signals):
    """Start the run in a child process and send it `sig` once a checkpoint at `after_step` exists."""
    out = tmp_path / name
    cfg = run_config(tokens, out)
    child = start_child(cfg, tmp_path)
    wait_for_checkpoint(out / "checkpoints", after_step, child)
    os.kill(child.pid, sig)
    return cfg, out, child


def test_sigkill_mid_run_then_resume_is_bitwise_identical(tokens, reference, tmp_path):
    cfg, out, child = interrupted_run(tokens, tmp_path, "killed", 6, signal.SIGKILL)
    child.communicate()
    assert child.returncode == -signal.SIGKILL
    killed_at = find_latest(out / "checkpoints")
    assert killed_at is not None and int(killed_at.name.split("-")[1]) < STEPS
    summary = train(cfg, resume=True)
    assert summary["steps"] == STEPS
    assert events(read_rows(out), "resume")[-1]["checkpoint"] == killed_at.name
    assert_same_run(out, reference)


def test_sigterm_saves_a_checkpoint_and_resume_matches(tokens, reference, tmp_path):
    cfg, out, child = interrupted_run(tokens, tmp_path, "terminated", 3, signal.SIGTERM)
    stdout, stderr = child.communicate(timeout=60)
    assert child.returncode == 0, stderr
    assert stdout.strip().splitlines()[-1] == "SIGTERM"
    # The stopped step is saved once: by the signal, or by its interval save if the signal came
    # right after that.
    last = events(read_rows(out), "checkpoint")[-1]
    assert last["reason"] in ("signal", "interval")
    assert find_latest(out / "checkpoints").name == f"step-{last['step']:06d}"
    train(cfg, resume=True)
    assert_same_run(out, reference)


def test_a_second_run_into_a_train_out_in_use_is_refused(tokens, tmp_path):
    """A second `pretrain --resume` (a job started twice) into a run still training resumed from
    its checkpoint, truncated its log, and pruned its newer checkpoints as a dead run's future."""
    out = tmp_path / "busy"
    cfg = tiny_config(tokens, out, train={"max_steps": 100_000, "checkpoint_every": 3, "sample_tokens": 0})
    child = start_child(cfg, tmp_path)
    try:
        wait_for_checkpoint(out / "checkpoints", 3, child)
        second = tiny_config(tokens, out, train={"max_steps": 4, "checkpoint_every": 3, "sample_tokens": 0})
        with pytest.raises(ConfigError, match="another pretraining run is writing there") as caught:
            train(second, resume=True)
        assert "\n" not in str(caught.value)
        assert child.poll() is None, "the first run must go on untouched"
    finally:
        child.kill()
        child.communicate()
    train(second, resume=True)  # the kernel dropped the killed run's lock


def test_resume_with_another_optimizer_is_a_checkpoint_error(tokens, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tokens, out, train={"max_steps": 2}))
    with pytest.raises(CheckpointError, match="train.optimizer = 'adamw'.*'muon'"):
        train(tiny_config(tokens, out, train={"max_steps": 4, "optimizer": "muon"}), resume=True)


def test_resume_on_tokens_of_another_tokenizer_names_the_tokenizer_not_the_model(tokens, tmp_path):
    """Another vocabulary changes the model config too; the message must point at the real cause."""
    out = tmp_path / "run"
    train(tiny_config(tokens, out, train={"max_steps": 2, "checkpoint_every": 2, "sample_tokens": 0}))
    (tmp_path / "other").mkdir()
    other = build_tokens_dir(tmp_path / "other", vocab_size=360)
    with pytest.raises(CheckpointError, match="made with another tokenizer than the tokens dir's"):
        train(tiny_config(other, out, train={"max_steps": 4, "sample_tokens": 0}), resume=True)


def test_resume_from_an_optimizer_state_that_does_not_fit_is_a_checkpoint_error(tokens, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tokens, out, train={"max_steps": 2}))
    latest = find_latest(out / "checkpoints")
    state_file = latest / "train_state.json"
    state = json.loads(state_file.read_text())
    del state["config"]  # as an older checkpoint, which does not name its optimizer
    state_file.write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=r"optimizer\.pt: does not fit") as caught:
        train(tiny_config(tokens, out, train={"max_steps": 4, "optimizer": "muon"}), resume=True)
    assert "\n" not in str(caught.value)


def test_a_checkpoint_config_without_a_field_resumes_with_that_fields_default(tokens, tmp_path):
    """A checkpoint saved before a model field existed names no value for it; `load_model` reads
    the default then, and a resume must compare the same way rather than refuse '<field>: None in
    the checkpoint'."""
    out = tmp_path / "run"
    train(tiny_config(tokens, out, train={"max_steps": 2, "checkpoint_every": 2, "sample_tokens": 0}))
    config_file = find_latest(out / "checkpoints") / "config.json"
    config = json.loads(config_file.read_text())
    del config["init_std"], config["logit_softcap"]  # both at their defaults in this run
    config_file.write_text(json.dumps(config))
    summary = train(tiny_config(tokens, out, train={"max_steps": 4, "sample_tokens": 0}), resume=True)
    assert summary["steps"] == 4
    assert events(read_rows(out), "resume")[-1]["checkpoint"] == "step-000002"


def test_a_checkpoint_config_that_differs_still_names_the_field(tokens, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tokens, out, train={"max_steps": 2, "checkpoint_every": 2, "sample_tokens": 0}))
    config_file = find_latest(out / "checkpoints") / "config.json"
    config = json.loads(config_file.read_text())
    config["qk_norm"] = not config["qk_norm"]
    config_file.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"differs from this run's \[model\] section \(qk_norm: "):
        train(tiny_config(tokens, out, train={"max_steps": 4, "sample_tokens": 0}), resume=True)


def test_resume_past_a_step_dir_left_incomplete_by_a_copy(tokens, tmp_path):
    """An interrupted copy of a run (train_state.json is the last file written) leaves the newest
    step dir without it: the resumed run starts from the one before and replaces it."""
    out = tmp_path / "run"
    cfg = tiny_config(tokens, out, train={"max_steps": 4, "checkpoint_every": 2, "sample_tokens": 0})
    train(cfg)
    root = out / "checkpoints"
    (root / "step-000004" / "train_state.json").unlink()
    (root / "latest").unlink()
    summary = train(cfg, resume=True)
    assert summary["steps"] == 4 and find_latest(root).name == "step-000004"
    assert events(read_rows(out), "resume")[-1]["checkpoint"] == "step-000002"


def test_rng_states_missing_a_generator_are_a_checkpoint_error(tokens, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tokens, out, train={"max_steps": 2, "sample_tokens": 0}))
    torch.save({"rank0": {"torch": torch.get_rng_state()}}, find_latest(out / "checkpoints") / "rng.pt")
    with pytest.raises(CheckpointError, match=r"rng\.pt: holds RNG states that cannot be restored"):
        train(tiny_config(tokens, out, train={"max_steps": 4, "sample_tokens": 0}), resume=True)


def test_a_latest_checkpoint_left_incomplete_is_named_and_passed_over(tokens, tmp_path, capsys):
    """`latest` naming a step dir without optimizer.pt resumed from the one before in silence."""
    out = tmp_path / "run"
    cfg = tiny_config(tokens, out, train={"max_steps": 4, "checkpoint_every": 2, "sample_tokens": 0})
    train(cfg)
    (out / "checkpoints" / "step-000004" / "optimizer.pt").unlink()
    capsys.readouterr()
    train(cfg, resume=True)
    err = capsys.readouterr().err
    assert "step-000004 is incomplete (no optimizer.pt); resuming from step-000002, the newest complete one" in err


@pytest.mark.parametrize("damage", [
    lambda d: (d / "train_state.json").write_text("{not json"),
    lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:1000]),
])  # fmt: skip
def test_a_damaged_checkpoint_says_how_to_resume_from_an_earlier_one(tokens, tmp_path, damage):
    """optimizer.pt and rng.pt errors said it; damaged weights or state gave no advice."""
    out = tmp_path / "run"
    cfg = tiny_config(tokens, out, train={"max_steps": 4, "checkpoint_every": 2, "sample_tokens": 0})
    train(cfg)
    damage(out / "checkpoints" / "step-000004")
    with pytest.raises(CheckpointError, match="move this checkpoint directory away to resume from an earlier one") as caught:
        train(cfg, resume=True)
    assert "\n" not in str(caught.value)


def _edit_state(edit):
    def damage(step_dir: Path) -> None:
        state = json.loads((step_dir / "train_state.json").read_text())
        edit(state)
        (step_dir / "train_state.json").write_text(json.dumps(state))
    return damage


@pytest.mark.parametrize(("damage", "message"), [
    (_edit_state(lambda s: s.update(step="4")), "'step' is '4', not int"),
    (_edit_state(lambda s: s.pop("step")), "no 'step'"),
    (_edit_state(lambda s: s.update(tokens=-5)), "'tokens' is -5, not int"),
    (_edit_state(lambda s: s.update(best_val_loss="low")), "'best_val_loss' is 'low', not float | None"),
    (_edit_state(lambda s: s.update(monitor=[1, 2])), "'monitor' is [1, 2], not the monitor's state"),
    (_edit_state(lambda s: s["monitor"].update(loss=["x"])), "'monitor' is"),
    (_edit_state(lambda s: s.update(loss_history={"per_mean": 1, "means": ["x"], "pending": []})), "'loss_history' is"),
])  # fmt: skip
def test_a_train_state_with_fields_of_the_wrong_kind_is_one_checkpoint_error(tokens, tmp_path, damage, message):
    """Valid JSON with a wrong field ended the resume with a traceback, or (no step) resumed at
    step 0 from the newest weights and overwrote the run's later checkpoints."""
    out = tmp_path / "run"
    cfg = tiny_config(tokens, out, train={"max_steps": 4, "checkpoint_every": 2, "sample_tokens": 0})
    train(cfg)
    root = out / "checkpoints"
    before = {p.name: (p / "model.safetensors").read_bytes() for p in root.glob("step-*")}
    damage(root / "step-000004")
    with pytest.raises(CheckpointError, match="move this checkpoint directory away") as caught:
        train(tiny_config(tokens, out, train={"max_steps": 6, "checkpoint_every": 2, "sample_tokens": 0}), resume=True)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert {p.name: (p / "model.safetensors").read_bytes() for p in root.glob("step-*")} == before


def test_resuming_with_another_budget_says_the_schedule_moves(tokens, tmp_path, capsys):
    """A finished run resumed with a larger max_steps raised its learning rate without a word."""
    out = tmp_path / "run"
    train(tiny_config(tokens, out, train={"max_steps": 4, "sample_tokens": 0}))
    capsys.readouterr()
    train(tiny_config(tokens, out, train={"max_steps": 6, "sample_tokens": 0}), resume=True)
    assert "changed budget settings (train.max_steps 4 -> 6)" in capsys.readouterr().err


def test_an_evaluation_cut_short_by_ctrl_c_is_run_on_resume(tokens, tmp_path, monkeypatch):
    """Ctrl-C during the step-8 evaluation saved step 8 without a validation loss, and the resumed
    run went on to step 9: that evaluation was lost for good, and step 8 could never be best."""
    import scratchlm.train.trainer as trainer_module

    def config(name):
        return tiny_config(tokens, tmp_path / name, train={"max_steps": 12, "eval_every": 4, "checkpoint_every": 4,
                                                           "sample_tokens": 0})

    train(config("whole"))
    real_evaluate = trainer_module.evaluate_loss
    calls = []

    def ctrl_c_during_the_second_evaluation(model, batches, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # arrives between two validation batches
        return real_evaluate(model, batches, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "evaluate_loss", ctrl_c_during_the_second_evaluation)
    assert train(config("cut"))["stopped"] == "SIGINT"
    monkeypatch.setattr(trainer_module, "evaluate_loss", real_evaluate)
    train(config("cut"), resume=True)

    def validations(name):
        return [(row["step"], row["val_loss"]) for row in read_rows(tmp_path / name) if "val_loss" in row]

    assert validations("cut") == validations("whole") and [s for s, _ in validations("whole")] == [4, 8, 12]
    saved = [json.loads((tmp_path / name / "checkpoints" / "step-000008" / "train_state.json").read_text())
             for name in ("cut", "whole")]
    assert saved[0]["val_loss"] == saved[1]["val_loss"] is not None


def test_the_loss_trend_after_a_resume_is_judged_over_the_whole_run(tokens, tmp_path):
    """A run resumed near its end judged only the losses since the resume: their flat tail was
    'loss is not decreasing ... run sweep-lr', though the run's loss had fallen from 5.8 to 0.7."""
    import shutil

    def config(name):
        return tiny_config(tokens, tmp_path / name, train={"max_steps": 120, "schedule": "constant",
                                                           "checkpoint_every": 80, "sample_tokens": 0})

    whole = train(config("whole"))
    shutil.copytree(tmp_path / "whole", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step-000120")  # as if killed after step 80
    resumed = train(config("cut"), resume=True)
    assert resumed["steps"] == 120 and train_losses(read_rows(tmp_path / "cut"), "resume") == {
        s: v for s, v in train_losses(read_rows(tmp_path / "whole")).items() if s > 80
    }
    assert resumed["diagnoses"] == whole["diagnoses"] == []
    saved = json.loads((tmp_path / "cut" / "checkpoints" / "step-000120" / "train_state.json").read_text())
    assert saved["loss_history"]["means"] == list(train_losses(read_rows(tmp_path / "whole")).values())

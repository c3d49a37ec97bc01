"""The pretraining loop end to end on a tiny model: it learns, logs, evaluates and saves."""

from __future__ import annotations

import json

import pytest
import torch
from train_core_helpers import build_tokens_dir, events, read_rows, tiny_config, train_losses

from scratchlm.errors import CheckpointError, ConfigError, DataError
from scratchlm.train.trainer import train

TRAIN_KEYS = {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "mfu", "elapsed_s"}


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    return build_tokens_dir(tmp_path_factory.mktemp("loop-data"))


def test_run_learns_logs_evaluates_and_saves_a_model_dir(tokens, tmp_path):
    from scratchlm.model import load_model

    out = tmp_path / "run"
    summary = train(tiny_config(tokens, out, train={"max_steps": 30, "eval_every": 15}))
    rows = read_rows(out)
    train_rows = [r for r in rows if "loss" in r and "event" not in r]
    assert [r["step"] for r in train_rows] == list(range(1, 31))
    assert all(TRAIN_KEYS <= set(r) for r in train_rows)
    assert train_rows[-1]["tokens"] == 30 * 128
    losses = [r["loss"] for r in train_rows]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [15, 30]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert 0 < evals[-1]["val_bpb"] < 8 and isinstance(evals[-1]["sample"], str)
    assert not events(rows, "spike") and not events(rows, "nan_skip")
    assert summary["steps"] == 30 and summary["val_loss"] == evals[-1]["val_loss"]
    # The final checkpoint is a model dir any stage can load, tokenizer included.
    ckpt = out / "checkpoints" / "step-000030"
    assert (out / "checkpoints" / "latest").read_text().strip() == ckpt.name
    assert (ckpt / "tokenizer.json").is_file() and (ckpt / "tokenizer_config.json").is_file()
    model = load_model(ckpt)
    x = torch.randint(0, model.cfg.vocab_size, (1, 8))
    assert torch.isfinite(model(x)).all()
    state = json.loads((ckpt / "train_state.json").read_text())
    assert state["step"] == 30 and state["data_step"] == 30 and state["tokens"] == 30 * 128


def test_accumulation_is_the_same_step_as_one_big_micro_batch(tokens, tmp_path):
    split = train(tiny_config(tokens, tmp_path / "a", train={"max_steps": 4, "micro_batch": 4}))
    whole = train(tiny_config(tokens, tmp_path / "b", train={"max_steps": 4, "micro_batch": 8}))
    a, b = train_losses(read_rows(tmp_path / "a")), train_losses(read_rows(tmp_path / "b"))
    assert a.keys() == b.keys() == {1, 2, 3, 4}
    for step in a:
        assert a[step] == pytest.approx(b[step], abs=1e-5)
    assert split["tokens"] == whole["tokens"] == 4 * 128
    # Gradient norms too: AdamW's update ignores the gradient's scale, so a sum of micro-batch
    # gradients not divided by their count would leave losses and weights alike, not the norms.
    norms = [{r["step"]: r["grad_norm"] for r in read_rows(tmp_path / run) if "grad_norm" in r} for run in "ab"]
    assert norms[0].keys() == {1, 2, 3, 4}
    for step, norm in norms[0].items():
        assert norm == pytest.approx(norms[1][step], rel=1e-4)
    # And the weights: a loss can agree while an update that barely moves it (a small layer's) differs.
    from scratchlm.model import load_model

    split_model, whole_model = load_model(split["checkpoint"]), load_model(whole["checkpoint"])
    whole_weights = dict(whole_model.named_parameters())
    for name, weight in split_model.named_parameters():  # float32 sums in another order: about 1e-6 apart
        torch.testing.assert_close(weight, whole_weights[name], rtol=1e-4, atol=1e-5, msg=name)


def test_token_budget_and_wall_clock_budget_finish_the_decay(tokens, tmp_path):
    by_tokens = train(tiny_config(tokens, tmp_path / "t", train={"max_steps": 0, "max_tokens": 640}))
    assert by_tokens["steps"] == 5
    cfg = tiny_config(
        tokens, tmp_path / "s", train={"max_steps": 0, "max_seconds": 1.5, "min_lr_ratio": 0.1, "warmup_steps": 1}
    )
    timed = train(cfg)
    rows = [r for r in read_rows(tmp_path / "s") if "lr" in r]
    assert timed["steps"] > 5 and timed["elapsed_s"] < 4
    assert rows[-1]["lr"] < 0.25 * cfg.train.lr  # the cosine reached its floor as time ran out


def test_bad_settings_are_one_line_errors(tokens, tmp_path):
    with pytest.raises(ConfigError, match="batch_tokens"):
        train(tiny_config(tokens, tmp_path / "a", train={"batch_tokens": 100}))
    with pytest.raises(ConfigError, match="model.n_heads"):
        train(tiny_config(tokens, tmp_path / "b", model={"n_heads": 3}))
    with pytest.raises(ConfigError, match="vocab_size"):
        train(tiny_config(tokens, tmp_path / "c", model={"vocab_size": 100}))
    out = tmp_path / "d"
    train(tiny_config(tokens, out, train={"max_steps": 1}))
    with pytest.raises(ConfigError, match="--resume"):
        train(tiny_config(tokens, out, train={"max_steps": 1}))


def test_tokens_from_another_tokenizer_are_refused(tokens, tmp_path):
    import shutil

    other = tmp_path / "tokens"
    shutil.copytree(tokens, other)
    meta = json.loads((other / "meta.json").read_text())
    meta["tokenizer_sha256"] = "0" * 64
    (other / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="tokenizer"):
        train(tiny_config(other, tmp_path / "run"))


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("train", "sample_temperature", -1.0),
        ("train", "sample_top_k", -5),
        ("train", "sample_tokens", -1),
        ("train", "sample_every", -1),
        ("train", "eval_every", -1),
        ("train", "eval_batches", 0),
        ("train", "eval_batch_size", -1),
        ("train", "seed", 10**20),
        ("train", "seed", -(2**63) - 1),
        ("train", "beta2", 1.0),
        ("train", "decay_fraction", 0.0),
        ("monitor", "window", 0),
    ],
)
def test_out_of_range_settings_are_refused_before_training(tokens, tmp_path, section, key, value):
    with pytest.raises(ConfigError, match=rf"{section}\.{key} must be"):
        tiny_config(tokens, tmp_path / "run", **{section: {key: value}})
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("section", "changes", "message"),
    [
        ("train", {"max_steps": 0}, r"\[train\] needs a budget"),  # TrainSection()'s own defaults: no budget
        ("monitor", {"min_history": 0}, r"monitor\.min_history must be in"),
        # NaN fails every comparison, so it passed the range checks (the loader refuses it itself)
        ("train", {"lr": float("nan")}, r"train\.lr must be a finite number"),
        ("monitor", {"loss_threshold": float("nan")}, r"monitor\.loss_threshold must be a finite number"),
        ("train", {"max_steps": 0, "max_seconds": float("inf")}, r"train\.max_seconds must be a finite number"),
    ],
)
def test_a_config_built_in_python_is_checked_before_training(tokens, tmp_path, section, changes, message):
    """The loader checks every section, but `train(config)` did not: a config changed in Python
    (or built from the dataclasses) with no budget, or an infinite one, trained forever, min_history
    0 judged steps against an empty history, and a NaN threshold caught no spike."""
    import dataclasses

    cfg = tiny_config(tokens, tmp_path / "run")
    changed = dataclasses.replace(getattr(cfg, section), **changes)  # no loader: no validation
    with pytest.raises(ConfigError, match=message):
        train(dataclasses.replace(cfg, **{section: changed}))
    assert not (tmp_path / "run").exists()


def test_train_out_naming_a_file_is_a_config_error(tokens, tmp_path):
    out = tmp_path / "run"
    out.write_text("notes\n")
    with pytest.raises(ConfigError, match="train.out .* not a directory"):
        train(tiny_config(tokens, out))
    assert out.read_text() == "notes\n"


def test_final_checkpoint_carries_the_final_evaluation(tokens, tmp_path):
    out = tmp_path / "run"
    summary = train(tiny_config(tokens, out, train={"max_steps": 6, "checkpoint_every": 3}))
    root = out / "checkpoints"
    state = json.loads((root / "step-000006" / "train_state.json").read_text())
    assert state["val_loss"] == summary["val_loss"] is not None
    assert (root / "best").read_text().strip() == "step-000006"
    saves = [e["step"] for e in events(read_rows(out), "checkpoint")]
    assert saves == [3, 6]  # the last step is written once, after its evaluation


def test_tokens_without_a_val_split_train_without_evaluation(tmp_path, capsys):
    from scratchlm.train.sweep import sweep_lr

    (tmp_path / "data").mkdir()
    no_val = build_tokens_dir(tmp_path / "data", val_every=0)
    out = tmp_path / "run"
    summary = train(tiny_config(no_val, out, train={"max_steps": 4, "eval_every": 2, "sample_tokens": 0}))
    assert "no val split" in capsys.readouterr().err
    assert summary["steps"] == 4 and summary["val_loss"] is None and summary["best_val_loss"] is None
    assert not [r for r in read_rows(out) if "val_loss" in r]
    assert not (out / "checkpoints" / "best").exists()
    with pytest.raises(ConfigError, match="no val split"):
        sweep_lr(tiny_config(no_val, tmp_path / "sweep"), [1e-3], steps=2)


def test_a_val_split_shorter_than_a_window_trains_without_evaluation(tmp_path, capsys):
    """A corpus just past `val_every` documents has a val split of one short document: the run
    refused to start ("split 'val' has 41 tokens; ... needs at least 129"), naming no remedy."""
    from scratchlm.data.loader import read_meta
    from scratchlm.train.sweep import sweep_lr

    (tmp_path / "data").mkdir()
    tokens = build_tokens_dir(tmp_path / "data", val_every=200)  # 240 documents: one goes to val
    val_tokens = read_meta(tokens)["splits"]["val"]["tokens"]
    assert 0 < val_tokens < 65
    out = tmp_path / "run"
    cfg = tiny_config(tokens, out, model={"max_seq_len": 64},
                      train={"max_steps": 2, "seq_len": 64, "micro_batch": 2, "eval_every": 1, "sample_tokens": 0})
    summary = train(cfg)
    assert f"its val split has {val_tokens} tokens, fewer than one window of seq_len + 1 = 65" in capsys.readouterr().err
    assert summary["steps"] == 2 and summary["val_loss"] is None
    with pytest.raises(ConfigError, match="no val split of a window's length"):
        sweep_lr(tiny_config(tokens, tmp_path / "sweep", model={"max_seq_len": 64},
                             train={"seq_len": 64, "micro_batch": 2}), [1e-3], steps=2)


def stop_after_step(monkeypatch, step: int) -> None:
    """A stop signal arriving right after `step` is applied (what the SIGINT handler records)."""
    import signal

    from scratchlm.train.trainer import PretrainRun

    real_step = PretrainRun._step

    def step_then_stop(self):
        outcome = real_step(self)
        if self.state.step == step and outcome["applied"]:
            self._stop_signal = signal.SIGINT
        return outcome

    monkeypatch.setattr(PretrainRun, "_step", step_then_stop)


def test_a_stop_at_a_checkpoint_step_writes_that_checkpoint_once(tokens, tmp_path, monkeypatch):
    stop_after_step(monkeypatch, 2)
    out = tmp_path / "run"
    summary = train(tiny_config(tokens, out, train={"max_steps": 6, "checkpoint_every": 2, "sample_tokens": 0}))
    assert summary["stopped"] == "SIGINT" and summary["steps"] == 2
    assert [(e["step"], e["reason"]) for e in events(read_rows(out), "checkpoint")] == [(2, "interval")]


def test_a_time_budget_spent_at_a_checkpoint_step_writes_it_once(tokens, tmp_path, monkeypatch):
    from scratchlm.train.trainer import Session

    # A clock on which every applied step takes 10 s: the budget runs out with step 4.
    monkeypatch.setattr(Session, "elapsed", lambda self: self.base_elapsed + 10.0 * self.applied)
    out = tmp_path / "run"
    train(tiny_config(tokens, out, train={"max_steps": 0, "max_seconds": 40.0, "checkpoint_every": 4}))
    assert [(e["step"], e["reason"]) for e in events(read_rows(out), "checkpoint")] == [(4, "final")]


@pytest.mark.parametrize("seed", [-1, 2**32, -(2**63), 2**63 - 1])
def test_seeds_beyond_32_bits_train(tokens, tmp_path, seed):
    """torch takes 64-bit seeds and numpy's is reduced mod 2**32: only a seed whose derived seeds
    (plus rank or step) would overflow 64 bits is refused."""
    summary = train(tiny_config(tokens, tmp_path / "run", train={"max_steps": 1, "seed": seed}))
    assert summary["steps"] == 1


def test_samples_from_a_padded_vocab_use_only_the_tokenizers_ids(tokens, tmp_path):
    """A model vocab padded past the tokenizer's (documented as allowed) has ids nothing decodes."""
    import json as json_module

    vocab = json_module.loads((tokens / "meta.json").read_text())["vocab_size"]
    padded = (vocab // 64 + 2) * 64
    out = tmp_path / "run"
    cfg = tiny_config(tokens, out, model={"vocab_size": padded}, train={
        "max_steps": 4, "eval_every": 2, "sample_tokens": 24, "sample_top_k": 0, "sample_temperature": 2.0,
    })
    assert train(cfg)["steps"] == 4
    assert len([r for r in read_rows(out) if "sample" in r]) == 2


def test_a_run_without_a_val_split_samples_each_evaluated_step_once(tmp_path):
    (tmp_path / "data").mkdir()
    no_val = build_tokens_dir(tmp_path / "data", val_every=0)
    out = tmp_path / "run"
    cfg = tiny_config(no_val, out, train={"max_steps": 4, "eval_every": 2, "sample_tokens": 4})
    train(cfg)
    train(cfg, resume=True)  # a finished run resumed: nothing to train, nothing to sample again
    assert [r["step"] for r in read_rows(out) if "sample" in r] == [2, 4]


def test_resuming_with_changed_data_settings_says_so(tokens, tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny_config(tokens, out, train={"max_steps": 2, "checkpoint_every": 2, "sample_tokens": 0}))
    capsys.readouterr()
    train(tiny_config(tokens, out, train={"max_steps": 4, "sample_tokens": 0, "batch_tokens": 256}), resume=True)
    assert "changed data settings (train.batch_tokens 128 -> 256)" in capsys.readouterr().err
    train(tiny_config(tokens, out, train={"max_steps": 6, "sample_tokens": 0, "batch_tokens": 256}), resume=True)
    assert "changed data settings" not in capsys.readouterr().err


def test_resuming_with_changed_optimizer_settings_trains_with_the_new_ones(tokens, tmp_path, capsys):
    """The optimizer state in a checkpoint carries the old lr, weight decay and betas; a resume that
    changes them (as a diagnosis advising a lower lr asks) must train with the new values."""
    import shutil

    from safetensors.torch import load_file

    first = tmp_path / "first"
    base = {"max_steps": 2, "checkpoint_every": 2, "sample_tokens": 0, "lr": 3e-3, "warmup_steps": 1}
    train(tiny_config(tokens, first, train=base))
    for name in ("same", "lower"):
        shutil.copytree(first, tmp_path / name)
    capsys.readouterr()
    train(tiny_config(tokens, tmp_path / "same", train={**base, "max_steps": 4}), resume=True)
    assert "changed optimizer settings" not in capsys.readouterr().err
    lower = {**base, "max_steps": 4, "lr": 3e-9, "weight_decay": 0.0, "muon_lr": 0.05}  # muon_lr: unused by AdamW
    train(tiny_config(tokens, tmp_path / "lower", train=lower), resume=True)
    assert "changed optimizer settings (train.lr 0.003 -> 3e-09, train.weight_decay 0.1 -> 0.0)" in capsys.readouterr().err
    weights = {
        name: load_file(tmp_path / name / "checkpoints" / step / "model.safetensors")
        for name, step in (("first", "step-000002"), ("same", "step-000004"), ("lower", "step-000004"))
    }
    for key, at_two in weights["first"].items():  # lr 3e-9 and no decay: two more steps barely move a weight
        torch.testing.assert_close(weights["lower"][key], at_two, rtol=0, atol=1e-6, msg=key)
    assert any((weights["same"][key] - at_two).abs().max() > 1e-3 for key, at_two in weights["first"].items())
    lrs = [row["lr"] for row in read_rows(tmp_path / "lower") if row.get("step", 0) > 2 and "lr" in row]
    assert lrs and max(lrs) <= 3e-9


def test_resuming_removes_the_unfinished_checkpoint_a_killed_run_left(tokens, tmp_path, capsys):
    """A kill -9 during a save leaves the temp folder (the model's size on disk) that nothing else removes."""
    import socket
    import subprocess
    import sys

    out = tmp_path / "run"
    cfg = tiny_config(tokens, out, train={"max_steps": 2, "checkpoint_every": 2, "sample_tokens": 0})
    train(cfg)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname().replace(".", "_")
    abandoned = out / "checkpoints" / f".step-000004.{host}-{int(gone.stdout)}.k9x2ab7c.partial"
    abandoned.mkdir()
    (abandoned / "model.safetensors").write_bytes(b"\0" * 1000)
    capsys.readouterr()
    train(tiny_config(tokens, out, train={"max_steps": 3, "checkpoint_every": 2, "sample_tokens": 0}), resume=True)
    assert not abandoned.exists()
    assert "removed 1 unfinished checkpoint folder(s)" in capsys.readouterr().err


def test_a_meta_vocab_size_that_is_not_the_tokenizers_is_refused(tokens, tmp_path):
    """The model is sized from meta.json: a damaged vocab_size built a model for another vocabulary."""
    import shutil

    damaged = tmp_path / "tokens"
    shutil.copytree(tokens, damaged)
    meta = json.loads((damaged / "meta.json").read_text())
    (damaged / "meta.json").write_text(json.dumps({**meta, "vocab_size": meta["vocab_size"] + 100}))
    with pytest.raises(DataError, match=r"meta\.json: vocab_size \d+ differs from its tokenizer's \d+"):
        train(tiny_config(damaged, tmp_path / "run", train={"max_steps": 1}))


def test_a_sample_prompt_the_context_cannot_hold_is_refused_before_training(tokens, tmp_path):
    """Found at the first sample it would end the run, before any checkpoint was written."""
    out = tmp_path / "run"
    prompt = "the king shall speak " * 40  # far more than the model's 32 positions
    with pytest.raises(ConfigError, match=r"train.sample_prompt is \d+ tokens, which leaves no room to sample"):
        train(tiny_config(tokens, out, train={"max_steps": 2, "eval_every": 1, "sample_prompt": prompt}))
    assert not (out / "metrics.jsonl").exists() or not read_rows(out)
    assert train(tiny_config(tokens, out, train={"max_steps": 2, "sample_prompt": prompt, "sample_tokens": 0}))["steps"] == 2


@pytest.mark.parametrize("value", ["abc", [1], 1.5])
def test_a_model_vocab_size_of_the_wrong_type_is_a_config_error(tokens, tmp_path, value):
    with pytest.raises(ConfigError, match="vocab_size"):
        train(tiny_config(tokens, tmp_path / "run", model={"vocab_size": value}))


@pytest.mark.parametrize(("lrs", "message"), [
    ([float("nan")], "finite and positive"),
    ([float("inf")], "finite and positive"),
    ([-1e-3], "finite and positive"),
    ([1e-3, 0.001], "listed twice"),
])
def test_sweep_refuses_rates_that_cannot_train_or_share_a_folder(tokens, tmp_path, lrs, message):
    from scratchlm.train.sweep import lr_label, sweep_lr

    with pytest.raises(ConfigError, match=message):
        sweep_lr(tiny_config(tokens, tmp_path / "sweep"), lrs, steps=1)
    assert not (tmp_path / "sweep").exists()
    assert lr_label(1e-3) != lr_label(1.0000001e-3)


@pytest.mark.parametrize("steps", [0, -5, 2.5, True])
def test_a_sweep_refuses_a_step_count_no_run_can_train(tokens, tmp_path, steps):
    """`sweep_lr(config, steps=0)` gave each rate no budget: its first run trained forever (the CLI
    checks --steps, the library did not)."""
    from scratchlm.train.sweep import sweep_lr

    with pytest.raises(ConfigError, match=r"steps per learning rate must be a positive integer"):
        sweep_lr(tiny_config(tokens, tmp_path / "sweep"), [1e-3], steps=steps)
    assert not (tmp_path / "sweep").exists()


def test_samples_follow_sample_every_between_evaluations(tokens, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tokens, out, train={"max_steps": 7, "eval_every": 2, "sample_every": 3, "sample_tokens": 4}))
    rows = read_rows(out)
    assert [r["step"] for r in rows if "sample" in r] == [3, 6, 7]  # 7: the final evaluation samples too
    assert [r["step"] for r in rows if "val_loss" in r] == [2, 4, 6, 7]


def test_a_sample_only_step_at_the_end_still_gets_the_final_evaluation(tokens, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tokens, out, train={"max_steps": 6, "eval_every": 4, "sample_every": 3, "sample_tokens": 4}))
    rows = read_rows(out)
    assert [r["step"] for r in rows if "val_loss" in r] == [4, 6]
    assert [r["step"] for r in rows if "sample" in r] == [3, 6, 6]  # the sample-only row, then the final evaluation's


def test_a_compiled_run_trains_as_the_eager_one_and_saves_plain_weights(tokens, tmp_path):
    """`train.compile`: the compiled step gives the eager run's losses, and evaluation, sampling and
    checkpoints work beside it, the weights saved under their plain names (no `_orig_mod.`)."""
    from scratchlm.model import load_model

    settings = {"max_steps": 6, "eval_every": 3}
    eager = train(tiny_config(tokens, tmp_path / "eager", train=settings))
    compiled = train(tiny_config(tokens, tmp_path / "compiled", train={**settings, "compile": True}))
    a, b = train_losses(read_rows(tmp_path / "eager")), train_losses(read_rows(tmp_path / "compiled"))
    assert a.keys() == b.keys() == set(range(1, 7))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4)
    evals = [r for r in read_rows(tmp_path / "compiled") if "val_loss" in r]
    assert [r["step"] for r in evals] == [3, 6] and all(isinstance(r["sample"], str) for r in evals)
    assert compiled["val_loss"] == pytest.approx(eager["val_loss"], rel=1e-4)
    saved = load_model(tmp_path / "compiled" / "checkpoints" / "step-000006").state_dict()
    reference = load_model(tmp_path / "eager" / "checkpoints" / "step-000006").state_dict()
    assert saved.keys() == reference.keys()
    for name in saved:
        torch.testing.assert_close(saved[name], reference[name], rtol=1e-3, atol=1e-4)


def test_a_run_is_refused_where_it_would_write_into_its_tokens(tokens, tmp_path):
    """Checkpoints and metrics used to land among the tokens, which `data tokenize --out` replaces."""
    before = sorted(p.relative_to(tokens) for p in tokens.rglob("*"))
    for out, message in [(tokens, "is the tokens dir"), (tokens / "run", "is inside the tokens dir")]:
        with pytest.raises(ConfigError, match=f"train.out = .*: {message}"):
            train(tiny_config(tokens, out, train={"max_steps": 1}))
    assert sorted(p.relative_to(tokens) for p in tokens.rglob("*")) == before


def test_paths_that_start_with_a_tilde_name_one_folder_in_the_home_directory(tokens, tmp_path, monkeypatch):
    """`train.out = "~/run"` split the run: its log and `latest` went to a folder literally named
    `~` in the working directory, its checkpoints (whose writer expands `~`) to the home directory,
    so the summary named no checkpoint and `--resume` started over. `data.tokens = "~/..."` was
    "not found", though `data tokenize --out ~/...` writes there."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (home / "tokens").symlink_to(tokens, target_is_directory=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    cfg = tiny_config(tokens, tmp_path, data={"tokens": "~/tokens"}, train={"out": "~/run", "max_steps": 2})
    summary = train(cfg)
    run = home / "run"
    assert summary["checkpoint"] == str(run / "checkpoints" / "step-000002")
    assert (run / "metrics.jsonl").is_file() and (run / "checkpoints" / "latest").is_file()
    assert not list(work.iterdir())  # no folder named `~`
    cfg.train.max_steps = 3
    assert train(cfg, resume=True)["steps"] == 3
    assert [r["step"] for r in events(read_rows(run), "resume")] == [2]


def test_a_warmup_as_long_as_the_budget_is_named_before_training(tokens, tmp_path, capsys):
    """With warmup_steps at or above the budget's steps (the default 100 and a short trial run), the
    last update was still warming up: no step at train.lr, no decay, and nothing said so."""
    train(tiny_config(tokens, tmp_path / "steps", train={"max_steps": 3, "warmup_steps": 4}))
    assert "train.warmup_steps = 4 is not below the budget of 3 steps" in capsys.readouterr().err
    assert [r["lr"] for r in read_rows(tmp_path / "steps") if "lr" in r][-1] == pytest.approx(0.75 * 1e-2)
    train(tiny_config(tokens, tmp_path / "tokens", train={"max_steps": 0, "max_tokens": 3 * 128 - 1, "warmup_steps": 3}))
    assert "train.warmup_steps = 3 is not below the budget of 3 steps" in capsys.readouterr().err
    train(tiny_config(tokens, tmp_path / "decays", train={"max_steps": 3, "warmup_steps": 2}))
    assert "warmup_steps" not in capsys.readouterr().err


def killed_after_step_two(tokens, out, **train_settings):
    """A 6-step run saved at steps 2, 4 and 6, then cut back to step 2 as a kill -9 right after that
    save would have left its checkpoints; metrics.jsonl still holds the 4 later steps."""
    import shutil

    cfg = tiny_config(tokens, out, train={"max_steps": 6, "checkpoint_every": 2, "keep_last": 5, "eval_every": 2,
                                          **train_settings})
    reference = train(cfg)
    for name in ("step-000004", "step-000006", "latest", "best"):
        path = out / "checkpoints" / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return cfg, reference


def test_a_resumed_run_logs_each_step_once(tokens, tmp_path, capsys):
    """Appended to, the log held the steps after the checkpoint twice after kill -9 and --resume."""
    out = tmp_path / "run"
    cfg, _ = killed_after_step_two(tokens, out)
    first = read_rows(out)
    capsys.readouterr()
    assert train(cfg, resume=True)["steps"] == 6
    assert "dropped 8 record(s) logged after step-000002 was saved" in capsys.readouterr().err
    rows = read_rows(out)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in rows if "val_loss" in r] == [2, 4, 6]
    assert [e["step"] for e in events(rows, "checkpoint")] == [2, 4, 6]
    cut = first.index(events(first, "checkpoint")[0]) + 1
    assert rows[:cut] == first[:cut] and rows[cut]["event"] == "resume"
    assert train_losses(rows) == train_losses(first)  # the same steps, logged once


def test_a_fresh_start_over_a_run_that_saved_nothing_starts_a_new_log(tokens, tmp_path, capsys):
    """A run killed before its first checkpoint: the next start (with or without --resume) trains
    from step 1, and its rows used to follow the dead run's."""
    import shutil

    out = tmp_path / "run"
    out.mkdir()
    stale = [{"step": 1, "loss": 9.0, "lr": 0.1}, {"step": 2, "loss": 8.0, "lr": 0.1}]
    for resume in (False, True):
        (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stale))
        capsys.readouterr()
        train(tiny_config(tokens, out, train={"max_steps": 2, "sample_tokens": 0}), resume=resume)
        assert "saved no checkpoint; starting a new log" in capsys.readouterr().err
        rows = read_rows(out)
        assert [r["step"] for r in rows if "loss" in r] == [1, 2] and rows[0]["loss"] != 9.0
        shutil.rmtree(out / "checkpoints")


def test_a_refused_start_or_resume_leaves_the_log_alone(tokens, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tokens, out, train={"max_steps": 2, "sample_tokens": 0}))
    log = (out / "metrics.jsonl").read_bytes()
    with pytest.raises(ConfigError, match="--resume"):
        train(tiny_config(tokens, out, train={"max_steps": 2, "sample_tokens": 0}))

    with pytest.raises(CheckpointError, match=r"model config differs .*\(n_layer: 1 in the checkpoint, 2 here\)"):
        train(tiny_config(tokens, out, model={"n_layer": 2}, train={"max_steps": 4}), resume=True)
    assert (out / "metrics.jsonl").read_bytes() == log


def test_a_model_section_giving_only_some_keys_resumes_a_run_of_the_default_preset(tokens, tmp_path):
    """[model] n_layer = 2 (tiny's own) used to drop the default preset: another model, refused."""
    import dataclasses

    from scratchlm.config import from_dict, to_dict
    from scratchlm.train.config import PretrainConfig

    out = tmp_path / "run"
    cfg = tiny_config(tokens, out, train={"max_steps": 1, "sample_tokens": 0})
    no_model = from_dict(PretrainConfig, {k: v for k, v in to_dict(cfg).items() if k != "model"})
    train(no_model)  # no [model] at all: the tiny preset
    resumed = dataclasses.replace(cfg, model={"n_layer": 2}, train=dataclasses.replace(cfg.train, max_steps=2))
    assert train(resumed, resume=True)["steps"] == 2


def test_a_run_saved_when_no_preset_meant_none_is_told_how_to_resume(tokens, tmp_path):
    """Such a run's [model] now starts from tiny: another model, refused without saying why."""
    out = tmp_path / "run"
    model = {"n_head": 4, "preset": None}  # tiny's 2 KV heads would divide 4: the models differ
    train(tiny_config(tokens, out, model=model, train={"max_steps": 1, "sample_tokens": 0}))
    state_file = out / "checkpoints" / "step-000001" / "train_state.json"
    state = json.loads(state_file.read_text())
    del state["config"]["model"]["preset"]  # as that run recorded its [model]
    state_file.write_text(json.dumps(state))
    again = tiny_config(tokens, out, model={"n_head": 4}, train={"max_steps": 2, "sample_tokens": 0})
    with pytest.raises(CheckpointError, match=r"n_kv_head: 4 in the checkpoint, 2 here\).*--set model.preset=none"):
        train(again, resume=True)
    assert train(tiny_config(tokens, out, model=model, train={"max_steps": 2, "sample_tokens": 0}), resume=True)


def _resumed_err(tokens_dir, out, capsys, max_steps: int) -> str:
    """stderr of resuming the run in `out` on `tokens_dir` up to `max_steps` (no samples)."""
    capsys.readouterr()
    train(tiny_config(tokens_dir, out, train={"max_steps": max_steps, "sample_tokens": 0}), resume=True)
    return capsys.readouterr().err


def test_resuming_on_another_tokens_dir_says_so(tokens, tmp_path, capsys):
    import shutil

    other = tmp_path / "tokens-copy"
    shutil.copytree(tokens, other)
    out = tmp_path / "run"
    train(tiny_config(tokens, out, train={"max_steps": 1, "sample_tokens": 0}))
    assert f"changed data settings (data.tokens '{tokens}' -> '{other}')" in _resumed_err(other, out, capsys, 2)
    link = tmp_path / "link-to-copy"
    link.symlink_to(other)  # the same directory spelled otherwise: no change to report
    assert "data.tokens" not in _resumed_err(link, out, capsys, 3)
    assert "changed data settings" not in _resumed_err(f"{other}/", out, capsys, 3)  # the same dir


def expected_lrs(lr: float, steps: int, warmup: int, floor: float) -> list[float]:
    """The schedule's learning rate at each update: linear warmup, then a cosine over the rest of
    the budget that starts at the peak and puts the last update at the floor."""
    import math

    lrs = [lr * (s + 1) / warmup for s in range(warmup)]
    for s in range(warmup, steps):
        decayed = (s + 1 - warmup) / (steps - warmup)
        lrs.append(lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * decayed))))
    return lrs


@pytest.mark.parametrize("budget", [{"max_steps": 6}, {"max_steps": 0, "max_tokens": 6 * 128},
                                    {"max_steps": 0, "max_seconds": 60.0}])
def test_the_decay_starts_at_the_peak_after_warmup_and_ends_at_the_floor(tokens, tmp_path, monkeypatch, budget):
    """The decay counted warmup's share of the budget as decayed already (a drop at the end of
    warmup), and the last update ran at (N-1)/N of it, above the floor. Every budget kind alike."""
    from scratchlm.train.trainer import Session

    # A clock on which every step takes 10 s: the time budget ends with step 6, as the others do.
    monkeypatch.setattr(Session, "elapsed", lambda self: self.base_elapsed + 10.0 * self.applied)
    out = tmp_path / "run"
    settings = {"warmup_steps": 2, "min_lr_ratio": 0.1, "sample_tokens": 0, **budget}
    train(tiny_config(tokens, out, train=settings))
    lrs = [r["lr"] for r in read_rows(out) if "loss" in r]
    assert lrs == pytest.approx(expected_lrs(1e-2, 6, 2, 0.1), rel=1e-12)
    assert lrs[-1] == pytest.approx(1e-3, rel=1e-12)


def test_the_checkpoint_of_the_step_that_ends_warmup_records_where_it_ended(tokens, tmp_path):
    """Recorded only at the next step, it was missing from that checkpoint, and a time-budget
    rollback to it estimated the decay's start from the clock the rollback kept (lr back up)."""
    out = tmp_path / "run"
    killed_after_step_two(tokens, out, max_steps=0, max_tokens=6 * 128, warmup_steps=2, sample_tokens=0)
    state = json.loads((out / "checkpoints" / "step-000002" / "train_state.json").read_text())
    assert state["warmup_end_tokens"] == 2 * 128 and state["warmup_end_s"] > 0


def test_a_resume_keeps_the_schedule_from_where_warmup_ended(tokens, tmp_path):
    """Token and time budgets decay from the budget share used when warmup ended: the checkpoint
    records it, and a checkpoint older than that record gets it in proportion to its steps."""
    out = tmp_path / "run"
    budget = {"max_steps": 0, "max_tokens": 6 * 128, "warmup_steps": 1, "sample_tokens": 0}
    cfg, _ = killed_after_step_two(tokens, out, **budget)
    uninterrupted = {r["step"]: r["lr"] for r in read_rows(out) if "loss" in r}
    state_file = out / "checkpoints" / "step-000002" / "train_state.json"
    state = json.loads(state_file.read_text())
    assert state["warmup_end_tokens"] == 128 and state["warmup_end_s"] >= 0  # warmup ended with step 1
    del state["warmup_end_tokens"], state["warmup_end_s"]  # as a checkpoint from before the record
    state_file.write_text(json.dumps(state))
    train(cfg, resume=True)
    resumed = {r["step"]: r["lr"] for r in read_rows(out) if "loss" in r}
    assert resumed == uninterrupted


def test_resuming_on_tokens_that_grew_in_place_says_so(tokens, tmp_path, capsys):
    """Re-tokenized or appended to at the same path, the data changed with no setting changing:
    the resume said nothing, and the batches that followed were another stream's."""
    import shutil

    from scratchlm.data.tokenize import TokenizeConfig, tokenize_dataset

    grown = tmp_path / "tokens"
    shutil.copytree(tokens, grown)
    out = tmp_path / "run"
    train(tiny_config(grown, out, train={"max_steps": 1, "sample_tokens": 0}))
    assert "tokens dir changed" not in _resumed_err(grown, out, capsys, 2)
    more = tmp_path / "more.txt"
    more.write_text("another document that was not there when the run began " * 20)
    tokenize_dataset(TokenizeConfig(inputs=[str(more)], tokenizer=str(grown / "tokenizer"), out=str(grown),
                                    append=True, val_every=0, workers=1))
    note = next(line for line in _resumed_err(grown, out, capsys, 3).splitlines() if "tokens dir changed" in line)
    assert "the tokens dir changed since this checkpoint (train " in note and "val " not in note  # val kept


def test_a_run_too_short_to_leave_out_the_warm_up_reports_its_speed_over_all_its_steps(tokens, tmp_path, capsys):
    """A run of WARMUP_STEPS_FOR_SPEED steps or fewer timed none (the warm-up is left out) and
    reported 0 tokens/s and 0 MFU, false numbers; a resume with nothing left to train, too."""
    from scratchlm.train.trainer import WARMUP_STEPS_FOR_SPEED

    def config(name, steps):
        return tiny_config(tokens, tmp_path / name, train={"max_steps": steps, "sample_tokens": 0})

    short = train(config("short", WARMUP_STEPS_FOR_SPEED))
    assert short["tokens_per_s"] > 0 and short["mfu"] > 0 and short["speed_includes_warmup"] is True
    assert f"over all {WARMUP_STEPS_FOR_SPEED} step(s), warm-up included" in capsys.readouterr().err
    longer = train(config("longer", WARMUP_STEPS_FOR_SPEED + 2))
    assert longer["tokens_per_s"] > 0 and longer["speed_includes_warmup"] is False
    assert "warm-up included" not in capsys.readouterr().err
    nothing_left = train(config("short", WARMUP_STEPS_FOR_SPEED), resume=True)
    assert nothing_left["tokens_per_s"] is None and nothing_left["mfu"] is None
    assert nothing_left["speed_includes_warmup"] is False

"""Learning-rate sweep: short runs over a grid, ranked by validation loss.

The learning rate is the setting that most often decides whether a run trains at all; a sweep of
a few hundred steps per value is cheap insurance before a long run. Each value trains from the
same seed and batches, so the only difference between runs is the learning rate.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from scratchlm.config import integer_value, to_dict
from scratchlm.errors import ConfigError, TrainingStopped
from scratchlm.fsutil import atomic_write_json, is_json_int
from scratchlm.train.config import PretrainConfig, check_train_out, same_setting, setting_path

DEFAULT_GRID = (1e-4, 3e-4, 1e-3, 3e-3)
DEFAULT_STEPS = 200
# [train] keys that do not decide whether an earlier sweep's results compare with new ones: those
# each rate's run sets itself (`_run_config`; warmup_steps is compared as the run uses it), and
# those that change what is shown or logged, never the weights or the validation loss.
RUN_SET_KEYS = (
    "lr", "out", "max_steps", "max_tokens", "max_seconds", "eval_every", "checkpoint_every", "checkpoint_minutes",
    "keep_last",
)
DISPLAY_KEYS = ("progress_bar", "tensorboard", "keep_host_memory", "log_every")


def lr_label(lr: float) -> str:
    """The run folder's name: every distinct rate gets its own (`repr` is exact, so 1e-3 and
    1.0000001e-3 differ, where a rounded form would send both to one folder)."""
    return f"lr-{lr!r}"


def checked_rates(lrs: list[float] | tuple[float, ...]) -> list[float]:
    """The grid as given, each rate finite and positive and none twice (one folder each)."""
    rates = [float(lr) for lr in lrs]
    if not rates:
        raise ConfigError("a learning-rate sweep needs at least one rate")
    for lr in rates:
        if not math.isfinite(lr) or lr <= 0:
            raise ConfigError(f"learning rates must be finite and positive, got {lr!r}")
    repeated = sorted({lr for lr in rates if rates.count(lr) > 1})
    if repeated:
        raise ConfigError(f"learning rate {repeated[0]!r} is listed twice")
    return rates


def sweep_lr(
    config: PretrainConfig,
    lrs: list[float] | tuple[float, ...] = DEFAULT_GRID,
    steps: int = DEFAULT_STEPS,
    resume: bool = False,
) -> dict[str, Any]:
    """Train `steps` steps per learning rate under `config.train.out/lr-*`; the best has the lowest
    final validation loss. Writes `sweep.json` beside the runs and returns the same dict.

    A rate whose run the trainer stops as unstable (non-finite losses, too many rollbacks) is
    recorded as diverged, with the trainer's reason, and the sweep goes on: finding the rates that
    diverge is what a sweep is for. A stop signal (Ctrl-C, SIGTERM) ends the sweep: `stopped` names
    the signal, `results` holds only the rates that finished, and no best is named from a partial
    grid. `sweep.json` is rewritten after every finished rate with `finished: false`, so a process
    killed between rates (when no run's signal handlers are installed) still leaves a true partial
    report. With `resume`, the rates `sweep.json` already holds are kept, the interrupted rate
    continues from its checkpoint and the rest start; without it, a folder holding a report is refused."""
    from scratchlm.train.trainer import train

    rates = checked_rates(lrs)
    count = integer_value(steps)  # each rate's only budget: 0 would never end
    if count is None or count < 1:
        raise ConfigError(f"the steps per learning rate must be a positive integer, got {steps!r}")
    steps = count  # a NumPy integer as a plain int: sweep.json records it
    _check_val_split(config.data.tokens, config.train.seq_len)
    check_train_out(config)  # the sweep's folder: each rate's run folder is checked again inside it
    out = setting_path(config.train.out)
    settings = _sweep_settings(config)
    # Every rank decides alike: rank 0 writes sweep.json only after a rate trained, which needs
    # all of them, each past this check.
    if not resume and (out / "sweep.json").exists():  # a new report would replace its results
        raise ConfigError(
            f"{out}: holds the report of an earlier sweep; pass --resume to continue it (its finished "
            "rates are kept) or choose another train.out"
        )
    done = _finished_rates(out, steps, settings) if resume else {}
    # Rates an earlier run of the sweep finished stay in the report, in or out of today's grid.
    results: list[dict[str, Any]] = [result for lr, result in done.items() if lr not in rates]
    stopped = None
    for lr in rates:
        if lr in done:
            results.append(done[lr])
            continue
        run_cfg = _run_config(config, lr, steps, out / lr_label(lr))
        try:
            summary = train(run_cfg, resume=resume)
        except TrainingStopped as unstable:
            results.append(_diverged_result(lr, str(unstable), run_cfg.train.out))
        else:
            stopped = summary["stopped"]
            if stopped:  # a signal: the interrupted rate has no result, and the rest are not tried
                break
            results.append(_result(float(lr), summary, run_cfg.train.out))
        _write_report(out, steps, settings, results, stopped=None, finished=False)
    return _write_report(out, steps, settings, results, stopped=stopped, finished=True)


def _sweep_settings(config: PretrainConfig) -> dict[str, Any]:
    """The resolved config as sweep.json records it (the run folder and the sweep-set lr aside);
    `_comparable` picks from it what a rate's result depends on."""
    settings = json.loads(json.dumps(to_dict(config)))  # as sweep.json gives it back (lists, not tuples)
    settings["train"] = {k: v for k, v in settings["train"].items() if k not in ("lr", "out")}
    return settings


_RESULT_KEYS = ("lr", "val_loss", "val_bpb", "final_loss", "diverged", "out")


def _finished_rates(out: Path, steps: int, settings: dict[str, Any]) -> dict[float, dict[str, Any]]:
    """The results an earlier sweep into `out` recorded, by rate, once it is sure they were made
    the way today's would be; none if it has no report yet."""
    path = out / "sweep.json"
    if not path.exists():
        return {}
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        recorded = {float(r["lr"]): r for r in report["results"] if all(key in r for key in _RESULT_KEYS)}
        if len(recorded) != len(report["results"]):
            raise ValueError("a result lacks some of " + ", ".join(_RESULT_KEYS))
        recorded_steps, recorded_settings = report["steps"], report["settings"]
        if not all(isinstance(table, dict) for table in recorded_settings.values()):
            raise ValueError("its settings are not tables of values")
    except (AttributeError, OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not a sweep report this sweep can resume ({e})") from None
    if recorded_steps != steps:
        raise ConfigError(
            f"{path}: that sweep ran {recorded_steps} steps per rate; resume it with --steps {recorded_steps} "
            "or choose another train.out"
        )
    changed = _changed_keys(_comparable(recorded_settings, steps), _comparable(settings, steps))
    if changed:
        raise ConfigError(
            f"{path}: that sweep ran with other settings ({', '.join(changed)}); its results would not compare "
            "with new ones: resume it with the same config or choose another train.out"
        )
    return recorded


def _comparable(settings: dict[str, Any], steps: int) -> dict[str, Any]:
    """The settings that decide a rate's result, as its run uses them: the keys of RUN_SET_KEYS
    and DISPLAY_KEYS left out, warmup_steps as `_run_config` cuts it for `steps`. Applied to a
    report's settings and to today's alike, so reports that recorded them all still resume."""
    train = {k: v for k, v in settings.get("train", {}).items() if k not in RUN_SET_KEYS + DISPLAY_KEYS}
    if is_json_int(train.get("warmup_steps")):
        train["warmup_steps"] = _run_warmup_steps(train["warmup_steps"], steps)
    return {**settings, "train": train}


def _changed_keys(before: dict[str, dict], now: dict[str, dict]) -> list[str]:
    """`section.key` of each setting that differs between two resolved configs (a path differs only
    when it names another directory, as a resumed run judges it)."""
    return [
        f"{section}.{key}"
        for section in sorted(before.keys() | now.keys())
        for key in sorted(before.get(section, {}).keys() | now.get(section, {}).keys())
        if not same_setting((section, key), before.get(section, {}).get(key), now.get(section, {}).get(key))
    ]


def _write_report(
    out: Path, steps: int, settings: dict[str, Any], results: list[dict[str, Any]], stopped: str | None,
    finished: bool,
) -> dict[str, Any]:
    """`sweep.json`, written by the main process alone (every rank returns the report); a best is
    named only when the whole grid ran. `settings` let a resumed sweep check that it continues the
    same experiment."""
    ranked = [r for r in results if r["val_loss"] is not None]
    best = min(ranked, key=lambda r: r["val_loss"]) if ranked and finished and not stopped else None
    report = {
        "steps": steps,
        "settings": settings,
        "results": results,
        "best_lr": best["lr"] if best else None,
        "stopped": stopped,
        "finished": finished and not stopped,
    }
    from scratchlm.train.distributed import failures_shared, is_main_process  # torch: not for the CLI parser

    with failures_shared():  # one writer; the others hear if it failed rather than train the next rate alone
        if is_main_process():
            atomic_write_json(out / "sweep.json", report)
    return report


def _run_config(config: PretrainConfig, lr: float, steps: int, out: Path) -> PretrainConfig:
    """One rate's short run: same seed and data, evaluated once at the end, one checkpoint."""
    train_cfg = dataclasses.replace(
        config.train,
        lr=lr,
        max_steps=steps,
        max_tokens=0,
        max_seconds=0.0,
        eval_every=0,
        checkpoint_every=0,
        checkpoint_minutes=0.0,
        keep_last=1,
        warmup_steps=_run_warmup_steps(config.train.warmup_steps, steps),
        out=str(out),
    )
    return dataclasses.replace(config, train=train_cfg)


def _run_warmup_steps(warmup_steps: int, steps: int) -> int:
    """A rate's warmup: the config's, cut to a tenth of the short run so most of it decays."""
    return min(warmup_steps, max(1, steps // 10))


def _result(lr: float, summary: dict[str, Any], out: str) -> dict[str, Any]:
    val = summary["val_loss"]
    finite = val is not None and math.isfinite(val)
    return {
        "lr": lr,
        "val_loss": val if finite else None,
        "val_bpb": summary["val_bpb"],
        "final_loss": summary["final_loss"],
        "diverged": not finite,
        "reason": None if finite else "non-finite validation loss",
        "out": out,
    }


def _diverged_result(lr: float, reason: str, out: str) -> dict[str, Any]:
    """A rate whose run the trainer stopped as unstable: no losses to rank, the trainer's reason."""
    return {"lr": lr, "val_loss": None, "val_bpb": None, "final_loss": None, "diverged": True,
            "reason": reason, "out": out}


def _check_val_split(tokens_dir: str, seq_len: int) -> None:
    """The sweep ranks by validation loss, so tokens without a val split (or one too short for a
    window, which a run trains without) cannot be swept."""
    from scratchlm.data.loader import has_val_windows, read_meta  # here: the CLI parser imports this module

    if not has_val_windows(read_meta(setting_path(tokens_dir)), seq_len):
        raise ConfigError(
            f"{tokens_dir}: no val split of a window's length (seq_len + 1 = {seq_len + 1} tokens), and sweep-lr "
            "ranks learning rates by validation loss; "
            "re-tokenize raw inputs with val_every > 0 (`scratchlm data tokenize ... --val-every 100`), or a "
            "prepared dataset after `scratchlm data prepare ... --val-fraction 0.01` (it keeps its own split)"
        )

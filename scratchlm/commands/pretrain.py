"""`scratchlm pretrain` and `scratchlm sweep-lr`: parse into a `PretrainConfig`, call the library."""

from __future__ import annotations

import argparse
import json
import signal
import sys

from scratchlm.cli import add_config_args
from scratchlm.errors import ConfigError
from scratchlm.train.sweep import DEFAULT_GRID, DEFAULT_STEPS


def register(root, groups) -> None:
    """Add `pretrain` and `sweep-lr`."""
    pre = root.add_parser(
        "pretrain",
        help="pretrain a GPT on a tokens dir (launch with torchrun for several processes)",
        description=(
            "Pretrain a GPT on a tokens dir. Several processes: "
            "torchrun --nproc_per_node=N -m scratchlm pretrain --config FILE"
        ),
    )
    add_config_args(pre)
    pre.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/latest")
    pre.set_defaults(func=run_pretrain)

    sweep = root.add_parser(
        "sweep-lr",
        help="short pretraining runs over a grid of learning rates; reports the best",
        description="Train a few hundred steps per learning rate and rank them by validation loss.",
    )
    add_config_args(sweep)
    sweep.add_argument("--lrs", default=",".join(f"{lr:g}" for lr in DEFAULT_GRID), metavar="LR,LR,...",
                       help="the grid (default %(default)s)")
    sweep.add_argument("--steps", type=int, default=DEFAULT_STEPS, metavar="N",
                       help="steps per learning rate (default %(default)s)")
    sweep.add_argument("--resume", action="store_true",
                       help="continue a sweep into the same OUT: keep its finished rates, resume the interrupted one")
    sweep.set_defaults(func=run_sweep)


def _config(args: argparse.Namespace, *extra: str):
    """The config of the file and `--set`, then `extra` overrides (the command's own)."""
    from scratchlm.train.config import load_pretrain_config

    return load_pretrain_config(args.config, [*args.overrides, *extra])


def stopped_exit_code(stopped: str | None) -> int:
    """0 for a run that finished; 128 + the signal's number (130 SIGINT, 143 SIGTERM) for one a
    signal stopped, as a shell reports a killed program, so scripts and schedulers can tell an
    interrupted run (checkpointed, to be resumed) from a finished one."""
    return 128 + signal.Signals[stopped].value if stopped else 0


def run_pretrain(args: argparse.Namespace) -> int:
    from scratchlm.train.distributed import is_main_process, leave_process_group
    from scratchlm.train.trainer import train

    summary = train(_config(args), resume=args.resume)
    leave_process_group()
    if is_main_process():  # one summary on stdout, however many processes trained
        print(json.dumps(summary, indent=2))
    return stopped_exit_code(summary["stopped"])


def run_sweep(args: argparse.Namespace) -> int:
    from scratchlm.train.distributed import is_main_process, leave_process_group
    from scratchlm.train.sweep import sweep_lr

    try:
        lrs = [float(v) for v in args.lrs.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--lrs expects comma-separated numbers, got {args.lrs!r}") from None
    if not lrs or args.steps < 1:
        raise ConfigError("--lrs needs at least one value and --steps must be positive")
    # Each rate's run trains --steps steps whatever [train] budgets: they need not be set.
    report = sweep_lr(_config(args, f"train.max_steps={args.steps}"), lrs, args.steps, resume=args.resume)
    leave_process_group()  # after every rate: the runs of one sweep share the group
    if not is_main_process():  # rank 0 reports for all; the exit code is the same on every rank
        return _sweep_exit_code(report)
    print(f"{'lr':>10}  {'val_loss':>10}  {'val_bpb':>8}", file=sys.stdout)
    for r in report["results"]:
        val = "diverged" if r["diverged"] else f"{r['val_loss']:.4f}"
        bpb = "-" if r["val_bpb"] is None else f"{r['val_bpb']:.4f}"
        print(f"{r['lr']:>10.2e}  {val:>10}  {bpb:>8}")
    if report["stopped"]:
        # Of today's grid: a resumed report also keeps rates an earlier grid finished.
        finished = sum(r["lr"] in lrs for r in report["results"])
        print(
            f"sweep stopped by {report['stopped']} after {finished} of {len(lrs)} learning rates; "
            "no best learning rate is named",
            file=sys.stderr,
        )
    elif report["best_lr"] is None:
        print("every learning rate diverged; try smaller values", file=sys.stderr)
    else:
        print(f"best learning rate: {report['best_lr']:g}")
    return _sweep_exit_code(report)


def _sweep_exit_code(report: dict) -> int:
    """A signal's code for a stopped sweep, 1 when every rate diverged, else 0."""
    if report["stopped"]:
        return stopped_exit_code(report["stopped"])
    return 1 if report["best_lr"] is None else 0

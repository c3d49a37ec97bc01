"""The pretraining loop: `train(config) -> summary`.

One optimizer step = `grad_accum` micro-batches on each of `world_size` processes, together
`train.batch_tokens` tokens. Every step is judged by the stability monitor before its update
reaches the weights. The batch of a step is a pure function of (seed, data position, rank), and
checkpoints hold the data position, optimizer, schedule, monitor and RNG states, so a resumed run
continues exactly where the interrupted one was.

Step anatomy: set the LR from the schedule → forward/backward each micro-batch under autocast
(gradient sync only on the last) → global gradient norm (clipped) → monitor verdict → apply,
skip, or roll back → log, evaluate, checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from scratchlm.config import to_dict
from scratchlm.data.loader import (
    Batcher,
    TokenDataset,
    check_tokenizer_match,
    has_val_split,
    has_val_windows,
    validation_batches,
)
from scratchlm.device import autocast, resolve_precision
from scratchlm.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    NonFiniteLogits,
    Terminated,
    TrainingStopped,
)
from scratchlm.eval.bpb import evaluate_loss
from scratchlm.fsutil import (
    atomic_write_json,
    brief,
    exclusive_directory,
    is_json_int,
    is_json_number,
    remove_abandoned_temp_dirs,
)
from scratchlm.progress import progress
from scratchlm.train import checkpoint as ckpt
from scratchlm.train import diagnosis
from scratchlm.train.config import (
    PretrainConfig,
    build_model_config,
    check_train_out,
    same_setting,
    setting_path,
)
from scratchlm.train.distributed import (
    all_reduce_mean,
    failures_shared,
    init_distributed,
    run_strategy,
    sync_gradients,
    wrap_model,
)
from scratchlm.train.host_memory import keep_freed_memory
from scratchlm.train.memory_fit import check_training_fits, processes_on_this_host, remember_held
from scratchlm.train.metrics import MetricsLogger, eval_line, train_line
from scratchlm.train.mfu import mfu, peak_flops_per_s
from scratchlm.train.monitor import StabilityMonitor, Verdict, inject_fault
from scratchlm.train.optim import build_optimizer
from scratchlm.train.schedule import lr_factor
from scratchlm.wording import counted

# The settings that decide which tokens each step reads: (section, key).
DATA_STREAM_SETTINGS = (
    ("data", "tokens"), ("data", "mode"), ("train", "seed"), ("train", "seq_len"), ("train", "batch_tokens"),
)
# The budget the schedule is laid over: a resume with another one moves the learning rate.
BUDGET_SETTINGS = (("train", "max_steps"), ("train", "max_tokens"), ("train", "max_seconds"))
# Settings each optimizer's parameter groups carry; a resume takes them from this run's config.
_ADAMW_SETTINGS = (("train", "lr"), ("train", "weight_decay"), ("train", "beta1"), ("train", "beta2"))
OPTIMIZER_SETTINGS = {"adamw": _ADAMW_SETTINGS, "muon": (*_ADAMW_SETTINGS, ("train", "muon_lr"))}


def _saved_setting(saved: dict[str, Any], section: str, key: str) -> Any:
    """A value of the resolved config a checkpoint's train_state.json records, or None."""
    config = saved.get("config")
    table = config.get(section) if isinstance(config, dict) else None
    return table.get(key) if isinstance(table, dict) else None


# A signal that repeats the first stop signal within this many seconds is the same stop, not a
# second one (which ends the run at once, without its checkpoint). Why: a torchrun worker's
# parent-death SIGTERM (`train/distributed.py`) comes once for each thread of the dying launcher
# that the worker is handed to, tens of milliseconds apart, and the second one cut the checkpoint.
REPEATED_SIGNAL_S = 1.0

# Steps left out of throughput judgements while caches, allocators and compilers warm up.
WARMUP_STEPS_FOR_SPEED = 5


@dataclass
class TrainState:
    """Everything about the run's position that is not a tensor (saved in train_state.json)."""

    step: int = 0  # optimizer updates applied
    data_step: int = 0  # next position in the batch stream (skipped batches advance it too)
    tokens: int = 0  # tokens the applied updates trained on
    elapsed_s: float = 0.0  # wall clock used by the run, summed over resumes
    rollbacks: int = 0
    skipped_batches: int = 0
    best_val_loss: float | None = None
    last_val_loss: float | None = None
    last_val_bpb: float | None = None
    last_val_step: int = -1
    last_eval_step: int = -1  # the last step evaluated or sampled: a run without a val split has no val step
    # Where warmup ended (tokens trained, seconds elapsed), the start of the decay for token and time
    # budgets; None until then (and in checkpoints older than it: estimated, see `_warmup_progress`).
    warmup_end_tokens: int | None = None
    warmup_end_s: float | None = None

    @classmethod
    def from_saved(cls, saved: dict[str, Any], where: Path) -> TrainState:
        """The position a checkpoint's train_state.json records, each field checked: a hand-edited
        or foreign file used to fail deep inside the resume with a traceback, or (a missing step)
        resume at step 0 and overwrite the run's later checkpoints."""
        values = {}
        for item in fields(cls):
            if item.name not in saved:
                if item.name in ("step", "data_step", "tokens"):
                    raise CheckpointError(f"{where}: no '{item.name}'; {ckpt.DAMAGED_ADVICE}")
                continue
            value, optional = saved[item.name], "None" in item.type
            if not (optional and value is None or _fits(value, item.type, item.name)):
                raise CheckpointError(f"{where}: '{item.name}' is {brief(value)}, not {item.type}; {ckpt.DAMAGED_ADVICE}")
            values[item.name] = value
        monitor = saved.get("monitor", {})
        if not StabilityMonitor.is_state(monitor):
            raise CheckpointError(f"{where}: 'monitor' is {brief(monitor)}, not the monitor's state; {ckpt.DAMAGED_ADVICE}")
        return cls(**values)


def _fits(value: Any, type_name: str, name: str) -> bool:
    """Whether a train_state.json value is of its field's type: counts are integers from 0 (from −1
    for the `last_*_step` fields, where −1 means never), times and losses numbers."""
    if type_name.startswith("int"):
        return is_json_int(value) and value >= (-1 if name.startswith("last_") else 0)
    return is_json_number(value)


@dataclass
class Session:
    """This process's run since it started (or resumed): clocks and counts for throughput and
    checkpoint timing. Not saved; `TrainState` is what survives."""

    base_elapsed: float  # the run's elapsed_s when this session began
    start: float = field(default_factory=time.perf_counter)
    last_ckpt_time: float = field(default_factory=time.perf_counter)
    applied: int = 0  # updates applied, counting those redone after a rollback: work done, for rates
    attempted: int = 0  # steps run, applied or not: the divisor of the mean step time
    timed_s: float = 0.0  # step time after the warm-up steps
    timed_tokens: int = 0
    step_s: float = 0.0  # step time of every applied step, warm-up included
    step_tokens: int = 0
    last_loss: float | None = None  # this session's last applied loss
    row_seconds: float = 0.0  # time spent in steps since the last train row
    row_applied: int = 0

    def elapsed(self) -> float:
        return self.base_elapsed + time.perf_counter() - self.start

    def count_attempt(self, seconds: float) -> None:
        """A step run, applied or not: a skipped batch's time was spent training too."""
        self.attempted += 1
        self.row_seconds += seconds

    def count_step(self, loss: float, seconds: float, batch_tokens: int) -> None:
        self.applied += 1
        self.last_loss = loss
        self.step_s += seconds
        self.step_tokens += batch_tokens
        if self.applied > WARMUP_STEPS_FOR_SPEED:
            self.timed_s += seconds
            self.timed_tokens += batch_tokens

    def tokens_per_s(self) -> tuple[float | None, bool]:
        """The session's training rate and whether it includes the warm-up steps. Past them, they
        are left out (slow: caches, allocators, compilers warming up); a run of no more steps has
        only them, and reported 0 tokens/s, a false number: its rate over all its steps is what was
        measured. None when no step was trained (a resume with nothing left to train)."""
        if self.timed_s > 0:
            return self.timed_tokens / self.timed_s, False
        if self.step_s > 0:
            return self.step_tokens / self.step_s, True
        return None, False

    def tokens_per_s_since_last_row(self, batch_tokens: int) -> float:
        """Tokens trained on since the previous train row, per second of step time. Counted from
        applied updates rather than `TrainState.tokens`, which falls back on a rollback. Step time
        only, as the summary's rate: timed by the wall clock, the row after an evaluation or a
        checkpoint counted their seconds as training and its MFU (the one the low-throughput
        diagnosis may judge) fell several times below the run's."""
        rate = (self.applied - self.row_applied) * batch_tokens / max(self.row_seconds, 1e-9)
        self.row_seconds, self.row_applied = 0.0, self.applied
        return rate


def train(config: PretrainConfig, resume: bool = False) -> dict[str, Any]:
    """Run (or, with `resume`, continue) a pretraining run; returns a summary dict."""
    run = PretrainRun(config, resume)
    try:
        return run.fit()
    finally:
        run.close()


class PretrainRun:
    """The state and steps of one pretraining run (one object per process)."""

    def __init__(self, config: PretrainConfig, resume: bool = False) -> None:
        config.validate()  # the loader has; a config built in Python has not
        # Both before anything is written, or a process group started.
        self.strategy = run_strategy(config.train.strategy, config.train.device)
        check_train_out(config)
        self.config = config
        tc = config.train
        self.tc = tc
        self.dist = init_distributed(tc.device)
        self.device = self.dist.device
        self.precision = resolve_precision(self.device, tc.precision)
        # Whether freed host memory is reused without page faults: then gradients are freed
        # between steps rather than zeroed (`_zero_grad`).
        self._host_memory_kept = self.device.type == "cpu" and tc.keep_host_memory and keep_freed_memory()
        self.out = setting_path(tc.out)
        self.ckpt_root = self.out / "checkpoints"
        self.log = MetricsLogger(self.out, enabled=self.dist.is_main, tensorboard=tc.tensorboard)
        self._step_seconds = 0.0  # the mean step time so far, agreed by all processes
        self._stop_signal: int | None = None
        self._stop_signal_time = 0.0  # when the stop signal came (time.monotonic)
        self._last_saved: tuple[int, bool] | None = None  # (step, with a validation loss) of the newest save
        self._old_handlers: dict[int, Any] = {}
        self.diagnoses: list[str] = []
        self._diagnosed: set[str] = set()
        self._out_lock = contextlib.ExitStack()
        self._overflows_in_a_row = 0  # fp16 loss-scaler overflows in the current run of non-finite steps
        try:
            with failures_shared():  # rank 0 alone takes train.out: the others must hear if it could not
                self._open_data()
                self._check_batch_geometry()
                self._lock_out()  # a second run is refused before the slow part: building the model
            self._build_model()
            self.sample_prompt = self._sample_prompt_ids()
            self.state = TrainState()
            self.monitor = StabilityMonitor(config.monitor)
            self.loss_history = diagnosis.LossHistory()  # the whole run's, restored with a checkpoint
            self.scaler = torch.amp.GradScaler(self.device.type) if self.precision.use_grad_scaler else None
            self._start_or_resume(resume)
        except BaseException:
            self.close()
            raise

    # --- setup -----------------------------------------------------------------------------

    def _open_data(self) -> None:
        from scratchlm.tokenizer import Tokenizer

        tokens_dir = setting_path(self.config.data.tokens)
        self.train_data = TokenDataset.open(tokens_dir, "train")
        meta, seq_len = self.train_data.meta, self.tc.seq_len
        self.val_data = TokenDataset.open(tokens_dir, "val") if has_val_windows(meta, seq_len) else None
        if self.val_data is None:
            why = (f"its val split has {meta['splits']['val']['tokens']} tokens, fewer than one window of seq_len + 1 = "
                   f"{seq_len + 1}" if has_val_split(meta) else "it has no val split")
            self.log.say(f"{tokens_dir}: {why}: training without evaluation (no val_loss, no best checkpoint)")
        self.meta = self.train_data.meta
        self.tokenizer_dir = tokens_dir / "tokenizer"
        if not (self.tokenizer_dir / "tokenizer.json").is_file():
            raise DataError(
                f"{tokens_dir}: no tokenizer/tokenizer.json inside; re-run `scratchlm data tokenize`, "
                "which copies the tokenizer next to the tokens"
            )
        self.tokenizer = Tokenizer.load(self.tokenizer_dir)
        check_tokenizer_match(self.meta, self.tokenizer.sha256)
        if self.meta["vocab_size"] != self.tokenizer.vocab_size:  # the model is sized from meta.json
            raise DataError(
                f"{tokens_dir / 'meta.json'}: vocab_size {self.meta['vocab_size']} differs from its tokenizer's "
                f"{self.tokenizer.vocab_size}; the file is damaged: re-run `scratchlm data tokenize`"
            )
        self.token_bytes = torch.tensor(self.tokenizer.token_bytes(), dtype=torch.int64)

    def _check_batch_geometry(self) -> None:
        tc = self.tc
        per_micro = tc.micro_batch * tc.seq_len * self.dist.world_size
        if tc.batch_tokens % per_micro:
            raise ConfigError(
                f"train.batch_tokens = {tc.batch_tokens} must be a multiple of micro_batch × seq_len × "
                f"processes = {tc.micro_batch} × {tc.seq_len} × {self.dist.world_size} = {per_micro}"
            )
        self.grad_accum = tc.batch_tokens // per_micro
        self.batcher = Batcher(self.train_data, tc.seq_len, tc.micro_batch, tc.seed, self.config.data.mode)
        eval_bs = tc.eval_batch_size or tc.micro_batch
        self.val_batches = (
            validation_batches(self.val_data, tc.seq_len, eval_bs, tc.eval_batches, seed=0) if self.val_data else []
        )

    def _build_model(self) -> None:
        from scratchlm.model import GPT

        tc = self.tc
        self.model_cfg = build_model_config(self.config.model, int(self.meta["vocab_size"]), tc.seq_len)
        strategy = self.strategy
        needs = check_training_fits(
            self.model_cfg.num_params(), tc.optimizer, self.device, processes_on_host=processes_on_this_host(),
            shards=self.dist.world_size if strategy == "fsdp" else 1,
        )
        _seed_everything(tc.seed)
        self.model = GPT(self.model_cfg).to(self.device)
        remember_held(needs)
        torch.manual_seed(tc.seed + self.dist.rank)  # per-rank stream for dropout
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.wrapped = wrap_model(self.model, self.dist, strategy)
        self.sharded = strategy == "fsdp"
        self.forward = torch.compile(self.wrapped) if tc.compile else self.wrapped
        self.optimizer = build_optimizer(
            self.model,
            tc.optimizer,
            lr=tc.lr,
            weight_decay=tc.weight_decay,
            betas=(tc.beta1, tc.beta2),
            muon_lr=tc.muon_lr,
        )
        self.flops_per_token = self.model_cfg.flops_per_token(tc.seq_len)
        dtype = self.precision.autocast_dtype or torch.float32
        self.peak_flops = peak_flops_per_s(self.device, dtype)

    def _lock_out(self) -> None:
        """Hold train.out for this run until `close`: a second run into it (a job started twice)
        would resume from this one's checkpoint, cut back its log and prune its newer checkpoints
        as a dead run's. The main process holds the lock (an advisory one, dropped by the kernel
        however the run ends), before anything in train.out is read or written."""
        if not self.dist.is_main:
            return
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._unwritable_out(e) from None
        busy = (
            f"train.out = {self.out}: another pretraining run is writing there now; "
            "wait for it to end or choose another train.out"
        )
        self._out_lock.enter_context(exclusive_directory(self.out, busy, ConfigError))

    def _start_or_resume(self, resume: bool) -> None:
        if self.dist.is_main and self.ckpt_root.is_dir():
            removed = remove_abandoned_temp_dirs(self.ckpt_root)
            if removed:
                self.log.say(f"removed {removed} unfinished checkpoint folder(s) that a killed run left in {self.ckpt_root}")
        latest = ckpt.find_latest(self.ckpt_root)
        if resume and latest is not None:
            named = ckpt.named_latest(self.ckpt_root)
            if named is not None and named != latest and named.is_dir():
                missing = ", ".join(ckpt.missing_files(named))
                self.log.say(f"{named} is incomplete (no {missing}); resuming from {latest.name}, the newest complete one")
            self._restore(ckpt.load_checkpoint(latest), resumed=True)
            dropped = self._start_log(self.state.step)
            if dropped:
                self.log.say(
                    f"{self.log.path}: dropped {dropped} record(s) logged after {latest.name} was saved; "
                    "the resumed run logs those steps again"
                )
            self.log.event("resume", self.state.step, checkpoint=latest.name, data_step=self.state.data_step)
            self.log.say(f"resumed from {latest} at step {self.state.step}")
            return
        if latest is not None:
            raise ConfigError(
                f"{self.ckpt_root} already holds checkpoints; pass --resume to continue that run "
                "or choose another train.out"
            )
        if resume:
            self.log.say(f"no checkpoint in {self.ckpt_root}; starting a fresh run")
        if self.dist.is_main and self.log.path.exists():
            self.log.say(f"{self.log.path} is from a run that saved no checkpoint; starting a new log")
        self._start_log(None)

    def _unwritable_out(self, e: OSError) -> ConfigError:
        """A train.out that cannot hold the run is a config mistake, said in one line."""
        return ConfigError(f"train.out = {self.out}: cannot write the run there ({e.strerror or e})")

    def _start_log(self, resumed_step: int | None) -> int:
        """Open the metrics log (see `MetricsLogger.start`) and, for a fresh run, write
        run_config.json; a train.out that cannot hold them is a config mistake. Rank 0 alone
        writes them, so every process hears whether it could: the others went on to their first
        step and died there with a gloo "Connection closed by peer" traceback."""
        with failures_shared():
            try:
                dropped = self.log.start(resumed_step)
                if resumed_step is None and self.dist.is_main:
                    atomic_write_json(self.out / "run_config.json", to_dict(self.config))
            except OSError as e:
                raise self._unwritable_out(e) from None
        return dropped

    # --- the loop --------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train to the budget or a stop signal, evaluate, save. The signal handlers stay until the
        last checkpoint is written, so a signal at any point ends in a checkpoint."""
        session = Session(self.state.elapsed_s)
        self._last_saved = (self.state.step, self._checkpoint_has_val())
        self._install_signal_handlers()
        self._note_warmup_past_budget()
        try:
            self._catch_up_evaluation(session)
            stopped = self._train_loop(session)
            stopped = self._finish(session, stopped)
        finally:
            self._restore_signal_handlers()
        if stopped:
            self.log.say(f"stopped by {stopped} at step {self.state.step}; continue with --resume")
        summary = self._summary(session, stopped)
        if summary["speed_includes_warmup"]:
            self.log.say(
                f"tokens_per_s and mfu are over all {session.applied} step(s), warm-up included (too few to "
                f"leave out the first {WARMUP_STEPS_FOR_SPEED}): the steady pace is faster"
            )
        return summary

    def _note_warmup_past_budget(self) -> None:
        """Say so when warmup lasts as long as a step or token budget, or longer (the default
        warmup_steps and a short trial run): the last update is then still warming up, so the run
        never trains at `train.lr` and its schedule never decays."""
        tc = self.tc
        budgets = [tc.max_steps] if tc.max_steps > 0 else []
        if tc.max_tokens > 0:
            budgets.append(-(-tc.max_tokens // tc.batch_tokens))  # steps that reach it
        if not budgets or self.state.step >= tc.warmup_steps or tc.warmup_steps < min(budgets):
            return
        steps = min(budgets)
        self.log.say(
            f"train.warmup_steps = {tc.warmup_steps} is not below the budget of {counted(steps, 'step')}: the learning "
            f"rate rises for the whole run, to {steps / tc.warmup_steps:.0%} of train.lr at its last step, and never "
            f"decays; set train.warmup_steps below {steps}"
        )

    def _train_loop(self, session: Session) -> str | None:
        """Steps until the budget is spent (returns None) or a stop signal arrives (its name)."""
        tc = self.tc
        bar_options: dict[str, Any] = {} if tc.progress_bar and self.dist.is_main else {"disable": True}
        bar = progress(total=tc.max_steps or None, initial=self.state.step, desc="pretrain", unit="step", **bar_options)
        try:
            while True:
                # One collective a step: elapsed time, a stop signal, a wall-clock checkpoint due.
                minutes_due_here = tc.checkpoint_minutes and (
                    time.perf_counter() - session.last_ckpt_time >= 60 * tc.checkpoint_minutes
                )
                elapsed, stop_now, minutes_due = self._agree_max(
                    session.elapsed(), float(self._stop_signal or 0), float(bool(minutes_due_here))
                )
                self.state.elapsed_s = elapsed
                if stop_now:
                    return signal.Signals(int(stop_now)).name
                if self._budget_spent():
                    return None
                if session.attempted:  # from agreed values only: every process sets the same lr
                    self._step_seconds = (elapsed - session.base_elapsed) / session.attempted
                t0 = time.perf_counter()
                outcome = self._step()
                seconds = time.perf_counter() - t0
                session.count_attempt(seconds)
                if not outcome["applied"]:
                    continue
                session.count_step(outcome["loss"], seconds, tc.batch_tokens)
                bar.update(1)
                step = self.state.step
                if step % tc.log_every == 0 or step == 1:
                    self._log_progress(outcome, session, bar)
                eval_due, sample_due = self._evaluations_due(step)
                if eval_due or sample_due:
                    self._evaluate(step, measure_val=eval_due, sample=sample_due)
                checkpoint_due = (tc.checkpoint_every and step % tc.checkpoint_every == 0) or minutes_due
                if checkpoint_due:
                    self._interval_checkpoint(session)
        finally:
            bar.close()

    def _catch_up_evaluation(self, session: Session) -> None:
        """Run the evaluation this step was due, if a stop signal cut it short before the
        checkpoint this run resumed from was saved (the signal's checkpoint then holds no
        validation loss), and save again where a checkpoint was due at this step: the resumed run
        goes on as the uninterrupted one would have, with the same validation rows and `best`."""
        tc, step = self.tc, self.state.step
        eval_due, sample_due = self._evaluations_due(step)
        if step == 0 or not eval_due or not self.val_batches or self.state.last_val_step == step:
            return
        self._evaluate(step, measure_val=True, sample=sample_due)
        if self._checkpoint_has_val() and tc.checkpoint_every and step % tc.checkpoint_every == 0:
            self._save("interval")

    def _evaluations_due(self, step: int) -> tuple[bool, bool]:
        """(an evaluation, a sample) due after `step`: samples come every sample_every steps, or
        with each evaluation when that is unset."""
        tc = self.tc
        eval_due = bool(tc.eval_every) and step % tc.eval_every == 0
        return eval_due, (step % tc.sample_every == 0 if tc.sample_every else eval_due)

    def _interval_checkpoint(self, session: Session) -> None:
        """Save, unless the budget is spent: the last checkpoint waits for the final evaluation.
        The clock is read after the step (agreed by all processes), so a time budget this step
        used up is seen now rather than after a save that `_finish` would repeat."""
        (self.state.elapsed_s,) = self._agree_max(session.elapsed())
        if not self._budget_spent():
            self._save("interval")
            session.last_ckpt_time = time.perf_counter()

    def _log_progress(self, outcome: dict[str, Any], session: Session, bar: Any) -> None:
        tps = session.tokens_per_s_since_last_row(self.tc.batch_tokens)
        row = self._log_train_row(outcome, tps, session.elapsed())
        if bar.disable:  # no bar to show the row: a line in the log instead
            self.log.say(train_line(row, self.tc.max_steps))
        else:
            bar.set_postfix(loss=f"{outcome['loss']:.4f}", tok_s=f"{tps:,.0f}", mfu=f"{row['mfu']:.1%}")
        if session.applied > WARMUP_STEPS_FOR_SPEED + self.tc.log_every:
            self._diagnose_speed(row["mfu"])

    def _finish(self, session: Session, stopped: str | None) -> str | None:
        """The final evaluation (cut short by a stop signal) and the final checkpoint; returns the
        signal that stopped the run, if one did."""
        st = self.state
        st.elapsed_s = session.elapsed()
        if stopped is None:
            if st.last_eval_step != st.step:
                self._evaluate(st.step, measure_val=True, sample=True)
            self._check_loss_trend()
            (signum,) = self._agree_max(float(self._stop_signal or 0))
            stopped = signal.Signals(int(signum)).name if signum else None
        # A step already saved with what a checkpoint now would hold (its validation loss) is not
        # written again, whatever stopped the run.
        unsaved = self._last_saved != (st.step, self._checkpoint_has_val())
        if unsaved or not ckpt.find_latest(self.ckpt_root):
            self._save("signal" if stopped else "final")
        return stopped

    def _checkpoint_has_val(self) -> bool:
        """Whether a checkpoint written now would carry a validation loss (and so can be `best`)."""
        return self.state.last_val_step == self.state.step

    def _summary(self, session: Session, stopped: str | None) -> dict[str, Any]:
        tokens_per_s, includes_warmup = session.tokens_per_s()
        return {
            "steps": self.state.step,
            "tokens": self.state.tokens,
            "elapsed_s": self.state.elapsed_s,
            # a resume with nothing left to train: the last loss its checkpoint recorded
            "final_loss": session.last_loss if session.last_loss is not None else self.monitor.last_loss(),
            "val_loss": self.state.last_val_loss,
            "val_bpb": self.state.last_val_bpb,
            "best_val_loss": self.state.best_val_loss,
            "tokens_per_s": tokens_per_s,
            "mfu": None if tokens_per_s is None else self._mfu(tokens_per_s),
            "speed_includes_warmup": includes_warmup,  # a run too short to leave the warm-up out
            "precision": self.precision.name,
            "world_size": self.dist.world_size,
            "skipped_batches": self.state.skipped_batches,
            "rollbacks": self.state.rollbacks,
            "stopped": stopped,
            "diagnoses": list(self.diagnoses),
            "checkpoint": str(ckpt.find_latest(self.ckpt_root)),
            "out": str(self.out),
        }

    def _budget_spent(self) -> bool:
        return self._progress() >= 1.0

    def _progress(self, ahead: bool = False) -> float:
        """The share of the budget used; `ahead`: once the coming update is made, so that the last
        update of the budget gets the end of the schedule. A clock cannot be read ahead: a time
        budget counts the mean step time so far."""
        tc, st = self.tc, self.state
        n = int(ahead)
        return self._budget_share(st.step + n, st.tokens + n * tc.batch_tokens, st.elapsed_s + n * self._step_seconds)

    def _budget_share(self, steps: int, tokens: float, seconds: float) -> float:
        """The share of the budget that a position uses: whichever budget is nearest its end."""
        tc = self.tc
        shares = [0.0]
        if tc.max_steps > 0:
            shares.append(steps / tc.max_steps)
        if tc.max_tokens > 0:
            shares.append(tokens / tc.max_tokens)
        if tc.max_seconds > 0:
            shares.append(seconds / tc.max_seconds)
        return min(1.0, max(shares))

    def _warmup_progress(self) -> float:
        """The share of the budget used when warmup ended, where the decay starts. The position is
        recorded in the train state by the update that ends warmup (`_apply`; saved with
        checkpoints, so a resumed run decays as an uninterrupted one); a checkpoint from before it
        was recorded gets it in proportion to its steps (exact for a step or token budget with an
        unchanged batch)."""
        tc, st = self.tc, self.state
        if st.step < tc.warmup_steps:
            return 0.0  # still warming up: no decay yet
        if st.warmup_end_tokens is None or st.warmup_end_s is None:
            share = tc.warmup_steps / st.step if st.step else 0.0  # 1 when warmup ends now
            st.warmup_end_tokens, st.warmup_end_s = round(st.tokens * share), st.elapsed_s * share
        return self._budget_share(tc.warmup_steps, st.warmup_end_tokens, st.warmup_end_s)

    def _step(self) -> dict[str, Any]:
        """One optimizer step's worth of micro-batches, judged before it touches the weights."""
        tc, st = self.tc, self.state
        factor = lr_factor(
            st.step, tc.warmup_steps, self._progress(ahead=True), tc.schedule, tc.min_lr_ratio, tc.decay_fraction,
            warmup_progress=self._warmup_progress(),
        )
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        self.model.train()
        data_step = st.data_step
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float32)
        for micro in range(self.grad_accum):
            x, y = self.batcher.batch(
                data_step, micro, self.dist.rank, self.dist.world_size, self.grad_accum, device=self.device
            )
            with sync_gradients(self.wrapped, micro == self.grad_accum - 1):
                with autocast(self.device, self.precision):
                    out = self.forward(x, targets=y, z_loss=tc.z_loss)  # fused head + cross-entropy
                loss = inject_fault(out.loss, data_step, self.config.debug)
                objective = inject_fault(out.objective, data_step, self.config.debug) / self.grad_accum
                if self.scaler is not None:
                    self.scaler.scale(objective).backward()
                else:
                    objective.backward()
            loss_sum += loss.detach()
        mean_loss = loss_sum / self.grad_accum
        if self.dist.world_size > 1:
            mean_loss = all_reduce_mean(mean_loss)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = self._clip_gradients()
        loss_value, norm_value = float(mean_loss), float(grad_norm)
        verdict = self.monitor.judge(loss_value, norm_value)
        outcome = {"applied": verdict.ok, "loss": loss_value, "grad_norm": norm_value, "lr": tc.lr * factor}
        if verdict.ok:
            self._apply(verdict, loss_value, norm_value, data_step)
        else:
            self._reject(verdict, loss_value, data_step)
        return outcome

    def _apply(self, verdict: Verdict, loss_value: float, norm_value: float, data_step: int) -> None:
        tc, st = self.tc, self.state
        if verdict.kind == "shift":
            self.log.event("spike", st.step, data_step=data_step, action="rebaseline", **verdict.detail)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self._zero_grad()
        self.monitor.accept(loss_value, norm_value)
        self.loss_history.add(loss_value)
        st.step += 1
        st.data_step += 1
        st.tokens += tc.batch_tokens
        if st.step == tc.warmup_steps and st.warmup_end_tokens is None:
            # Recorded now, so a checkpoint of this very step holds it (a rollback to it must not
            # estimate it). The clock was last agreed as this step began: add the mean step time.
            st.warmup_end_tokens, st.warmup_end_s = st.tokens, st.elapsed_s + self._step_seconds

    def _reject(self, verdict: Verdict, loss_value: float, data_step: int) -> None:
        """Keep the update off the weights: skip the batch, or roll back on a spike."""
        if self.scaler is not None:
            # Every unscale_ needs its update() before the next one, whatever happens to the step.
            # Before a rollback too, which then puts the checkpoint's scale back.
            self.scaler.update()
        if verdict.kind == "nonfinite":
            self._on_nonfinite(verdict, loss_value)
        elif self.config.monitor.response == "rollback":
            self._rollback(data_step, verdict.detail)
        else:
            self._skip_batch("spike", {**verdict.detail, "action": "skip"})

    def _on_nonfinite(self, verdict: Verdict, loss_value: float) -> None:
        tc, st = self.tc, self.state
        self._skip_batch("nan_skip", verdict.detail)
        if self.monitor.consecutive_nonfinite == 1:
            self._overflows_in_a_row = 0  # a new run of non-finite steps
        if self.scaler is not None and math.isfinite(loss_value) and self.scaler.get_scale() >= 1.0:
            # fp16 overflow: the scaler has lowered its scale; move on. Below 1 the scale no longer
            # magnifies the gradients, so they are non-finite on their own (a NaN gradient under a
            # finite loss): forgiven there too, the scale fell to 0 and every batch was skipped.
            self._overflows_in_a_row += 1
            return
        advice = diagnosis.nonfinite_loss(
            st.step, verdict.detail["loss"], verdict.detail["grad_norm"], tc.grad_clip, self._rates(), self.precision.name
        )
        self._diagnose("nonfinite", advice)  # said once per run
        # The scaler's overflows before these steps do not count: they were the scale's doing.
        in_a_row = self.monitor.consecutive_nonfinite - self._overflows_in_a_row
        if in_a_row >= self.config.monitor.max_nonfinite:
            # this step's advice, not the latest diagnosis (which may be about something else)
            raise TrainingStopped(f"{counted(in_a_row, 'non-finite step')} in a row at step {st.step}: {advice}")

    def _zero_grad(self) -> None:
        """Gradients are freed between steps, so the next backward hands each weight its gradient
        instead of zero-filling a kept buffer and adding into it (two passes over every gradient).
        On CPU that needs freed memory to be reused as it is (`train.keep_host_memory`, the
        default): under glibc's defaults each freed gradient goes back to the kernel, and taking it
        again page-faults it in, so there the buffers are kept and zeroed. Measured on 2 cores
        (fused AdamW, clipping; benchmarks/RESULTS.md, twenty-first session): freeing made a 124M
        step 5-11% faster, and at the tiny and 10M shapes 0.99-1.04× (within the noise)."""
        self.optimizer.zero_grad(set_to_none=self.device.type != "cpu" or self._host_memory_kept)

    def _clip_gradients(self) -> torch.Tensor:
        """Global gradient norm (before clipping); clips to train.grad_clip when it is set."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.tc.grad_clip if self.tc.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        if hasattr(norm, "full_tensor"):  # FSDP2 DTensor
            norm = norm.full_tensor()
        return norm

    def _skip_batch(self, event: str, detail: dict[str, Any]) -> None:
        self._zero_grad()
        self.log.event(event, self.state.step, data_step=self.state.data_step, **detail)
        self.state.data_step += 1
        self.state.skipped_batches += 1

    def _rollback(self, spike_data_step: int, detail: dict[str, Any]) -> None:
        """Back to the last good checkpoint, then past the batches that led into the spike."""
        mc = self.config.monitor
        latest = ckpt.find_latest(self.ckpt_root)
        if latest is None:
            self._skip_batch("spike", {**detail, "action": "skip", "why": "no checkpoint to roll back to"})
            return
        if self.state.rollbacks >= mc.max_rollbacks:
            message = diagnosis.instability(
                self.state.step, self.state.rollbacks, detail["loss"], detail["loss_mean"], self.tc.grad_clip, self._rates(),
                self.tc.z_loss, self.precision.name,
            )
            self._diagnose("instability", message)
            raise TrainingStopped(message)
        from_step = self.state.step
        self._zero_grad()
        self._restore(ckpt.load_checkpoint(latest), resumed=False)
        # The checkpoint's step, but not its state: the data position and counts move on below, so
        # a stop before the next save must write them (else a resume replays the spike).
        self._last_saved = None
        self.state.rollbacks += 1
        resume_at = max(self.state.data_step + mc.rollback_skip_batches, spike_data_step + 1)
        skipped = resume_at - self.state.data_step
        self.state.data_step = resume_at
        self.state.skipped_batches += skipped
        self.log.event("spike", from_step, data_step=spike_data_step, action="rollback", **detail)
        self.log.event("rollback", from_step, to_step=self.state.step, checkpoint=latest.name, skipped_batches=skipped)
        self.log.say(f"loss spike at step {from_step}: rolled back to {latest.name}, skipping {counted(skipped, 'batch', 'batches')}")

    # --- evaluation, logging, diagnosis ----------------------------------------------------

    def _log_train_row(self, outcome: dict[str, Any], tokens_per_s: float, elapsed: float) -> dict[str, Any]:
        row = {
            "step": self.state.step,
            "loss": outcome["loss"],
            "lr": outcome["lr"],
            "grad_norm": outcome["grad_norm"],
            "tokens": self.state.tokens,
            "tokens_per_s": tokens_per_s,
            "mfu": self._mfu(tokens_per_s),
            "precision": self.precision.name,
            "world_size": self.dist.world_size,
            "elapsed_s": elapsed,
        }
        self.log.log(row)
        return row

    def _mfu(self, tokens_per_s: float) -> float:
        if not self.peak_flops:
            return 0.0
        return mfu(self.flops_per_token, tokens_per_s / self.dist.world_size, self.peak_flops)

    def _evaluate(self, step: int, measure_val: bool, sample: bool) -> None:
        """Validation loss (unless only a sample is due) and a sample, logged as one row. A stop
        signal cuts the evaluation short and records nothing: a loss over part of the batches
        would not compare with the others."""
        row: dict[str, Any] = {"step": step}
        if self.val_batches and measure_val:
            try:
                result = evaluate_loss(
                    self.model, self._val_batches_until_stopped(), self.token_bytes, self.precision, self.device
                )
            except EvaluationInterrupted:
                return
            if not math.isfinite(float(result["val_loss"])):
                self._stop_diverged(step, "the validation loss is not finite")
            row.update(self._record_val(step, float(result["val_loss"]), float(result["val_bpb"])))
        if self.tc.sample_tokens > 0 and sample:
            try:
                ids = self._sample(step)
            except NonFiniteLogits:
                self._stop_diverged(step, "the sample's logits are not finite")
            row["sample"] = self.tokenizer.decode(ids)
            found = diagnosis.repetitive_sample(
                ids, self.config.monitor.repetition_threshold, self.model_cfg.num_params()
            )
            if found:
                self._diagnose("repetitive_samples", found)
        if len(row) > 1:  # more than the step: something was measured
            self.log.log(row)
            self.log.say(eval_line(row, self.state.best_val_loss))
            if measure_val or not self.val_batches:  # without a val split, a sample is the whole evaluation
                self.state.last_eval_step = step
        if self.loss_history.count >= 50:
            self._check_loss_trend()

    def _stop_diverged(self, step: int, found_by: str) -> NoReturn:
        """An evaluation found the weights broken: training on them could only skip step after
        step, and a checkpoint of them is worth nothing, so the run stops as unstable (every
        process alike: they all see the same weights and batches)."""
        advice = diagnosis.nonfinite_weights(step, found_by, self.tc.grad_clip, self._rates())
        self._diagnose("nonfinite_weights", advice)
        raise TrainingStopped(advice)

    def _val_batches_until_stopped(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The validation batches, broken off by a stop signal. One process only: with several,
        every rank must run the same forwards (FSDP gathers weights inside them), so the
        evaluation finishes and the signal is acted on after it."""
        for batch in self.val_batches:
            if self._stop_signal is not None and self.dist.world_size == 1:
                raise EvaluationInterrupted
            yield batch

    def _record_val(self, step: int, val_loss: float, val_bpb: float) -> dict[str, float]:
        st = self.state
        st.last_val_loss, st.last_val_bpb, st.last_val_step = val_loss, val_bpb, step
        if math.isfinite(val_loss) and (st.best_val_loss is None or val_loss < st.best_val_loss):
            st.best_val_loss = val_loss
        return {"val_loss": val_loss, "val_bpb": val_bpb}

    def _check_loss_trend(self) -> None:
        """Judged over the whole run's losses, not this process's: a resumed run's tail alone
        may be flat though the run learned fine."""
        found = self.loss_history.judge(self._rates())
        if found:
            self._diagnose("loss_not_decreasing", found)

    def _sample_prompt_ids(self) -> list[int]:
        """`train.sample_prompt` as token ids, checked before training: found at the first sample,
        a prompt the model's context cannot hold would end the run."""
        tc = self.tc
        prompt = self.tokenizer.encode_ordinary(tc.sample_prompt) or [self.tokenizer.eot_id]
        if tc.sample_tokens and len(prompt) >= self.model_cfg.max_seq_len:
            raise ConfigError(
                f"train.sample_prompt is {len(prompt)} tokens, which leaves no room to sample in the model's "
                f"{self.model_cfg.max_seq_len}-token context; shorten it or set train.sample_tokens = 0"
            )
        return prompt

    def _sample(self, step: int) -> list[int]:
        """A short continuation of `train.sample_prompt`, drawn without disturbing training RNG."""
        from scratchlm.infer import generate

        tc = self.tc
        room = self.model_cfg.max_seq_len - len(self.sample_prompt)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            ids = generate(
                self.model,
                self.sample_prompt,
                max_new_tokens=min(tc.sample_tokens, room),
                temperature=tc.sample_temperature,
                top_k=tc.sample_top_k or None,
                seed=tc.seed + step,
                vocab_limit=self.tokenizer.vocab_size,  # a padded model vocab has ids no tokenizer decodes
            )
        return [int(i) for i in ids]

    def _diagnose_speed(self, mfu_value: float) -> None:
        if "low_throughput" in self._diagnosed or not self.peak_flops:
            return
        found = diagnosis.low_throughput(mfu_value, self.config.monitor.low_mfu, self.device, self.dist.world_size)
        if found:
            self._diagnose("low_throughput", found)
        else:
            self._diagnosed.add("low_throughput")  # judged once, when the run is warm

    def _rates(self) -> diagnosis.Rates:
        """The configured rates and the schedule's factor of the latest step (every group's rate is
        its `base_lr` times it): advice about a step names what that step trained at, and the Muon
        rate when Muon trains the matrices."""
        muon_lr = self.tc.muon_lr if self.tc.optimizer == "muon" else None
        group = self.optimizer.param_groups[0]
        return diagnosis.Rates(self.tc.lr, muon_lr, float(group["lr"]) / group["base_lr"])

    def _diagnose(self, kind: str, message: str) -> None:
        """Say it once per run, in words, and log it as a `diagnosis` event."""
        if kind in self._diagnosed:
            return
        self._diagnosed.add(kind)
        self.diagnoses.append(message)
        self.log.event("diagnosis", self.state.step, kind=kind, message=message)
        self.log.say(f"diagnosis: {message}")

    # --- checkpoints -----------------------------------------------------------------------

    def _save(self, reason: str) -> None:
        has_val = self._checkpoint_has_val()
        self._last_saved = (self.state.step, has_val)
        weights, optim_state = self._full_states()
        rng_states = self._gather(ckpt.capture_rng())
        # Also the barrier: no process goes on before the checkpoint is whole, or if it failed.
        with failures_shared():
            self._write_checkpoint(reason, has_val, weights, optim_state, rng_states)

    def _write_checkpoint(
        self, reason: str, has_val: bool, weights: dict[str, torch.Tensor], optim_state: dict[str, Any],
        rng_states: list[Any],
    ) -> None:
        """The main process's part of `_save`: the files, pruning and the log's event."""
        if self.dist.is_main:
            from scratchlm.model.io import weights_for_saving

            st = self.state
            train_state = {
                **asdict(st),
                "val_loss": st.last_val_loss if has_val else None,
                "monitor": self.monitor.state_dict(),
                "loss_history": self.loss_history.state_dict(),
                "schedule": {"kind": self.tc.schedule, "progress": self._progress()},
                "world_size": self.dist.world_size,
                "grad_accum": self.grad_accum,
                "tokenizer_sha256": self.tokenizer.sha256,
                "tokens_splits": self.meta["splits"],  # what the data was: a resume notes another
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "config": to_dict(self.config),
                "reason": reason,
            }
            path = ckpt.save_checkpoint(
                self.ckpt_root,
                st.step,
                weights_for_saving(self.model, weights),
                to_dict(self.model_cfg),
                optim_state,
                rng_states,
                train_state,
                tokenizer_dir=self.tokenizer_dir,
            )
            ckpt.prune_checkpoints(self.ckpt_root, self.tc.keep_last, written=path)
            self.log.event("checkpoint", st.step, path=str(path), reason=reason)

    def _full_states(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Whole (unsharded) model and optimizer state; with FSDP every rank takes part."""
        if not self.sharded:
            return self.model.state_dict(), self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return (
            get_model_state_dict(self.model, options=options),
            get_optimizer_state_dict(self.model, self.optimizer, options=options),
        )

    def _gather(self, obj: Any) -> list[Any]:
        if self.dist.world_size == 1:
            return [obj]
        gathered: list[Any] = [None] * self.dist.world_size
        torch.distributed.all_gather_object(gathered, obj)
        return gathered

    def _restore(self, loaded: dict[str, Any], resumed: bool) -> None:
        """Put weights, optimizer, RNG, monitor and position back as a checkpoint holds them."""
        saved = loaded["train_state"]
        position = TrainState.from_saved(saved, loaded["path"] / ckpt.CHECKPOINT_STATE_FILE)
        history = diagnosis.LossHistory.from_state(saved.get("loss_history"))
        if history is None:
            raise CheckpointError(
                f"{loaded['path'] / ckpt.CHECKPOINT_STATE_FILE}: 'loss_history' is {brief(saved['loss_history'])}, "
                f"not the run's loss history; {ckpt.DAMAGED_ADVICE}"
            )
        # The tokenizer first: another tokenizer's vocabulary also changes the model config, and
        # blaming [model] would send the user to the wrong section.
        if saved.get("tokenizer_sha256") != self.tokenizer.sha256:
            raise CheckpointError(f"{loaded['path']}: made with another tokenizer than the tokens dir's")
        if loaded["model_config"] != to_dict(self.model_cfg):
            saved_model = (saved.get("config") or {}).get("model")
            hint = ""
            if isinstance(saved_model, dict) and "preset" not in saved_model and self.config.model.get("preset"):
                # saved before a [model] without a preset started from the default one
                hint = "; that run's [model] named no preset, which then meant none: resume it with --set model.preset=none"
            raise CheckpointError(
                f"{loaded['path']}: the checkpoint's model config differs from this run's [model] section ("
                + _differences(loaded["model_config"], to_dict(self.model_cfg)) + ")" + hint
            )
        self._check_same_optimizer(saved, loaded["path"])
        if resumed:
            self._note_changed_settings(saved)
            self._note_changed_tokens(saved)
        optimizer_file = loaded["path"] / "optimizer.pt"
        ckpt.check_optimizer_fits(loaded["optimizer"], self.optimizer, optimizer_file)
        # Loading an optimizer state brings back the hyperparameters it was saved with; this run's
        # config has the last word on them (a resume with a lower lr must train with the lower lr).
        own_settings = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        tensors = loaded["model"]
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            if self.model_cfg.tie_embeddings:
                tensors = {**tensors, "lm_head.weight": tensors["tok_emb.weight"]}
            options = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.model, tensors, options=options)
            # Collectives inside: the fit was checked above, so an error here is the processes'.
            by_name = ckpt.optimizer_state_by_name(loaded["optimizer"], self.optimizer, self.model)
            set_optimizer_state_dict(self.model, self.optimizer, by_name, options=options)
        else:
            from scratchlm.model.io import load_state_into

            load_state_into(self.model, tensors, str(loaded["path"]))
            with ckpt.as_checkpoint_error(optimizer_file, ckpt.OPTIMIZER_MISFIT):
                self.optimizer.load_state_dict(loaded["optimizer"])
        for group, settings in zip(self.optimizer.param_groups, own_settings):
            group.update(settings)
        if self.scaler is not None and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        rng = loaded["rng"].get(f"rank{self.dist.rank}")
        if rng is not None:
            with ckpt.as_checkpoint_error(loaded["path"] / "rng.pt", "holds RNG states that cannot be restored"):
                ckpt.restore_rng(rng)
        else:  # a different number of processes than when it was saved
            _seed_everything(self.tc.seed + 1000 * position.step + self.dist.rank)
        self.monitor.load_state_dict(saved.get("monitor", {}))
        # A rollback too: the losses of the steps it undoes no longer count.
        self.loss_history = history
        before = self.state
        self.state = position
        if not resumed:  # a rollback keeps the clock and the count of rollbacks
            self.state.elapsed_s = before.elapsed_s
            self.state.rollbacks = before.rollbacks
            # skipped_batches stays the checkpoint's: the rollback adds every batch from its data
            # position on, those skipped since included (kept, they would count twice)

    def _check_same_optimizer(self, saved: dict[str, Any], path: Path) -> None:
        """A checkpoint's optimizer state only fits the optimizer that wrote it (the resolved
        config in train_state.json names it; older checkpoints without it fail at the load)."""
        kind = _saved_setting(saved, "train", "optimizer")
        if kind is not None and kind != self.tc.optimizer:
            raise CheckpointError(
                f"{path}: trained with train.optimizer = {kind!r}, but this run sets {self.tc.optimizer!r}; "
                f"resume with train.optimizer = {kind!r} (or start a new run in another train.out)"
            )

    def _note_changed_tokens(self, saved: dict[str, Any]) -> None:
        """Says when the tokens dir's contents differ from the checkpoint's (re-tokenized, or grown
        by --append, at the same path): no setting changed, yet the batches that follow do.
        Checkpoints older than the record say nothing."""
        before = saved.get("tokens_splits")
        now = self.meta["splits"]
        if not isinstance(before, dict) or before == now:
            return
        counts = [
            f"{split} {before.get(split, {}).get('tokens', 0):,} -> {now.get(split, {}).get('tokens', 0):,} tokens"
            for split in sorted(before.keys() | now.keys())
            if before.get(split) != now.get(split) and isinstance(before.get(split, {}), dict)
        ]
        self.log.say(
            f"the tokens dir changed since this checkpoint ({', '.join(counts)}): the batches that follow "
            "differ from an uninterrupted run's"
        )

    def _note_changed_settings(self, saved: dict[str, Any]) -> None:
        """Says which settings differ from the checkpoint's run. Changing them is allowed, but a
        resumed run then differs from an uninterrupted one: the batch stream continues by step
        number, so data settings change which data comes next (a bigger batch skips ahead, a new
        seed or mode starts another order, a sequential epoch no longer sees every window once);
        optimizer settings change the updates from here on; a new budget moves the schedule."""
        now = to_dict(self.config)
        groups = (
            (DATA_STREAM_SETTINGS, "data", "the batch stream continues by step, so the data that follows differs "
             "from an uninterrupted run"),
            (OPTIMIZER_SETTINGS[self.tc.optimizer], "optimizer", "they apply from this step on"),
            (BUDGET_SETTINGS, "budget", "the learning-rate schedule is laid over the new budget from this step on, "
             "so the rate jumps to where the new curve is"),
        )
        for settings, kind, consequence in groups:
            changed = [
                f"{section}.{key} {old!r} -> {now[section][key]!r}"
                for section, key in settings
                if (old := _saved_setting(saved, section, key)) is not None
                and not same_setting((section, key), old, now[section][key])
            ]
            if changed:
                self.log.say(f"resuming with changed {kind} settings (" + ", ".join(changed) + f"): {consequence}")

    # --- processes and signals -------------------------------------------------------------

    def _agree_max(self, *values: float) -> list[float]:
        """The largest of each value over all processes, so every rank takes the same decision."""
        if self.dist.world_size == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return t.tolist()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        now = time.monotonic()
        if self._stop_signal is not None:
            if signum == self._stop_signal and now - self._stop_signal_time < REPEATED_SIGNAL_S:
                return  # the same stop delivered again (see REPEATED_SIGNAL_S)
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt  # stop at once
        self._stop_signal, self._stop_signal_time = signum, now

    def _restore_signal_handlers(self) -> None:
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers.clear()

    def close(self) -> None:
        """Release the log and train.out. The process group stays up for the next run in this
        process (`sweep-lr`): `init_distributed` leaves it at exit."""
        try:
            self.log.close()
        finally:
            self._out_lock.close()  # else a later run into train.out in this process is refused as busy


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> str:
    """`key: A in the checkpoint, B here` for each model field that differs, so a refused resume
    says which [model] setting to give."""
    return "; ".join(
        f"{key}: {saved.get(key)!r} in the checkpoint, {now.get(key)!r} here"
        for key in sorted(saved.keys() | now.keys())
        if saved.get(key) != now.get(key)
    )


class EvaluationInterrupted(Exception):
    """A stop signal arrived during an evaluation (internal: `_evaluate` catches it)."""


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

"""`PretrainConfig`: every setting of a pretraining run, one TOML section per concern.

The `[model]` section is a free table on purpose: it holds `preset` plus any field of
`scratchlm.model.ModelConfig`, and is checked against that dataclass when the model is built, so
a new model field needs no change here. A `[model]` that names no preset starts from
`DEFAULT_MODEL_PRESET`, so giving one field changes that field only.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from scratchlm.config import from_dict, integer_value, load_config, require_finite_number
from scratchlm.errors import ConfigError
from scratchlm.fsutil import require_utf8_path

if TYPE_CHECKING:  # the model package imports torch: not at config time
    from scratchlm.model import ModelConfig

# The preset a [model] section starts from when it names none (`--set model.preset=none`: none).
DEFAULT_MODEL_PRESET = "tiny"

# Range checks by name; 0 often means "off", so it is allowed for the non-negative ones.
POSITIVE_TRAIN_KEYS = (
    "batch_tokens", "micro_batch", "seq_len", "log_every", "keep_last", "lr", "muon_lr", "eval_batches",
)
NON_NEGATIVE_TRAIN_KEYS = (
    "max_steps", "max_tokens", "max_seconds", "warmup_steps", "weight_decay", "grad_clip", "z_loss",
    "eval_every", "eval_batch_size", "sample_every", "sample_tokens", "sample_temperature", "sample_top_k",
    "checkpoint_every", "checkpoint_minutes",
)
# Fractions range-checked in TrainSection.validate on their own bounds.
_UNIT_RANGE_TRAIN_KEYS = ("min_lr_ratio", "decay_fraction", "beta1", "beta2")
POSITIVE_MONITOR_KEYS = ("window", "max_nonfinite")
NON_NEGATIVE_MONITOR_KEYS = (
    "min_history", "loss_threshold", "grad_threshold", "rollback_skip_batches", "max_rollbacks",
    "max_consecutive_spikes", "low_mfu",
)


def _check_ranges(section: Any, name: str, positive: tuple[str, ...], non_negative: tuple[str, ...]) -> None:
    """One ConfigError naming the first setting of `[name]` out of its range. Finite first: NaN
    passes every comparison below, and a config built in Python has not met the loader's check."""
    for key in positive + non_negative:
        require_finite_number(f"{name}.{key}", getattr(section, key))
    for key in positive:
        if getattr(section, key) <= 0:
            raise ConfigError(f"{name}.{key} must be positive, got {getattr(section, key)}")
    for key in non_negative:
        if getattr(section, key) < 0:
            raise ConfigError(f"{name}.{key} must be >= 0, got {getattr(section, key)}")


@dataclass
class DataSection:
    tokens: str = ""  # a tokens dir made by `scratchlm data tokenize`
    mode: Literal["random", "sequential", "document"] = "random"


@dataclass
class TrainSection:
    out: str = "runs/pretrain"
    seed: int = 1337
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # Budgets: the run stops at whichever comes first; 0 means "no limit" (one must be set).
    max_steps: int = 0
    max_tokens: int = 0
    max_seconds: float = 0.0
    # Batch: micro_batch x seq_len x grad_accum x world_size = batch_tokens.
    batch_tokens: int = 16384
    micro_batch: int = 16
    seq_len: int = 256
    # Optimizer and schedule.
    optimizer: Literal["adamw", "muon"] = "adamw"
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    decay_fraction: float = 0.2  # the decay share of a warmup-stable-decay schedule (of the budget after warmup)
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 turns clipping off
    muon_lr: float = 0.02
    z_loss: float = 0.0  # weight of the z-loss (log of the softmax normaliser, squared)
    compile: bool = False
    # CPU runs: glibc keeps freed memory (train/host_memory.py), so gradients are freed between
    # steps instead of kept and zeroed (PretrainRun._zero_grad); false: neither
    keep_host_memory: bool = True
    strategy: Literal["ddp", "fsdp"] = "ddp"
    # Evaluation and samples.
    eval_every: int = 250  # 0: only at the end
    eval_batches: int = 20
    eval_batch_size: int = 0  # 0: the micro batch
    sample_every: int = 0  # steps between samples, evaluation or not; 0: a sample with every evaluation
    sample_tokens: int = 64
    sample_prompt: str = "\n"
    sample_temperature: float = 0.8
    sample_top_k: int = 50
    # Checkpoints.
    checkpoint_every: int = 1000  # steps; 0: only at the end (and on signals)
    checkpoint_minutes: float = 0.0  # also every N minutes of wall clock; 0: off
    keep_last: int = 3
    # Logging.
    log_every: int = 10
    tensorboard: bool = True  # write TensorBoard events when the package is installed
    progress_bar: bool = True

    def validate(self) -> None:
        """Every setting checked before the run starts: a bad one found after hours of training
        (say, at the first sample) would cost the run."""
        _check_ranges(self, "train", POSITIVE_TRAIN_KEYS, NON_NEGATIVE_TRAIN_KEYS)  # first: a negative budget is a typo
        if self.max_steps <= 0 and self.max_tokens <= 0 and self.max_seconds <= 0:
            raise ConfigError("[train] needs a budget: set max_steps, max_tokens or max_seconds")
        if not -(2**63) <= self.seed < 2**63:  # torch seeds take 64 bits; offsets (rank, step) must still fit
            raise ConfigError(f"train.seed must be in [-2**63, 2**63), got {self.seed}")
        for key in _UNIT_RANGE_TRAIN_KEYS:  # finite numbers first: "0.9", None or False are no betas
            require_finite_number(f"train.{key}", getattr(self, key))
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 < self.decay_fraction <= 1:
            raise ConfigError(f"train.decay_fraction must be in (0, 1], got {self.decay_fraction}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be in [0, 1), got {getattr(self, name)}")


@dataclass
class MonitorSection:
    window: int = 50  # steps in the rolling mean/std of loss and gradient norm
    min_history: int = 20  # steps seen before spikes are judged
    loss_threshold: float = 6.0  # a spike: loss above mean + threshold * std
    grad_threshold: float = 12.0  # ... or gradient norm above mean + threshold * std
    response: Literal["skip", "rollback"] = "skip"
    rollback_skip_batches: int = 20  # batches skipped after a rollback (PaLM skipped 200-500)
    max_rollbacks: int = 3  # then stop with a diagnosis
    max_consecutive_spikes: int = 10  # more in a row is a lasting shift: re-baseline and train on
    max_nonfinite: int = 5  # consecutive non-finite steps before stopping
    low_mfu: float = 0.01  # diagnose throughput below this model-FLOPs utilisation
    repetition_threshold: float = 0.5  # diagnose samples whose distinct 4-gram share is below

    def validate(self) -> None:
        _check_ranges(self, "monitor", POSITIVE_MONITOR_KEYS, NON_NEGATIVE_MONITOR_KEYS)
        if not 1 <= self.min_history <= self.window:  # judged against no history, or never judged
            raise ConfigError(
                f"monitor.min_history must be in [1, monitor.window = {self.window}] (the rolling history holds "
                f"at most window losses), got {self.min_history}"
            )
        if not 0 <= self.repetition_threshold <= 1:
            raise ConfigError(f"monitor.repetition_threshold must be in [0, 1], got {self.repetition_threshold}")


@dataclass
class DebugSection:
    inject_nan_at_step: int = -1  # make the loss of this batch NaN (tests the guard)
    inject_spike_at_step: int = -1  # multiply the loss of this batch (tests spike handling)
    spike_factor: float = 50.0


@dataclass
class PretrainConfig:
    data: DataSection = field(default_factory=DataSection)
    model: dict[str, Any] = field(default_factory=lambda: {"preset": DEFAULT_MODEL_PRESET})
    train: TrainSection = field(default_factory=TrainSection)
    monitor: MonitorSection = field(default_factory=MonitorSection)
    debug: DebugSection = field(default_factory=DebugSection)

    def __post_init__(self) -> None:
        """A [model] that names no preset gets the default one written in, so the saved config
        (run_config.json, checkpoints, sweep.json) says which preset the model started from."""
        self.model = {"preset": DEFAULT_MODEL_PRESET, **self.model}

    def validate(self) -> None:
        """Every section, not only [data]: `train` calls this, so a config built or changed in
        Python (no loader to check it) cannot start a run without a budget that never ends."""
        if not self.data.tokens:
            raise ConfigError("[data] tokens is required: the tokens dir made by `scratchlm data tokenize`")
        self.train.validate()
        self.monitor.validate()


def setting_path(value: str) -> Path:
    """A path setting (`train.out`, `data.tokens`) as a shell would read it, a leading `~` being the
    home directory. Every use goes through it: the checkpoint writer (`fsutil.check_output_dir`)
    expands `~` on its own, so a run that took the path as written put its log and `latest` in a
    folder named `~` and its checkpoints in the home directory, where `--resume` never looked."""
    return Path(value).expanduser()


def check_train_out(config: PretrainConfig) -> Path:
    """`train.out` as an absolute path, or one ConfigError where a run there would be lost: empty
    (a typo that would spread the run over the current directory), not a directory, or the tokens
    dir or inside it (`data tokenize --out` replaces the tokens dir whole, run and all). A run only
    adds its files beside whatever else a directory holds, so any other one will do: the current
    directory, or one that holds the tokens (`work/` beside `work/tokens/`)."""
    out = config.train.out
    if not out.strip():
        raise ConfigError("train.out is empty; name the run's directory (e.g. runs/pretrain)")
    require_utf8_path(out, "train.out = ", ConfigError)
    try:
        path = setting_path(out).resolve()
        tokens = setting_path(config.data.tokens).resolve()
    except (RuntimeError, OSError) as e:  # a symlink loop (RuntimeError before Python 3.13)
        raise ConfigError(f"train.out = {out}: cannot be resolved ({e})") from None
    if path == tokens or tokens in path.parents:
        where = "is" if path == tokens else "is inside"
        raise ConfigError(
            f"train.out = {out}: {where} the tokens dir {config.data.tokens}, which `data tokenize --out` "
            "replaces whole; choose a directory outside it"
        )
    if path.exists() and not path.is_dir():
        raise ConfigError(f"train.out = {out}: exists and is not a directory; choose another train.out")
    checkpoints = path / "checkpoints"  # found only at the first save, after the training it was to keep
    if checkpoints.exists() and not checkpoints.is_dir():
        raise ConfigError(
            f"train.out = {out}: holds a file named checkpoints, where the run keeps its checkpoint folders; "
            "move it or choose another train.out"
        )
    return path


# Settings that name a path: the same directory however it is spelled (`tokens/` and `tokens`).
PATH_SETTINGS = (("data", "tokens"),)


def same_setting(setting: tuple[str, str], old: Any, new: Any) -> bool:
    """Whether a setting kept its value; a path is the same directory however it is spelled
    (relative or absolute, through a link), or, where one no longer exists, written alike."""
    if setting in PATH_SETTINGS and isinstance(old, str) and isinstance(new, str):
        try:
            return os.path.samefile(setting_path(old), setting_path(new))
        except (OSError, ValueError):
            return Path(old) == Path(new)
    return old == new


def load_pretrain_config(
    path: str | Path | None = None, overrides: tuple[str, ...] | list[str] = ()
) -> PretrainConfig:
    """Defaults ← TOML file ← `--set` overrides, type-checked."""
    return load_config(PretrainConfig, path, overrides)


def build_model_config(section: dict[str, Any], vocab_size: int, seq_len: int) -> ModelConfig:
    """The `ModelConfig` named by `[model]`: a preset (`DEFAULT_MODEL_PRESET` when it names none;
    a preset of None: `ModelConfig`'s own defaults), then field overrides.

    The vocabulary comes from the tokens' `meta.json` unless `[model] vocab_size` is set (it may
    be larger, e.g. padded to a multiple of 64, never smaller). Widths that derive from others
    (`d_ff`, `n_kv_head`) follow an overridden `d_model`/`mlp`/`n_head` unless given too: a
    preset's `n_kv_head` stays where it divides the new `n_head` and the preset groups its heads
    (tiny's 4 query heads share 2), else it follows `n_head`.
    """
    from scratchlm.model import ModelConfig, get_preset

    user = dict(section)
    preset = user.pop("preset", DEFAULT_MODEL_PRESET)
    fields: dict[str, Any] = {}
    if preset is not None:
        base = get_preset(str(preset))
        fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
        if ("d_model" in user or "mlp" in user) and "d_ff" not in user:
            fields.pop("d_ff", None)
        heads = integer_value(user.get("n_head"))
        if heads and "n_kv_head" not in user:
            kv_heads = fields.get("n_kv_head")
            if kv_heads == fields.get("n_head") or heads % kv_heads:  # the preset's grouping cannot stay
                fields.pop("n_kv_head", None)
    fields.update(user)
    chosen = user.get("vocab_size")
    if chosen is None or integer_value(chosen) == 0:  # unset or 0: the tokenizer's (`false` is no 0)
        fields["vocab_size"] = vocab_size
    cfg = from_dict(ModelConfig, fields, "model")  # types checked here, before any comparison
    if cfg.vocab_size < vocab_size:
        raise ConfigError(f"model.vocab_size = {cfg.vocab_size} is smaller than the tokenizer's {vocab_size} tokens")
    if cfg.max_seq_len < seq_len:
        raise ConfigError(f"train.seq_len = {seq_len} exceeds model.max_seq_len = {cfg.max_seq_len}")
    return cfg

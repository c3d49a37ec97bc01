"""Training checkpoints: complete step directories, a `latest` pointer, pruning.

A checkpoint is `checkpoints/step-000123/` holding `model.safetensors` + `config.json` (a model
dir any stage can load), the tokenizer files, `optimizer.pt` (tensors and numbers only, read back
with `weights_only=True`), `rng.pt` (per-rank RNG states) and `train_state.json` (step, tokens,
data position, schedule, monitor, resolved config). The directory is built under a temporary
name and renamed into place; only then is `latest` rewritten, so a process killed at any moment
leaves `latest` naming a whole checkpoint.
"""

from __future__ import annotations

import random
import re
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scratchlm.config import to_dict
from scratchlm.errors import CheckpointError, ModelError, first_line, torch_error_text
from scratchlm.fsutil import (
    atomic_directory,
    atomic_write_json,
    atomic_write_text,
    is_json_number,
    read_json_object,
    remove_directory,
)
from scratchlm.model.io import (
    CHECKPOINT_STATE_FILE,
    CONFIG_FILE,
    WEIGHTS_FILE,
    load_model_config,
    read_weights,
    write_extra_files,
    write_weights_and_config,
)

STEP_DIR = re.compile(r"^step-(\d+)$")
REQUIRED_FILES = (WEIGHTS_FILE, CONFIG_FILE, CHECKPOINT_STATE_FILE, "optimizer.pt", "rng.pt")
RANK_KEY = re.compile(r"^rank\d+$")
DAMAGED_ADVICE = "move this checkpoint directory away to resume from an earlier one"
OPTIMIZER_MISFIT = "does not fit this run's optimizer and model"


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def capture_rng() -> dict[str, Any]:
    """This process's python, numpy, torch CPU and CUDA generator states, as tensors and ints."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python_version": py_version,
        "python_state": torch.tensor(py_state, dtype=torch.int64),
        "python_gauss": py_gauss,
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(
        (state["python_version"], tuple(int(v) for v in state["python_state"].tolist()), state["python_gauss"])
    )
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_gauss"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # One state per GPU the saving process could see (a torchrun worker sees the node's all);
        # a machine with fewer (another node, CUDA_VISIBLE_DEVICES) takes those of the GPUs it has.
        for index, device_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state, index)


def save_checkpoint(
    ckpt_root: str | Path,
    step: int,
    weights: dict[str, torch.Tensor],
    model_config: dict[str, Any],
    optimizer_state: dict[str, Any],
    rng_states: list[dict[str, Any]],
    train_state: dict[str, Any],
    tokenizer_dir: str | Path | None = None,
) -> Path:
    """Write one complete checkpoint directory, then point `latest` at it. Returns its path.

    `weights` are CPU tensors as `scratchlm.model.io.weights_for_saving` gives them, so the
    directory loads with `load_model` like any model dir.
    """
    root = Path(ckpt_root)
    final = root / step_dir_name(step)
    # Any step dir under the run's checkpoints/ is the run's own: one without its state file (an
    # interrupted copy) is skipped by `find_latest`, so the resumed run comes back to this step
    # and must be able to replace it.
    try:
        with atomic_directory(final, replaceable=lambda _: True, error=CheckpointError) as tmp:
            write_weights_and_config(tmp, weights, model_config)
            if tokenizer_dir is not None:
                write_extra_files(tmp, sorted(Path(tokenizer_dir).glob("*.json")))
            torch.save(optimizer_state, tmp / "optimizer.pt")
            torch.save({f"rank{r}": s for r, s in enumerate(rng_states)}, tmp / "rng.pt")
            # Written last: a step dir with a train_state.json has every other file.
            atomic_write_json(tmp / CHECKPOINT_STATE_FILE, train_state)
        atomic_write_text(root / "latest", final.name + "\n")
    except (OSError, RuntimeError) as e:  # a full disk, a quota, a size limit: say what the run still has
        if isinstance(e, RuntimeError) and not _is_write_failure(e):
            raise  # a fault of the device or the state (a CUDA error while copying), not of the disk
        reason = e.strerror if isinstance(e, OSError) and e.strerror else torch_error_text(e)
        survivor = find_latest(root)
        then = f"--resume continues from {survivor.name}" if survivor else "no earlier checkpoint to resume from"
        raise CheckpointError(f"{final}: the checkpoint could not be written ({reason}); {then}") from e
    return final


def missing_files(path: Path) -> list[str]:
    """The files of REQUIRED_FILES a step directory lacks (a copy or a save cut short)."""
    return [f for f in REQUIRED_FILES if not (path / f).is_file()]


def is_complete(path: Path) -> bool:
    return path.is_dir() and not missing_files(path)


def list_checkpoints(ckpt_root: str | Path) -> list[tuple[int, Path]]:
    """Complete step directories, oldest first (temporary and partial dirs are ignored)."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = STEP_DIR.match(p.name)
        if m and is_complete(p):
            found.append((int(m.group(1)), p))
    return sorted(found)


def find_latest(ckpt_root: str | Path) -> Path | None:
    """The checkpoint `latest` names, or the newest complete one when the pointer is missing or stale."""
    root = Path(ckpt_root)
    candidate = named_latest(root)
    if candidate is not None and is_complete(candidate):
        return candidate
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def named_latest(ckpt_root: str | Path) -> Path | None:
    """The step directory the `latest` pointer names, complete or not; None without a pointer."""
    pointer = Path(ckpt_root) / "latest"
    if not pointer.is_file():
        return None
    candidate = Path(ckpt_root) / pointer.read_text(encoding="utf-8", errors="replace").strip()  # damaged: stale
    return candidate if STEP_DIR.match(candidate.name) else None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint dir: `model` (tensors), its `model_config`, `optimizer`, `rng` (per rank)
    and `train_state`. `model_config` is the stored config with the defaults of fields it does not
    name filled in, as `load_model` reads it: a checkpoint written before a field existed compares
    equal to a run that leaves that field at its default."""
    path = Path(path)
    if not is_complete(path):
        raise CheckpointError(f"{path}: incomplete checkpoint, missing {', '.join(missing_files(path))}")
    try:
        train_state = read_json_object(path / CHECKPOINT_STATE_FILE, CheckpointError)
        model_config = to_dict(load_model_config(path))
    except (CheckpointError, ModelError) as e:
        raise CheckpointError(f"{e}; {DAMAGED_ADVICE}") from None
    try:
        model = read_weights(path / WEIGHTS_FILE)
    except (ModelError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot read checkpoint: {e}; {DAMAGED_ADVICE}") from None
    _check_finite(((f"tensor '{name}'", t) for name, t in model.items()), path / WEIGHTS_FILE, allow_inf=False)
    optimizer = _load_tensor_file(path / "optimizer.pt")
    if not _is_optimizer_state(optimizer):
        raise CheckpointError(f"{path / 'optimizer.pt'}: holds no optimizer state; {DAMAGED_ADVICE}")
    _check_finite(
        (
            (f"{name} of parameter {key}", value)
            for key, state in optimizer["state"].items() if isinstance(state, dict)
            for name, value in state.items()
        ),
        path / "optimizer.pt",
        allow_inf=True,
    )
    rng = _load_tensor_file(path / "rng.pt")
    if not _is_rng_states(rng):
        raise CheckpointError(f"{path / 'rng.pt'}: holds no per-rank RNG states; {DAMAGED_ADVICE}")
    return {
        "model": model, "model_config": model_config, "optimizer": optimizer, "rng": rng,
        "train_state": train_state, "path": path,
    }


def _load_tensor_file(path: Path) -> Any:
    """`torch.load` with weights_only=True. On bytes it did not write, torch.load fails in many
    ways (UnpicklingError, KeyError, EOFError, RuntimeError...) with messages that suggest turning
    the safety off, so each becomes one CheckpointError of our own naming the file. A read error
    (EIO, permissions) says nothing about the bytes, and running out of memory is not the file's
    fault: neither gets the advice to set the checkpoint aside."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle-protocol chatter about a file we refuse anyway
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e})") from None
    except MemoryError:
        raise
    except Exception as e:  # any other failure: see the docstring
        reason = type(e).__name__
        raise CheckpointError(f"{path}: damaged or not written by scratchlm ({reason}); {DAMAGED_ADVICE}") from None


def _check_finite(named: Iterable[tuple[str, Any]], path: Path, allow_inf: bool) -> None:
    """One CheckpointError for values no run can train on, which resumed would only end in
    non-finite steps blamed on the learning rate: a NaN anywhere, and an infinity in the weights.
    They come from damage (a flipped bit, a hand edit) or from an update that overflowed before an
    evaluation stopped the run. An optimizer moment may be infinite in a run that trains on (an
    infinite second moment only freezes its weight), so there it is let through (`allow_inf`)."""
    for what, value in named:
        if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
            continue
        bad = value.isnan().any() if allow_inf else ~torch.isfinite(value).all()
        if bool(bad):
            kind = "NaN" if allow_inf else "non-finite values (NaN or infinity)"
            raise CheckpointError(f"{path}: {what} holds {kind}; {DAMAGED_ADVICE}")


def _is_optimizer_state(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("state"), dict) and isinstance(obj.get("param_groups"), list)


def _is_rng_states(obj: Any) -> bool:
    """`{"rank0": {...}, ...}` as `save_checkpoint` writes it; what each state holds is checked
    when it is restored (under `as_checkpoint_error`)."""
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(key, str) and RANK_KEY.match(key) and isinstance(state, dict) for key, state in obj.items())
    )


def check_optimizer_fits(saved: dict[str, Any], optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Saved optimizer state against `optimizer`: the same parameter groups, each state tensor
    the shape of its parameter. Checked on each process alone, before FSDP loads the state inside
    collectives, where a misfit would surface as an error of the collective."""
    with as_checkpoint_error(path, OPTIMIZER_MISFIT):  # groups or states of the wrong types
        misfit = _optimizer_misfit(saved, optimizer.param_groups)
    if misfit:
        raise CheckpointError(f"{path}: {OPTIMIZER_MISFIT} ({misfit})")


def _optimizer_misfit(saved: dict[str, Any], own_groups: list[dict[str, Any]]) -> str | None:
    groups = saved["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in own_groups]:
        return "its parameter groups differ"
    for group, own_group in zip(groups, own_groups):
        for key, param in zip(group["params"], own_group["params"]):
            for name, value in saved["state"].get(key, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() and value.shape != param.shape:
                    return f"{name} of shape {tuple(value.shape)} for a parameter of shape {tuple(param.shape)}"
    return None


def optimizer_state_by_name(
    saved: dict[str, Any], optimizer: torch.optim.Optimizer, model: torch.nn.Module
) -> dict[str, Any]:
    """`saved` with its parameters named by path (`blocks.0.attn.qkv.weight`), as FSDP's loading of a
    whole optimizer state needs. A run without FSDP saves `Optimizer.state_dict()`, which numbers
    them in the order of the param groups; FSDP's own checkpoints are named already and pass
    through. Call it after `check_optimizer_fits`, which guarantees the groups line up."""
    names = {param: name for name, param in model.named_parameters()}
    by_number: dict[Any, str] = {}
    for group, own_group in zip(saved["param_groups"], optimizer.param_groups):
        for key, param in zip(group["params"], own_group["params"]):
            if isinstance(key, int):
                by_number[key] = names[param]
    if not by_number:
        return saved
    return {
        "state": {by_number.get(key, key): state for key, state in saved["state"].items()},
        "param_groups": [
            {**group, "params": [by_number.get(key, key) for key in group["params"]]} for group in saved["param_groups"]
        ],
    }


@contextmanager
def as_checkpoint_error(path: Path, problem: str) -> Iterator[None]:
    """Turn torch's complaints about a state that does not fit (KeyError, ValueError, ... with a
    traceback) into one CheckpointError naming the file. Wrap only work on this process: a failed
    collective is about the processes, not the file."""
    try:
        yield
    except (KeyError, ValueError, TypeError, IndexError, AttributeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: {problem} ({type(e).__name__}: {first_line(e)})") from None


# How torch.save's zip writer reports a short or failed write (a RuntimeError, not an OSError).
TORCH_WRITE_FAILURES = ("PytorchStreamWriter failed", "unexpected pos", "file write failed")


def _is_write_failure(error: RuntimeError) -> bool:
    return any(words in str(error) for words in TORCH_WRITE_FAILURES)


def prune_checkpoints(ckpt_root: str | Path, keep_last: int, written: Path | None = None) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints and the best (lowest val loss) one.

    `written`, the checkpoint just saved, is the newest: complete step folders numbered above it
    come from a run that died after writing them but before pointing `latest` there, and the run
    resumed from `latest` has replaced that future. They are deleted first, or they would be kept
    as "newest" in place of the checkpoints this run writes (and could be named best)."""
    found = list_checkpoints(ckpt_root)
    removed = []
    if written is not None and (match := STEP_DIR.match(Path(written).name)):
        newest = int(match.group(1))
        removed = [p for step, p in found if step > newest]
        for p in removed:
            remove_directory(p)
        found = [(step, p) for step, p in found if step <= newest]
    keep = {p for _, p in found[-keep_last:]}
    best = best_checkpoint(ckpt_root)
    if best is not None:
        keep.add(best)
        atomic_write_text(Path(ckpt_root) / "best", best.name + "\n")
    for _, p in found:
        if p not in keep:
            remove_directory(p)
            removed.append(p)
    return removed


def best_checkpoint(ckpt_root: str | Path) -> Path | None:
    """The complete checkpoint with the lowest recorded validation loss, if any has one. A damaged
    train_state.json (unreadable, or a `val_loss` that is no number) records none: it would
    otherwise end the run at its next save with a traceback, and every resume at the one after."""
    best, best_loss = None, float("inf")
    for _, p in list_checkpoints(ckpt_root):
        try:
            val = read_json_object(p / CHECKPOINT_STATE_FILE, CheckpointError).get("val_loss")
        except CheckpointError:
            continue
        if is_json_number(val) and val < best_loss:
            best, best_loss = p, val
    return best

"""The model directory: `model.safetensors` (weights) + `config.json` (the `ModelConfig`).

Weights are safetensors, so loading never unpickles anything. A missing, extra or mis-shaped
tensor is one `ModelError` naming it. Saving goes through a temp directory renamed into place,
so an interrupted save never leaves a directory that looks complete.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Collection, Iterable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from scratchlm.config import from_dict, to_dict
from scratchlm.errors import ConfigError, ModelError
from scratchlm.fsutil import (
    as_created,
    atomic_directory,
    atomic_write_json,
    check_output_dir,
    holds_only_files,
    read_json_object,
    read_text_file,
)
from scratchlm.model.config import ModelConfig
from scratchlm.model.gpt import AUTOCAST_DTYPES, GPT

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"  # a sharded transformers checkpoint's index

ExtraFiles = Mapping[str, "str | os.PathLike | bytes"] | Iterable["str | os.PathLike"]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain GPT inside torch.compile (`_orig_mod`) and DDP (`module`) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def weights_for_saving(model: GPT, state_dict: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, the tied output head left out (it *is* the token embedding)."""
    model = unwrap(model)
    sd = dict(model.state_dict() if state_dict is None else state_dict)
    if model.cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


CHECKPOINT_STATE_FILE = "train_state.json"  # what makes a model directory a training checkpoint


_MODEL_FILES = frozenset({WEIGHTS_FILE, CONFIG_FILE, WEIGHTS_INDEX_FILE})
_SHARD_FILE = re.compile(r"model-\d+-of-\d+\.safetensors")  # a sharded transformers checkpoint's


def is_model_dir(path: Path, carried: Collection[str] = ()) -> bool:
    """A directory holding a model (ours or a transformers one) that a conversion may replace:
    `config.json` beside weights, not a training checkpoint (which belongs to its run), and
    nothing else but a model's files and the `carried` ones (hidden files aside). A clone of a
    model's repository also holds a `.git/`, a README and more, which replacing it would delete."""
    has_weights = (path / WEIGHTS_FILE).is_file() or (path / WEIGHTS_INDEX_FILE).is_file()
    if not (path / CONFIG_FILE).is_file() or not has_weights or (path / CHECKPOINT_STATE_FILE).exists():
        return False
    return holds_only_files(
        path, lambda name: name in _MODEL_FILES or name in carried or _SHARD_FILE.fullmatch(name) is not None
    )


def save_model(
    model: torch.nn.Module,
    directory: str | os.PathLike,
    extra_files: ExtraFiles | None = None,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    inputs: Iterable[str | os.PathLike] = (),
    carried: Collection[str] = (),
) -> Path:
    """Write `model.safetensors` + `config.json` (and `extra_files`) as one atomic directory.

    An existing `directory` is replaced only if it holds a model and nothing but its files, the
    `extra_files` and files named in `carried`; one holding `inputs` never is.

    `extra_files` is either a mapping {name in the directory: source path or bytes} or a list
    of paths copied under their own names (e.g. tokenizer.json). `state_dict` replaces the
    module's own (e.g. a full state dict gathered from a sharded model).
    """
    names = extra_files.keys() if isinstance(extra_files, Mapping) else (Path(p).name for p in extra_files or ())
    with model_directory(directory, inputs, {*carried, *names}) as tmp:  # its own extra files too
        write_model_files(model, tmp, state_dict)
        write_extra_files(tmp, extra_files)
    return Path(directory)


def model_directory(
    directory: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), carried: Collection[str] = ()
) -> AbstractContextManager[Path]:
    """`atomic_directory` for a model directory: an existing `directory` is replaced only if it
    holds a model and nothing but its files and the `carried` ones, and never if it holds one
    of `inputs`."""
    return atomic_directory(directory, **_model_output_rules(inputs, carried))


def check_model_output(
    directory: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), carried: Collection[str] = ()
) -> Path:
    """Refuse `directory` now, as `save_model` would at the end: for a conversion that reads and
    builds every weight first, a refused output should cost nothing."""
    return check_output_dir(directory, **_model_output_rules(inputs, carried))


def _model_output_rules(inputs: Iterable[str | os.PathLike], carried: Collection[str]) -> dict[str, Any]:
    return {
        "what": "a model directory holding only a model's files",
        "replaceable": lambda path: is_model_dir(path, carried),
        "inputs": list(inputs),
        "error": ModelError,
    }


def write_model_files(
    model: torch.nn.Module, directory: str | os.PathLike, state_dict: Mapping[str, torch.Tensor] | None = None
) -> None:
    """Write `model.safetensors` + `config.json` into an existing directory, for callers that
    assemble a larger directory atomically themselves (e.g. a training checkpoint)."""
    model = unwrap(model)
    if not isinstance(model, GPT):
        raise TypeError(f"expected a scratchlm GPT, got {type(model).__name__}")
    write_weights_and_config(directory, weights_for_saving(model, state_dict), to_dict(model.cfg))


def write_weights_and_config(
    directory: str | os.PathLike, weights: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> None:
    """The two files of a model directory from tensors ready to save and a config dict."""
    directory = Path(directory)
    write_weights(directory / WEIGHTS_FILE, weights)
    atomic_write_json(directory / CONFIG_FILE, dict(config))


def write_weights(path: Path, weights: Mapping[str, torch.Tensor]) -> None:
    """A safetensors file of `weights`. A failed write (a full disk) is an OSError, as for any other
    file, not the library's own error type, so callers and the command line treat it as one.
    safetensors makes the file readable by its owner alone; it gets the umask's mode, as every
    other output does, so a server or a colleague running as another user can load the weights."""
    try:
        save_file(dict(weights), str(path), metadata={"format": "pt"})
        as_created(path, 0o666)
    except SafetensorError as e:
        code = re.search(r"\(os error (\d+)\)", str(e))
        if code:
            raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from None
        raise OSError(f"{path}: {e}") from None


def write_extra_files(directory: Path, extra_files: ExtraFiles | None) -> None:
    """Copy `extra_files` (see `save_model`) into `directory`."""
    if extra_files is None:
        return
    items = extra_files.items() if isinstance(extra_files, Mapping) else ((Path(p).name, p) for p in extra_files)
    for name, source in items:
        target = directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, bytes):
            target.write_bytes(source)
        elif not Path(source).is_file():
            raise ModelError(f"extra file to save with the model not found: {source}")
        else:
            shutil.copyfile(source, target)


POINTER_NAMES = ("latest", "best")


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """The model directory a user means by `path`.

    Accepts a model directory itself, a training checkpoint pointer file (`checkpoints/latest` or
    `checkpoints/best`, which hold the name of a sibling step directory), a `checkpoints/` folder
    or a run folder (both resolved through their `latest` pointer).
    """
    from scratchlm.train.checkpoint import find_latest  # imported here: checkpoint builds on this module

    p = Path(path)
    # A link to a pointer (`serve/latest` -> `run/checkpoints/latest`) names a step dir beside the
    # pointer itself, not beside the link (realpath, not resolve: a link loop is not an error here).
    pointer = Path(os.path.realpath(p)) if p.is_symlink() else p
    if pointer.is_file() and pointer.name in POINTER_NAMES:
        target = pointer.parent / read_text_file(pointer, ModelError).strip()
        if not target.is_dir():
            raise ModelError(f"{p} points to {target.name}, which does not exist")
        return target
    if p.is_dir() and not (p / CONFIG_FILE).is_file():
        found = find_latest(p) or find_latest(p / "checkpoints")
        if found is None and (p.name == "checkpoints" or (p / "checkpoints").is_dir()):
            raise ModelError(f"{p}: a training run with no complete checkpoint yet, so no model to load")
        return found or p
    return p


def load_model_config(directory: str | os.PathLike) -> ModelConfig:
    """The `ModelConfig` stored in a model directory's config.json."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ModelError(f"not a model directory (no {CONFIG_FILE}): {directory}")
    data = read_json_object(path, ModelError)
    if "model_type" in data:
        raise ModelError(
            f"{directory} holds a Hugging Face '{data['model_type']}' model; "
            f"convert it first with `scratchlm import hf {directory} --out DIR`"
        )
    try:
        return from_dict(ModelConfig, data)
    except ConfigError as e:
        raise ModelError(f"{path}: {e}") from None


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file on CPU, with a clear error if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"{path}: not a readable safetensors file: {e}") from None


def load_state_into(model: GPT, tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy `tensors` into `model`, checking every name and shape first."""
    model = unwrap(model)
    expected = check_tensors(model, tensors, source)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in expected:
            params[name].copy_(tensors[name])


def check_tensors(model: GPT, tensors: Mapping[str, torch.Tensor], source: str) -> dict[str, tuple[int, ...]]:
    """Every tensor `model` needs is in `tensors` with its shape, and nothing else is; returns the
    needed names and shapes. One clear error naming the tensor otherwise."""
    expected = expected_shapes(model)
    for name in tensors:
        if name not in expected and not (name == "lm_head.weight" and model.cfg.tie_embeddings):
            raise ModelError(f"{source}: unexpected tensor '{name}' (not part of this model's config)")
    check_tied_head(tensors, model.cfg.tie_embeddings, source)
    for name, shape in expected.items():
        if name not in tensors:
            raise ModelError(f"{source}: missing tensor '{name}'")
        check_weight(tensors[name], name, shape, source)
    return expected


WEIGHT_TENSOR_DTYPES = (*AUTOCAST_DTYPES, torch.float64)  # the floating dtypes the model runs in


def check_weight(tensor: torch.Tensor, name: str, shape: tuple[int, ...], source: str) -> None:
    """One clear error for a weight of another shape, or of a dtype the model cannot compute in:
    integers would be copied in as numbers silently, float8 fails only at the first forward."""
    if tuple(tensor.shape) != shape:
        raise ModelError(f"{source}: tensor '{name}' has shape {tuple(tensor.shape)}, the config needs {shape}")
    if tensor.dtype not in WEIGHT_TENSOR_DTYPES:
        names = ", ".join(str(dtype).removeprefix("torch.") for dtype in WEIGHT_TENSOR_DTYPES)
        raise ModelError(
            f"{source}: tensor '{name}' is {str(tensor.dtype).removeprefix('torch.')}; weights must be one of {names}"
        )


def check_tied_head(tensors: Mapping[str, torch.Tensor], tied: bool, source: str) -> None:
    """A tied model's head *is* its embedding, so a stored head that differs would be dropped
    silently and change the logits: accept it only as an exact copy."""
    head, embedding = tensors.get("lm_head.weight"), tensors.get("tok_emb.weight")
    if not tied or head is None or embedding is None:
        return
    if head.dtype != embedding.dtype or head.shape != embedding.shape or not torch.equal(head, embedding):
        raise ModelError(
            f"{source}: tensor 'lm_head.weight' differs from 'tok_emb.weight', but the config ties them "
            "(a separate output head needs an untied config)"
        )


def expected_shapes(model: GPT) -> dict[str, tuple[int, ...]]:
    names = dict(model.named_parameters())  # a tied head appears once, as tok_emb.weight
    return {name: tuple(p.shape) for name, p in names.items()}


def load_model(
    directory: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> GPT:
    """The GPT saved in `directory`, on `device`, in `dtype` (default: the file's dtype)."""
    directory = resolve_model_dir(directory)
    cfg = load_model_config(directory)
    tensors = read_weights(Path(directory) / WEIGHTS_FILE)
    return build_from_tensors(cfg, tensors, f"{Path(directory) / WEIGHTS_FILE}", device, dtype)


def build_from_tensors(
    cfg: ModelConfig,
    tensors: Mapping[str, torch.Tensor],
    source: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> GPT:
    """A GPT holding copies of exactly `tensors`, each parameter allocated once, in its final
    device and dtype. Built on the meta device, so nothing is initialised only to be overwritten;
    the parameters are then made directly, not by `to_empty`, whose meta-tensor path imports
    PyTorch's symbolic-shapes machinery (0.5 s of every `generate`'s start-up)."""
    if dtype is None:
        stored = tensors["tok_emb.weight"].dtype if "tok_emb.weight" in tensors else torch.float32
        # A stored dtype no model runs in is the file's fault, not the caller's: `check_tensors`
        # names the tensor that holds it.
        dtype = stored if stored in WEIGHT_TENSOR_DTYPES else torch.float32
    if not isinstance(dtype, torch.dtype):  # else the error below read "runs in ..., float16, not float16"
        raise ModelError(f"dtype must be a torch.dtype such as torch.bfloat16, got {dtype!r}")
    if dtype not in WEIGHT_TENSOR_DTYPES:  # a float8 or integer model would load, then fail at its first forward
        names = ", ".join(str(d).removeprefix("torch.") for d in WEIGHT_TENSOR_DTYPES)
        raise ModelError(f"{source}: a model runs in {names}, not {str(dtype).removeprefix('torch.')}")
    with torch.device("meta"):
        model = GPT(cfg)
    expected = check_tensors(model, tensors, source)
    # own, contiguous storage for each: inputs may be views (a transposed HF weight) or shared
    state = {name: torch.empty(shape, dtype=dtype, device=device).copy_(tensors[name]) for name, shape in expected.items()}
    model.load_state_dict(state, strict=False, assign=True)  # every name checked above; a tied head comes next
    model.tie_weights()
    model.reset_rope()
    model.eval()
    return model

"""The model directory: safetensors + config.json, exact round trips, clear errors."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from scratchlm.errors import ModelError
from scratchlm.model import GPT, ModelConfig, load_model, load_model_config, save_model


def small(**changes) -> ModelConfig:
    base = dict(vocab_size=50, n_layer=2, n_head=2, d_model=16, d_ff=32, max_seq_len=24)
    base.update(changes)
    return ModelConfig(**base)


@pytest.mark.parametrize("tie", [True, False])
def test_save_load_round_trip_is_exact(tmp_path, tie):
    torch.manual_seed(0)
    model = GPT(small(tie_embeddings=tie, n_kv_head=1)).eval()
    save_model(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_model(tmp_path / "m")
    assert loaded.cfg == model.cfg
    assert (loaded.lm_head.weight is loaded.tok_emb.weight) == tie
    idx = torch.randint(0, 50, (2, 10))
    assert torch.equal(loaded(idx), model(idx))
    # a tied head is stored once
    assert ("lm_head.weight" in load_file(tmp_path / "m" / "model.safetensors")) == (not tie)


def test_save_model_replaces_its_own_output_with_its_extra_files_and_nothing_else(tmp_path):
    """A directory save_model wrote, extra files included, is replaced by the next save; one that
    also holds something else (a README, a .git/) is refused, as it would be deleted with it."""
    model = GPT(small())
    extra = {"tokenizer.json": b"{}", "vocab.txt": b"a"}
    for _ in range(2):
        save_model(model, tmp_path / "m", extra_files=extra)
    (tmp_path / "m" / "README.md").write_text("keep me")
    with pytest.raises(ModelError, match="refusing to replace it"):
        save_model(model, tmp_path / "m", extra_files=extra)
    assert (tmp_path / "m" / "README.md").read_text() == "keep me"


def test_a_loaded_model_owns_its_weights_and_loading_starts_no_compiler_machinery(tmp_path):
    """Loading builds on the meta device: no parameter or buffer may be left there, none may share
    memory with the file's tensors or another parameter, and (in a fresh interpreter) neither the
    compiler nor the symbolic-shapes machinery is imported — together 1.8 s of `generate`'s start."""
    torch.manual_seed(0)
    save_model(GPT(small(pos="rope", tie_embeddings=False)), tmp_path / "m")
    loaded = load_model(tmp_path / "m", dtype=torch.bfloat16)
    tensors = [*loaded.parameters(), *loaded.buffers()]
    assert not any(t.is_meta for t in tensors) and loaded.rope_cos is not None
    pointers = [p.data_ptr() for p in loaded.parameters()]
    assert len(set(pointers)) == len(pointers) and all(p.is_contiguous() for p in loaded.parameters())
    probe = (
        "import sys, torch\n"
        "from scratchlm.model import load_model\n"
        f"model = load_model({str(tmp_path / 'm')!r})\n"
        "model(torch.zeros(1, 3, dtype=torch.long))\n"
        "print(sorted(m for m in ('torch._dynamo', 'torch.fx.experimental.symbolic_shapes') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_load_in_another_dtype_and_extra_files(tmp_path):
    model = GPT(small())
    (tmp_path / "tokenizer.json").write_text("{}")
    save_model(model, tmp_path / "m", extra_files=[tmp_path / "tokenizer.json"])
    save_model(model, tmp_path / "n", extra_files={"notes/readme.txt": b"hi"})
    assert (tmp_path / "m" / "tokenizer.json").read_text() == "{}"
    assert (tmp_path / "n" / "notes" / "readme.txt").read_bytes() == b"hi"
    loaded = load_model(tmp_path / "m", dtype=torch.bfloat16)
    assert loaded.tok_emb.weight.dtype == torch.bfloat16
    assert loaded(torch.zeros(1, 3, dtype=torch.long)).shape == (1, 3, 50)


def test_save_unwraps_compile_style_wrappers(tmp_path):
    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    model = GPT(small())
    save_model(Wrapper(model), tmp_path / "m")
    assert load_model_config(tmp_path / "m") == model.cfg


def test_shape_mismatch_names_the_tensor(tmp_path):
    save_model(GPT(small()), tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["d_ff"] = 48
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"tensor 'blocks\.0\.mlp\.fc\.weight' has shape \(64, 16\)"):
        load_model(tmp_path / "m")


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    save_model(GPT(small()), tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    tensors = load_file(weights)
    del tensors["blocks.1.attn.proj.weight"]
    save_file(tensors, weights)
    with pytest.raises(ModelError, match="missing tensor 'blocks.1.attn.proj.weight'"):
        load_model(tmp_path / "m")
    tensors["blocks.1.attn.proj.weight"] = torch.zeros(16, 16)
    tensors["blocks.1.attn.extra"] = torch.zeros(2)
    save_file(tensors, weights)
    with pytest.raises(ModelError, match="unexpected tensor 'blocks.1.attn.extra'"):
        load_model(tmp_path / "m")


def test_tied_config_refuses_a_stored_head_that_differs_from_the_embedding(tmp_path):
    """The stored head used to be dropped silently, so the logits were not the file's."""
    save_model(GPT(small(tie_embeddings=True)), tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    tensors = load_file(weights)
    tensors["lm_head.weight"] = tensors["tok_emb.weight"].clone()
    save_file(tensors, weights)
    assert load_model(tmp_path / "m").lm_head.weight is not None  # an exact copy is harmless
    tensors["lm_head.weight"][3, 5] += 0.5
    save_file(tensors, weights)
    with pytest.raises(ModelError, match="tensor 'lm_head.weight' differs from 'tok_emb.weight'"):
        load_model(tmp_path / "m")


def test_bad_directories_are_one_line_errors(tmp_path):
    with pytest.raises(ModelError, match="not a model directory"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ModelError, match="scratchlm import hf"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"n_layers": 2}))
    with pytest.raises(ModelError, match="unknown config key 'n_layers'"):
        load_model(tmp_path)
    save_model(GPT(small()), tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x80\x04 not safetensors")
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        load_model(tmp_path / "m")


def test_failed_save_leaves_no_directory(tmp_path):
    with pytest.raises(ModelError, match="extra file"):
        save_model(GPT(small()), tmp_path / "m", extra_files=[tmp_path / "absent.json"])
    assert not (tmp_path / "m").exists()
    assert list(tmp_path.iterdir()) == []


def test_write_model_files_into_a_directory_being_assembled(tmp_path):
    from scratchlm.model import write_model_files

    (tmp_path / "train_state.json").write_text("{}")
    model = GPT(small())
    write_model_files(model, tmp_path)
    assert (tmp_path / "train_state.json").read_text() == "{}"
    assert torch.equal(load_model(tmp_path).tok_emb.weight, model.tok_emb.weight)


def test_checkpoint_pointers_and_run_dirs_resolve_to_the_model_dir(tmp_path):
    from scratchlm.model.io import resolve_model_dir
    from scratchlm.train.checkpoint import REQUIRED_FILES

    step = tmp_path / "run" / "checkpoints" / "step-000010"
    step.mkdir(parents=True)
    for name in REQUIRED_FILES:  # a complete checkpoint: partial step dirs are never picked
        (step / name).write_text("{}")
    (tmp_path / "run" / "checkpoints" / "step-000011").mkdir()  # newer, but incomplete
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step-000010\n")
    assert resolve_model_dir(tmp_path / "run" / "checkpoints" / "latest") == step
    assert resolve_model_dir(tmp_path / "run" / "checkpoints") == step
    assert resolve_model_dir(tmp_path / "run") == step
    assert resolve_model_dir(step) == step
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step-000099\n")
    with pytest.raises(ModelError, match="step-000099"):
        resolve_model_dir(tmp_path / "run" / "checkpoints" / "latest")


def test_a_run_with_no_complete_checkpoint_yet_says_so(tmp_path, capsys):
    """`generate --model run/` before the first checkpoint said "not a model directory (no
    config.json): run", as if the user had named the wrong folder."""
    from scratchlm.cli import main
    from scratchlm.model.io import resolve_model_dir

    checkpoints = tmp_path / "run" / "checkpoints"
    (checkpoints / "step-000002").mkdir(parents=True)  # being written: incomplete
    for path in (tmp_path / "run", checkpoints):
        with pytest.raises(ModelError, match=r"a training run with no complete checkpoint yet"):
            resolve_model_dir(path)
    assert main(["generate", "--model", str(tmp_path / "run"), "hello"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no complete checkpoint yet" in err[0]
    (tmp_path / "other").mkdir()  # a folder that is no run at all keeps the plain message
    with pytest.raises(ModelError, match=r"not a model directory \(no config.json\)"):
        load_model(tmp_path / "other")


def test_a_link_to_a_pointer_names_the_step_dir_beside_the_pointer(tmp_path):
    """`ln -s run/checkpoints/latest serve/latest`, then `--model serve/latest`, looked for the step
    dir beside the link ("serve/latest points to step-000010, which does not exist"), and a link of
    another name was not read as a pointer at all ("not a model directory")."""
    model = GPT(small())
    checkpoints = tmp_path / "run" / "checkpoints"
    save_model(model, checkpoints / "step-000010")
    (checkpoints / "latest").write_text("step-000010\n")
    (tmp_path / "serve").mkdir()
    (tmp_path / "serve" / "latest").symlink_to(checkpoints / "latest")
    (tmp_path / "serve" / "current").symlink_to(os.path.join("..", "run", "checkpoints", "latest"))
    for link in ("latest", "current"):
        assert torch.equal(load_model(tmp_path / "serve" / link).tok_emb.weight, model.tok_emb.weight)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.int32])
def test_loading_into_a_dtype_the_model_cannot_run_in_is_one_error(tmp_path, dtype):
    """float8 loaded, then failed at the first forward; int32 ended in a multi-line load error."""
    save_model(GPT(small()), tmp_path / "m")
    with pytest.raises(ModelError, match="a model runs in float32, bfloat16, float16, float64, not") as caught:
        load_model(tmp_path / "m", dtype=dtype)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("dtype", [torch.int64, torch.float8_e4m3fn])
def test_an_embedding_stored_in_a_dtype_no_model_runs_in_is_named(tmp_path, dtype):
    """The dtype a model loads in is its embedding's; one stored as integers or float8 was refused
    with "a model runs in float32, ..., not int64", as if the caller had asked for int64, and the
    tensor to blame went unnamed."""
    save_model(GPT(small()), tmp_path / "m")
    weights = load_file(tmp_path / "m" / "model.safetensors")
    weights["tok_emb.weight"] = weights["tok_emb.weight"].to(dtype)
    save_file(weights, tmp_path / "m" / "model.safetensors")
    with pytest.raises(ModelError, match=r"tensor 'tok_emb.weight' is (int64|float8_e4m3fn); weights must be one of"):
        load_model(tmp_path / "m")


def test_a_dtype_given_by_name_is_one_error_that_says_so(tmp_path):
    """dtype="float16" was refused as "a model runs in ..., float16, float64, not float16"."""
    save_model(GPT(small()), tmp_path / "m")
    with pytest.raises(ModelError, match="dtype must be a torch.dtype such as torch.bfloat16, got 'float16'"):
        load_model(tmp_path / "m", dtype="float16")


def test_saved_weights_get_the_umasks_mode_like_the_other_files(tmp_path):
    """safetensors wrote model.safetensors as 0600 beside a 0644 config.json (checkpoints, export hf)."""
    old = os.umask(0o022)
    try:
        save_model(GPT(small()), tmp_path / "m")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "m").iterdir()}
    assert modes == {"config.json": 0o644, "model.safetensors": 0o644}

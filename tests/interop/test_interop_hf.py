"""Parity with Hugging Face transformers: import and export GPT-2 and Llama (GQA) checkpoints."""

import json

import pytest
import torch

from scratchlm.cli import main
from scratchlm.errors import ModelError
from scratchlm.infer import generate
from scratchlm.interop.hf import config_from_hf, export_hf, import_hf
from scratchlm.model import GPT, ModelConfig, load_model, save_model

transformers = pytest.importorskip("transformers")

VOCAB = 96


def hf_gpt2():
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=48, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(cfg)


def hf_llama(rope=None, **changes):
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=48, rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=0,
        pad_token_id=0, rope_parameters=rope or {"rope_type": "default", "rope_theta": 500.0}, **changes,
    )
    return transformers.LlamaForCausalLM(cfg)


def scrambled(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights (gains included) far from init, so any mapping mistake moves the logits."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2).add_(1.0 if p.dim() == 1 else 0.0)
    return model.eval()


LLAMA3_ROPE = {
    "rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,  # head_dim 8: one fast, one blended and two slowed pairs
}
FAMILIES = {
    "gpt2": hf_gpt2,
    "llama": hf_llama,
    "llama3-rope": lambda: hf_llama(LLAMA3_ROPE),
    "llama-biases": lambda: hf_llama(attention_bias=True, mlp_bias=True),
}
IDS = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(0))


def hf_greedy(hf, prompt, n):
    ids = torch.tensor([prompt])
    out = hf.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=None
    )
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_import_matches_transformers_logits_and_greedy_generation(tmp_path, family):
    hf = scrambled(FAMILIES[family](), seed=1)
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.json").write_text("{}")
    import_hf(tmp_path / "hf", tmp_path / "ours")
    ours = load_model(tmp_path / "ours")
    assert (tmp_path / "ours" / "tokenizer.json").is_file()
    if family.startswith("llama"):
        assert ours.cfg.n_kv_head == 2 and ours.cfg.rope_theta == 500.0 and not ours.cfg.tie_embeddings
        assert (ours.cfg.rope_scaling is not None) == (family == "llama3-rope")
    with torch.no_grad():
        expected = hf(IDS).logits
    got = ours(IDS)
    assert expected.abs().max() > 1.0  # the comparison is not between near-zero numbers
    assert (got - expected).abs().max() <= 1e-4
    prompt = IDS[0, :5].tolist()
    assert generate(ours, prompt, 12, temperature=0) == hf_greedy(hf, prompt, 12)


@pytest.mark.parametrize("family", ["gpt2", "llama", "llama3-rope"])
def test_export_loads_in_transformers_with_the_same_logits(tmp_path, family):
    arch = (
        dict(pos="learned", norm="layernorm", mlp="gelu", bias=True, tie_embeddings=True)
        if family == "gpt2"
        else dict(pos="rope", rope_theta=300.0, norm="rmsnorm", mlp="swiglu", n_kv_head=2, tie_embeddings=False)
    )
    if family == "llama3-rope":
        arch["rope_scaling"] = {"factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 2.0, "original_max_len": 32}
    cfg = ModelConfig(vocab_size=VOCAB, n_layer=2, n_head=4, d_model=32, d_ff=64, max_seq_len=48, **arch)
    ours = scrambled(GPT(cfg), seed=2)
    save_model(ours, tmp_path / "ours")
    export_hf(tmp_path / "ours", tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == ("GPT2LMHeadModel" if family == "gpt2" else "LlamaForCausalLM")
    with torch.no_grad():
        expected = hf(IDS).logits
    got = ours(IDS)
    assert got.abs().max() > 1.0
    assert (got - expected).abs().max() <= 1e-4
    prompt = IDS[1, :4].tolist()
    assert generate(ours, prompt, 12, temperature=0) == hf_greedy(hf, prompt, 12)


def test_round_trip_through_transformers_is_exact(tmp_path):
    cfg = ModelConfig(vocab_size=VOCAB, n_layer=1, n_head=4, n_kv_head=1, d_model=32, max_seq_len=16)
    save_model(scrambled(GPT(cfg), seed=3), tmp_path / "a")
    export_hf(tmp_path / "a", tmp_path / "hf", dtype="bfloat16")
    import_hf(tmp_path / "hf", tmp_path / "b")
    a, b = load_model(tmp_path / "a"), load_model(tmp_path / "b")
    assert b.tok_emb.weight.dtype == torch.bfloat16 and b.cfg == a.cfg
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p.to(torch.bfloat16), q), name


def test_cli_export_and_import(tmp_path, capsys):
    cfg = ModelConfig(vocab_size=VOCAB, n_layer=1, n_head=2, d_model=16, max_seq_len=16)
    tokenizer = json.dumps({"added_tokens": [{"id": 5, "content": "<|endoftext|>", "special": True}]})
    save_model(GPT(cfg), tmp_path / "m", extra_files={"tokenizer.json": tokenizer.encode()})
    assert main(["export", "hf", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "hf")]) == 0
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_config["model_type"] == "llama" and hf_config["eos_token_id"] == 5
    assert (tmp_path / "hf" / "tokenizer.json").read_text() == tokenizer
    assert main(["import", "hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    assert load_model(tmp_path / "back").cfg == cfg
    assert main(["import", "hf", str(tmp_path / "m"), "--out", str(tmp_path / "x")]) == 2
    assert "not a Hugging Face config" in capsys.readouterr().err


def test_import_keeps_the_generation_ids_that_only_config_json_held(tmp_path):
    """transformers falls back on config.json's bos/eos ids when generation_config.json is absent;
    import replaces config.json, so the ids must survive in the model directory."""
    hf = hf_llama()
    hf.config.eos_token_id = [1, 2]
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "generation_config.json").unlink(missing_ok=True)
    import_hf(tmp_path / "hf", tmp_path / "ours")
    kept = json.loads((tmp_path / "ours" / "generation_config.json").read_text())
    assert kept == {"bos_token_id": 0, "eos_token_id": [1, 2]}
    hf_llama().save_pretrained(tmp_path / "hf2")  # one transformers wrote is carried over as it is
    import_hf(tmp_path / "hf2", tmp_path / "ours2")
    assert (tmp_path / "ours2" / "generation_config.json").read_bytes() == (
        tmp_path / "hf2" / "generation_config.json").read_bytes()


def test_unexportable_and_unsupported_models_are_clear_errors(tmp_path):
    cfg = ModelConfig(vocab_size=VOCAB, n_layer=1, n_head=2, d_model=16, max_seq_len=16, qk_norm=True)
    save_model(GPT(cfg), tmp_path / "m")
    with pytest.raises(ModelError, match="needs model.qk_norm = False"):
        export_hf(tmp_path / "m", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    with pytest.raises(ModelError, match="RoPE scaling 'yarn'"):
        config_from_hf({**hf_llama().config.to_dict(), "rope_parameters": {"rope_type": "yarn"}})
    with pytest.raises(ModelError, match="lacks the key 'factor'"):
        config_from_hf({**hf_llama().config.to_dict(), "rope_parameters": {"rope_type": "llama3"}})
    with pytest.raises(ModelError, match="unsupported Hugging Face model_type 'bert'"):
        config_from_hf({"model_type": "bert"})


def test_hf_checkpoint_with_wrong_shapes_or_only_pickles(tmp_path):
    hf = hf_gpt2()
    hf.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["n_positions"] = 64
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"'transformer.wpe.weight' has shape \(\d+, \d+\), the config needs \(64, "):  # the file's name
        import_hf(tmp_path / "hf", tmp_path / "out")
    (tmp_path / "hf" / "model.safetensors").unlink()
    (tmp_path / "hf" / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelError, match="safetensors only"):
        import_hf(tmp_path / "hf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_sharded_checkpoint_imports(tmp_path):
    hf = scrambled(hf_llama(), seed=4)
    hf.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    import_hf(tmp_path / "hf", tmp_path / "ours")
    with torch.no_grad():
        assert (load_model(tmp_path / "ours")(IDS) - hf(IDS).logits).abs().max() <= 1e-4


def test_gpt2_checkpoint_without_the_transformer_prefix(tmp_path):
    """openai-community/gpt2 stores `h.0.attn.c_attn.weight`, not `transformer.h.0...`, plus mask buffers."""
    from safetensors.torch import load_file, save_file

    hf = scrambled(hf_gpt2(), seed=5)
    hf.save_pretrained(tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(weights).items()}
    tensors["h.0.attn.bias"] = torch.ones(1, 1, 48, 48)
    save_file(tensors, weights)
    import_hf(tmp_path / "hf", tmp_path / "ours")
    with torch.no_grad():
        assert (load_model(tmp_path / "ours")(IDS) - hf(IDS).logits).abs().max() <= 1e-4


def test_gpt2_import_errors_name_the_tensors_as_the_file_holds_them(tmp_path):
    """The "transformer." prefix was added to every name before checking, so errors named tensors
    the file does not hold (`transformer.score.weight` for a classifier's `score.weight`)."""
    from safetensors.torch import load_file, save_file

    hf_gpt2().save_pretrained(tmp_path / "cls")
    weights = tmp_path / "cls" / "model.safetensors"
    tensors = load_file(weights)
    save_file({**tensors, "score.weight": torch.zeros(2, 32)}, weights)
    with pytest.raises(ModelError, match=r"unexpected tensor 'score\.weight'"):
        import_hf(tmp_path / "cls", tmp_path / "ours")
    hf_gpt2().save_pretrained(tmp_path / "bare")
    weights = tmp_path / "bare" / "model.safetensors"
    bare = {k.removeprefix("transformer."): v for k, v in load_file(weights).items()}
    save_file({**bare, "wte.weight": torch.zeros(VOCAB + 1, 32)}, weights)
    with pytest.raises(ModelError, match=r"tensor 'wte\.weight' has shape"):
        import_hf(tmp_path / "bare", tmp_path / "ours")


def edit_config(directory, **changes):
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_tensors_the_config_has_no_place_for_are_refused(tmp_path):
    """A config.json that disagrees with its weights (fewer layers, no biases) used to import
    silently, keeping 9 of 35 tensors."""
    hf_llama(attention_bias=True, mlp_bias=True).save_pretrained(tmp_path / "hf")
    edit_config(tmp_path / "hf", attention_bias=False, mlp_bias=False, num_hidden_layers=1)
    with pytest.raises(ModelError, match=r"unexpected tensor 'model\.layers\.0\.mlp\.down_proj\.bias'"):
        import_hf(tmp_path / "hf", tmp_path / "out")
    edit_config(tmp_path / "hf", attention_bias=True, mlp_bias=True)
    with pytest.raises(ModelError, match=r"unexpected tensor 'model\.layers\.1\.input_layernorm\.weight'"):
        import_hf(tmp_path / "hf", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    hf_gpt2().save_pretrained(tmp_path / "gpt2")
    edit_config(tmp_path / "gpt2", n_layer=1)
    with pytest.raises(ModelError, match=r"unexpected tensor 'transformer\.h\.1\.attn\.c_attn\.bias'"):
        import_hf(tmp_path / "gpt2", tmp_path / "out")


def test_known_buffers_are_tolerated_and_a_differing_tied_head_is_not(tmp_path):
    from safetensors.torch import load_file, save_file

    hf = scrambled(hf_llama(), seed=6)
    hf.save_pretrained(tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    tensors = load_file(weights)
    tensors["model.rotary_emb.inv_freq"] = torch.ones(4)  # older checkpoints store it; it is recomputed
    save_file(tensors, weights)
    import_hf(tmp_path / "hf", tmp_path / "ours")
    with torch.no_grad():
        assert (load_model(tmp_path / "ours")(IDS) - hf(IDS).logits).abs().max() <= 1e-4
    edit_config(tmp_path / "hf", tie_word_embeddings=True)  # but lm_head.weight is its own matrix
    with pytest.raises(ModelError, match="'lm_head.weight' differs from 'tok_emb.weight'"):
        import_hf(tmp_path / "hf", tmp_path / "tied")


def test_a_rope_that_rotates_only_part_of_each_head_is_refused():
    config = {**hf_llama().config.to_dict(), "rope_parameters": {"rope_theta": 500.0, "partial_rotary_factor": 0.5}}
    with pytest.raises(ModelError, match="partial_rotary_factor 0.5 is not supported"):
        config_from_hf(config)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(num_attention_heads=0), ": num_attention_heads must be a positive integer, got 0"),
        (dict(hidden_size="32"), ": hidden_size must be a positive integer"),
        (dict(rms_norm_eps=float("nan")), ": rms_norm_eps must be a finite number"),
        (dict(rope_parameters=[500.0]), "'rope_parameters' must be a table"),
        (dict(model_type=["llama"]), "unsupported Hugging Face model_type"),
        (dict(rope_parameters={**LLAMA3_ROPE, "factor": "8"}), r": rope_parameters\.factor must be a finite number"),
        # transformers obeys this rope_scaling over the default rope_parameters: taking either is a guess
        (dict(rope_scaling={"type": "linear", "factor": 4.0}), "rope_scaling and rope_parameters disagree on rope_type"),
    ],
)
def test_bad_hf_config_values_are_one_line_errors_naming_the_key(tmp_path, changes, message):
    hf_llama().save_pretrained(tmp_path / "hf")
    edit_config(tmp_path / "hf", **changes)
    with pytest.raises(ModelError, match=message) as error:
        import_hf(tmp_path / "hf", tmp_path / "out")
    assert str(error.value).startswith(str(tmp_path / "hf" / "config.json"))


@pytest.mark.parametrize(
    "index", [[], {"weight_map": ["a"]}, {"weight_map": {"x": ["a"]}}, {"weight_map": {"x": "../model.safetensors"}}]
)
def test_malformed_shard_index_is_a_one_line_error(tmp_path, index):
    hf_llama().save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    (tmp_path / "hf" / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelError, match=r"model\.safetensors\.index\.json: "):
        import_hf(tmp_path / "hf", tmp_path / "out")


def test_llama3_rope_export_keeps_original_max_position_embeddings_an_int(tmp_path):
    """transformers warns about (and expects) an int; an import round trip used to make it 64.0."""
    scrambled(hf_llama(LLAMA3_ROPE), seed=7).save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    config["rope_scaling"]["original_max_len"] = 64.0  # as earlier imports wrote it
    (tmp_path / "ours" / "config.json").write_text(json.dumps(config))
    export_hf(tmp_path / "ours", tmp_path / "back")
    exported = json.loads((tmp_path / "back" / "config.json").read_text())
    for table in ("rope_parameters", "rope_scaling"):
        assert type(exported[table]["original_max_position_embeddings"]) is int
        assert type(exported[table]["factor"]) is float


def test_cli_export_refuses_an_out_that_is_not_a_model_directory(tmp_path, capsys, monkeypatch):
    save_model(GPT(ModelConfig(vocab_size=VOCAB, n_layer=1, n_head=2, d_model=16, max_seq_len=16)), tmp_path / "m")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    assert main(["export", "hf", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "notes")]) == 2
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["todo.txt"]
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    monkeypatch.chdir(tmp_path / "notes")
    assert main(["export", "hf", "--model", str(tmp_path / "m"), "--out", "."]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("scratchlm: error: ") for line in err)
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["todo.txt"]


def test_export_refuses_to_replace_a_training_checkpoint(tmp_path, capsys):
    """A checkpoint is a model directory too, but it belongs to its run: a conversion never replaces it."""
    save_model(GPT(ModelConfig(vocab_size=VOCAB, n_layer=1, n_head=2, d_model=16, max_seq_len=16)), tmp_path / "m")
    step = tmp_path / "run" / "checkpoints" / "step-000010"
    save_model(GPT(ModelConfig(vocab_size=VOCAB, n_layer=1, n_head=2, d_model=16, max_seq_len=16)), step)
    (step / "train_state.json").write_text('{"step": 10}')
    before = sorted(p.name for p in step.iterdir())
    assert main(["export", "hf", "--model", str(tmp_path / "m"), "--out", str(step)]) == 2
    assert "is not a model directory" in capsys.readouterr().err
    assert sorted(p.name for p in step.iterdir()) == before
    assert main(["export", "hf", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "hf")]) == 0
    assert main(["export", "hf", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "hf")]) == 0  # re-export


@pytest.mark.parametrize("extra", [".git/HEAD", "README.md", "notes/todo.txt"])
def test_conversions_refuse_to_replace_a_model_directory_holding_other_files(tmp_path, capsys, extra):
    """A clone of a model's repository holds config.json and weights beside its .git/ and README:
    replacing it whole would delete them. An earlier conversion's output, with the tokenizer and
    generation files it carries, is replaced as before."""
    tokenizer = json.dumps({"added_tokens": [{"id": 5, "content": "<|endoftext|>", "special": True}]})
    save_model(GPT(ModelConfig(vocab_size=VOCAB, n_layer=1, n_head=2, d_model=16, max_seq_len=16)), tmp_path / "m",
               extra_files={"tokenizer.json": tokenizer.encode()})
    assert main(["export", "hf", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "hf")]) == 0
    for command in (["export", "hf", "--model", str(tmp_path / "m")], ["import", "hf", str(tmp_path / "hf")]):
        out = tmp_path / f"{command[0]}-out"
        assert main([*command, "--out", str(out)]) == 0
        assert main([*command, "--out", str(out)]) == 0  # its own earlier output: replaced
        assert (out / "tokenizer.json").is_file()  # a carried file, which does not stop the replacement
        (out / extra).parent.mkdir(exist_ok=True)
        (out / extra).write_text("keep me")
        before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
        assert main([*command, "--out", str(out)]) == 2
        assert "holding only a model's files; refusing to replace it" in capsys.readouterr().err
        assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
        assert (out / extra).read_text() == "keep me"


def edit_tensors(directory, **changes):
    """Rewrite model.safetensors with some tensors replaced (name → tensor)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(directory / "model.safetensors"))
    assert set(changes) <= set(tensors)
    save_file({**tensors, **changes}, str(directory / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize(
    "family, name, make, message",
    [
        ("llama", "model.embed_tokens.weight", lambda t: t.long(), "'model.embed_tokens.weight' is int64; weights must"),
        ("llama", "model.layers.0.self_attn.q_proj.weight", lambda t: t.to(torch.int8), "is int8"),
        ("llama", "model.norm.weight", lambda t: t.to(torch.float8_e4m3fn), "is float8_e4m3fn"),
        ("gpt2", "transformer.h.0.attn.c_attn.weight", lambda t: t[None], r"has shape \(1, 32, 96\), the config needs"),
        ("llama", "model.layers.1.self_attn.k_proj.weight", lambda t: t[:, :16].contiguous(),
         r"'model.layers.1.self_attn.k_proj.weight' has shape \(16, 16\), the config needs \(16, 32\)"),
    ],
)
def test_weights_of_another_dtype_or_shape_are_refused_naming_the_tensor(tmp_path, family, name, make, message):
    """Integers were copied in as numbers silently, float8 failed at the first forward, and a 3-D
    or narrow matrix raised torch's error from the transposition or stacking."""
    (hf_gpt2() if family == "gpt2" else hf_llama()).save_pretrained(tmp_path / "hf")
    from safetensors.torch import load_file

    edit_tensors(tmp_path / "hf", **{name: make(load_file(str(tmp_path / "hf" / "model.safetensors"))[name])})
    with pytest.raises(ModelError, match=message):
        import_hf(tmp_path / "hf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_model_directory_holding_integer_weights_is_refused(tmp_path):
    save_model(GPT(ModelConfig(vocab_size=VOCAB, n_layer=1, n_head=2, d_model=16, max_seq_len=16)), tmp_path / "m")
    from safetensors.torch import load_file

    edit_tensors(tmp_path / "m", **{"norm_f.weight": load_file(str(tmp_path / "m" / "model.safetensors"))[
        "norm_f.weight"].to(torch.int32)})
    for call in (lambda: load_model(tmp_path / "m"), lambda: export_hf(tmp_path / "m", tmp_path / "hf")):
        with pytest.raises(ModelError, match="'norm_f.weight' is int32"):
            call()


def test_an_absurd_context_length_is_a_one_line_error_not_an_allocation(tmp_path, capsys):
    hf_llama().save_pretrained(tmp_path / "hf")
    edit_config(tmp_path / "hf", max_position_embeddings=10**12)
    capsys.readouterr()  # transformers' own progress bar while saving
    assert main(["import", "hf", str(tmp_path / "hf"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "max_position_embeddings must be ≤ 4,194,304 with pos = 'rope'" in err[0]


def test_the_chat_template_and_added_tokens_survive_both_directions(tmp_path):
    hf_llama().save_pretrained(tmp_path / "hf")
    template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    (tmp_path / "hf" / "chat_template.jinja").write_text(template)
    (tmp_path / "hf" / "added_tokens.json").write_text('{"<|user|>": 96}')
    import_hf(tmp_path / "hf", tmp_path / "ours")
    export_hf(tmp_path / "ours", tmp_path / "back")
    for directory in ("ours", "back"):
        assert (tmp_path / directory / "chat_template.jinja").read_text() == template
        assert (tmp_path / directory / "added_tokens.json").read_text() == '{"<|user|>": 96}'


def test_dropout_survives_a_round_trip(tmp_path):
    """Import used to drop dropout (0.1 → 0.0): logits were the same, fine-tuning after it not."""
    for family, make, keys in [
        ("gpt2", lambda: hf_gpt2(), ("resid_pdrop", "embd_pdrop", "attn_pdrop")),
        ("llama", lambda: hf_llama(attention_dropout=0.15), ("attention_dropout",)),
    ]:
        make().save_pretrained(tmp_path / family)
        rate = json.loads((tmp_path / family / "config.json").read_text())[keys[0]]
        assert rate > 0
        import_hf(tmp_path / family, tmp_path / f"{family}-ours")
        assert load_model(tmp_path / f"{family}-ours").cfg.dropout == rate
        export_hf(tmp_path / f"{family}-ours", tmp_path / f"{family}-back")
        back = json.loads((tmp_path / f"{family}-back" / "config.json").read_text())
        assert [back[key] for key in keys] == [rate] * len(keys)
    # GPT-2 rates that differ (none released does) import, taking the residual branches' rate
    edit_config(tmp_path / "gpt2", resid_pdrop=0.05, embd_pdrop=0.0)
    import_hf(tmp_path / "gpt2", tmp_path / "gpt2-mixed")
    assert load_model(tmp_path / "gpt2-mixed").cfg.dropout == 0.05


def test_an_export_that_cannot_be_written_is_a_one_line_error_and_leaves_nothing(tmp_path):
    """safetensors reports a failed write with its own error type, which used to end in a traceback."""
    import subprocess
    import sys

    cfg = ModelConfig(vocab_size=VOCAB, n_layer=2, n_head=2, d_model=64, max_seq_len=16)
    save_model(GPT(cfg), tmp_path / "m")
    child = ("import resource, sys; from scratchlm.cli import main; "
             "resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000)); sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", child, "export", "hf", "--model", str(tmp_path / "m"),
                           "--out", str(tmp_path / "hf")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()  # written in a hidden temp directory beside --out
    assert line.startswith(f"scratchlm: error: {tmp_path}/.hf.") and line.endswith("/model.safetensors: File too large")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_both_conversions_refuse_the_output_before_reading_any_weight(tmp_path, monkeypatch):
    """A refused --out used to cost the whole conversion first: minutes and several copies of a
    large model's weights in memory."""
    import scratchlm.interop.hf as hf

    hf_gpt2().save_pretrained(tmp_path / "hf")
    save_model(GPT(ModelConfig(vocab_size=VOCAB, n_layer=1, n_head=2, d_model=16, max_seq_len=16)), tmp_path / "m")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")

    def no_reading(*args, **kwargs):
        raise AssertionError("weights were read before the output was checked")

    monkeypatch.setattr(hf, "read_hf_tensors", no_reading)
    monkeypatch.setattr(hf, "read_weights", no_reading)
    with pytest.raises(ModelError, match="not a model directory"):
        import_hf(tmp_path / "hf", tmp_path / "notes")
    with pytest.raises(ModelError, match="not a model directory"):
        export_hf(tmp_path / "m", tmp_path / "notes")
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["todo.txt"]


LLAMA3_SPECIALS = ["<|endoftext|>", "<|begin_of_text|>", "<|eot_id|>"]
CORPUS = ["the cat sat on the mat, and the dog sat on the log. ½ naïve café"] * 20


def model_with_tokenizer(directory, tokenizer, config=None):
    """A scratchlm model directory carrying `tokenizer` (and its tokenizer_config.json entries)."""
    from scratchlm.model.io import CONFIG_FILE as MODEL_CONFIG

    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, d_model=16, max_seq_len=32,
                      pos="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False)
    tokenizer.save(directory / "tok", config=config)
    extra = {name: directory / "tok" / name for name in ("tokenizer.json", "tokenizer_config.json")}
    save_model(scrambled(GPT(cfg), 0), directory / "model", extra_files=extra)
    assert (directory / "model" / MODEL_CONFIG).is_file()
    return directory / "model"


def test_export_gives_transformers_the_ids_scratchlm_starts_and_stops_at(tmp_path):
    """Export used to write <|endoftext|> as both ids, whatever tokenizer_config.json named: a
    Llama-3-style tokenizer's model then ran past its end-of-turn token in transformers."""
    from scratchlm.infer.text import TextGenerator
    from scratchlm.tokenizer import Tokenizer

    tokenizer = Tokenizer.train(CORPUS, 300, special_tokens=LLAMA3_SPECIALS, show_progress=False)
    ids = tokenizer.special_tokens
    model = model_with_tokenizer(tmp_path, tokenizer, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"})
    ours = TextGenerator(model)
    assert ours.eos_ids == [ids["<|eot_id|>"]] and ours.encode_prompt("") == [ids["<|begin_of_text|>"]]
    export_hf(model, tmp_path / "hf")
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (hf_config["bos_token_id"], hf_config["eos_token_id"]) == (ids["<|begin_of_text|>"], ids["<|eot_id|>"])
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert hf.generation_config.eos_token_id == ids["<|eot_id|>"]
    # a tokenizer of scratchlm's own: <|endoftext|> both starts and ends, as before
    plain = Tokenizer.train(CORPUS, 300, show_progress=False)
    export_hf(model_with_tokenizer(tmp_path / "plain", plain), tmp_path / "plain-hf")
    hf_config = json.loads((tmp_path / "plain-hf" / "config.json").read_text())
    assert hf_config["bos_token_id"] == hf_config["eos_token_id"] == plain.eot_id


def test_export_refuses_a_damaged_tokenizer_before_writing(tmp_path, capsys):
    """A truncated tokenizer.json used to be copied into an export reported as written."""
    from scratchlm.tokenizer import Tokenizer

    model = model_with_tokenizer(tmp_path, Tokenizer.train(CORPUS, 300, show_progress=False))
    text = (model / "tokenizer.json").read_text()
    (model / "tokenizer.json").write_text(text[:300])
    assert main(["export", "hf", "--model", str(model), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tokenizer.json" in err[0] and "JSON" in err[0]
    assert not (tmp_path / "hf").exists()


def test_import_refuses_a_tokenizer_scratchlm_would_split_differently(tmp_path, capsys):
    """`tokenizer import --hf` refused this tokenizer, but `import hf` carried it along, and
    `generate` then fed the model other ids than transformers does."""
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    hf_tok = HFTokenizer(models.BPE())
    hf_tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\w+|\W+"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf_tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    hf_tok.train_from_iterator(CORPUS, trainer)
    cfg = transformers.LlamaConfig(vocab_size=hf_tok.get_vocab_size(), hidden_size=32, intermediate_size=72,
                                   num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=48)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "hf")
    hf_tok.save(str(tmp_path / "hf" / "tokenizer.json"))
    assert main(["tokenizer", "import", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "tok")]) == 2
    refused = capsys.readouterr().err.strip()
    assert main(["import", "hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ours")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "splits text differently" in err[0] and "splits text differently" in refused
    assert not (tmp_path / "ours").exists()


def test_a_tensor_held_by_two_shards_is_refused(tmp_path):
    """Shards were merged with dict.update, so a tensor stored twice silently took the copy of
    the shard sorting last, whatever the index named: the import reported success with other weights."""
    from safetensors.torch import load_file, save_file

    hf_llama().save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    weight_map = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())["weight_map"]
    first, last = sorted(set(weight_map.values()))[0], sorted(set(weight_map.values()))[-1]
    name = next(iter(load_file(tmp_path / "hf" / first)))
    stray = {**load_file(tmp_path / "hf" / last), name: torch.zeros_like(load_file(tmp_path / "hf" / first)[name])}
    save_file(stray, tmp_path / "hf" / last, metadata={"format": "pt"})
    with pytest.raises(ModelError, match=rf"tensor '{name}' is in both {first} and {last}"):
        import_hf(tmp_path / "hf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("convert", ["export", "import"])
def test_a_dtype_too_narrow_for_a_weight_is_refused_not_turned_into_infinity(tmp_path, convert):
    """--dtype float16 turned a weight beyond ±65504 into inf silently: the written model gave NaN logits."""
    cfg = ModelConfig(vocab_size=VOCAB, n_layer=1, n_head=2, d_model=16, max_seq_len=16)
    model = GPT(cfg)
    with torch.no_grad():
        model.norm_f.weight[3] = 1e5
    save_model(model, tmp_path / "m")
    source = tmp_path / "m"
    if convert == "import":
        export_hf(tmp_path / "m", tmp_path / "hf")
        source = tmp_path / "hf"
    run = export_hf if convert == "export" else import_hf
    with pytest.raises(ModelError, match=r"tensor '(norm_f|model\.norm)\.weight' has values beyond float16's range"):
        run(source, tmp_path / "out", dtype="float16")
    assert not (tmp_path / "out").exists()
    run(source, tmp_path / "out", dtype="bfloat16")  # a wider range holds it


def slow_gpt2_checkpoint(directory):
    """A GPT-2 checkpoint as transformers' slow tokenizer saved them: vocab.json + merges.txt, no
    tokenizer.json (made with the real `tokenizers` library), and the ids that tokenizer gives."""
    tokenizers = pytest.importorskip("tokenizers")
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False)
    directory.mkdir()
    bpe.save_model(str(directory))
    eot = bpe.token_to_id("<|endoftext|>")
    cfg = transformers.GPT2Config(vocab_size=bpe.get_vocab_size(), n_positions=48, n_embd=32, n_layer=2, n_head=4,
                                  bos_token_id=eot, eos_token_id=eot)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(directory)
    assert not (directory / "tokenizer.json").exists()
    return bpe


def test_import_of_a_gpt2_checkpoint_with_only_vocab_and_merges_can_generate(tmp_path):
    """Such a checkpoint imported with its two files carried but no tokenizer.json, so `generate`
    refused the imported model until the user converted the files by hand."""
    from scratchlm.infer.text import TextGenerator

    bpe = slow_gpt2_checkpoint(tmp_path / "src")
    import_hf(tmp_path / "src", tmp_path / "ours")
    assert (tmp_path / "ours" / "vocab.json").is_file() and (tmp_path / "ours" / "merges.txt").is_file()
    ours = TextGenerator(tmp_path / "ours")
    text = "the dog sat on the mat. naïve café ½"
    assert ours.encode_prompt(text) == bpe.encode(text).ids
    assert ours.tokenizer.decode(bpe.encode(text).ids) == text


def test_generate_names_the_conversion_for_a_directory_with_only_vocab_and_merges(tmp_path, capsys):
    """Where import cannot convert them (added_tokens.json adds ids the two files do not hold), the
    error says how to make a tokenizer.json from them."""
    slow_gpt2_checkpoint(tmp_path / "src")
    (tmp_path / "src" / "added_tokens.json").write_text(json.dumps({"<|pad|>": 300}))
    import_hf(tmp_path / "src", tmp_path / "ours")
    assert not (tmp_path / "ours" / "tokenizer.json").exists()
    capsys.readouterr()  # save_pretrained's progress bars
    assert main(["generate", "--model", str(tmp_path / "ours"), "hello"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no tokenizer.json" in err[0]
    assert f"tokenizer import --gpt2 {tmp_path / 'ours' / 'vocab.json'} {tmp_path / 'ours' / 'merges.txt'}" in err[0]

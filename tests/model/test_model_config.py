"""ModelConfig: validation, presets, closed-form parameter counts and FLOPs."""

import pytest

from scratchlm.config import from_dict, to_dict
from scratchlm.errors import ConfigError
from scratchlm.model import GPT, PRESETS, ModelConfig, get_preset

VARIANTS = [
    dict(pos="learned", norm="layernorm", mlp="gelu", bias=True, tie_embeddings=True),
    dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False, n_kv_head=2),
    dict(pos="rope", norm="layernorm", mlp="relu2", bias=False, qk_norm=True, n_kv_head=1),
    dict(pos="learned", norm="layernorm", mlp="swiglu", bias=True, qk_norm=True, tie_embeddings=False),
]


@pytest.mark.parametrize("variant", VARIANTS)
def test_closed_form_param_count_matches_the_module(variant):
    cfg = ModelConfig(vocab_size=97, n_layer=3, n_head=4, d_model=32, d_ff=48, max_seq_len=40, **variant)
    model = GPT(cfg)
    assert cfg.num_params() == sum(p.numel() for p in model.parameters())
    embeddings = model.tok_emb.weight.numel()
    embeddings += model.pos_emb.weight.numel() if model.pos_emb is not None else 0
    embeddings += 0 if cfg.tie_embeddings else model.lm_head.weight.numel()
    assert cfg.num_params(non_embedding=True) == cfg.num_params() - embeddings


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_is_valid(name):
    cfg = get_preset(name)
    cfg.validate()
    assert cfg.num_params() > cfg.num_params(non_embedding=True) > 0


def test_published_parameter_counts():
    assert get_preset("gpt2-124m").num_params() == 124_439_808
    assert get_preset("gpt2-medium").num_params() == 354_823_168
    assert get_preset("gpt2-xl").num_params() == 1_557_611_200
    assert round(get_preset("llama-7b").num_params() / 1e9, 2) == 6.74
    assert round(get_preset("llama-13b").num_params() / 1e9, 1) == 13.0
    assert round(get_preset("llama-70b").num_params() / 1e9, 1) == 69.0
    assert round(get_preset("llama-1b").num_params() / 1e9, 2) == 1.24


def test_flops_per_token_is_the_palm_formula():
    cfg = get_preset("gpt2-124m")
    n = cfg.num_params(non_embedding=True) + cfg.vocab_size * cfg.d_model
    assert cfg.flops_per_token(1024) == 6 * n + 12 * 12 * 768 * 1024
    assert cfg.flops_per_token() == cfg.flops_per_token(cfg.max_seq_len)
    assert cfg.flops_per_token(2048) - cfg.flops_per_token(1024) == 12 * 12 * 768 * 1024


def test_kv_cache_bytes_shrink_with_fewer_kv_heads():
    mha = get_preset("llama-7b")
    gqa = get_preset("llama-70b")
    assert mha.kv_cache_bytes(1, 4096) == 2 * 32 * 32 * 4096 * 128 * 2
    assert gqa.kv_cache_bytes(1, 4096) == 2 * 80 * 8 * 4096 * 128 * 2


def test_defaults_fill_kv_heads_and_width():
    cfg = ModelConfig(n_head=8, d_model=256, mlp="gelu")
    assert cfg.n_kv_head == 8 and cfg.d_ff == 1024
    swiglu = ModelConfig(n_head=8, d_model=256, mlp="swiglu")
    assert swiglu.d_ff % 64 == 0 and 640 <= swiglu.d_ff <= 704


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(n_head=5, d_model=64), "must divide model.d_model"),
        (dict(n_head=4, n_kv_head=3), "n_kv_head (3) must divide model.n_head (4)"),
        (dict(vocab_size=0), "vocab_size must be a positive integer"),
        (dict(vocab_size=2**63), "vocab_size must be ≤ 2,147,483,647"),  # was a C++ traceback from torch
        (dict(d_ff=2**40), "d_ff must be ≤ 2,147,483,647"),
        (dict(dropout=1.0), "dropout"),
        (dict(logit_softcap=-1.0), "logit_softcap"),
        (dict(pos="rope", n_head=4, d_model=20), "even head size"),
    ],
)
def test_validation_names_the_field(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ModelConfig(**changes).validate()


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(logit_softcap=INF), "logit_softcap must be a finite number"),
        (dict(logit_softcap=NAN), "logit_softcap must be a finite number"),
        (dict(norm_eps=NAN), "norm_eps must be a finite number"),
        (dict(rope_theta=NAN), "rope_theta must be a finite number"),
        (dict(rope_theta=-INF), "rope_theta must be a finite number"),
        # unused by learned positions, but saved: a model with a NaN there could not be loaded again
        (dict(pos="learned", rope_theta=NAN), "rope_theta must be a finite number"),
        (dict(pos="learned", rope_theta=None), "rope_theta must be a finite number"),
        (dict(init_std=NAN), "init_std must be a finite number"),
        (dict(init_std=True), "init_std must be a finite number"),
        (dict(dropout=NAN), "dropout must be a finite number"),
        (dict(dropout=False), "dropout must be a finite number"),
        (dict(norm_eps="1e-5"), "norm_eps must be a finite number"),
        (dict(bias=1), "bias must be true or false"),
    ],
)
def test_validation_rejects_non_finite_and_mistyped_numbers(changes, message):
    """Built in Python (not through from_dict), NaN passed every `x <= 0` range check."""
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**changes).validate()


def test_config_round_trips_through_the_config_machinery():
    cfg = get_preset("llama-10m")
    assert from_dict(ModelConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="unknown config key 'n_heads'"):
        from_dict(ModelConfig, {"n_heads": 4})
    with pytest.raises(ConfigError, match="pos"):
        from_dict(ModelConfig, {"pos": "alibi"})


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="gpt2-124m"):
        get_preset("gpt5")
    a = get_preset("tiny")
    a.n_layer = 7
    assert get_preset("tiny").n_layer == 2  # presets are copies


def test_rope_scaling_is_validated():
    good = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_len": 8192}
    ModelConfig(rope_scaling=good).validate()
    with pytest.raises(ConfigError, match="needs exactly the keys"):
        ModelConfig(rope_scaling={"factor": 8.0}).validate()
    with pytest.raises(ConfigError, match="high_freq_factor must exceed"):
        ModelConfig(rope_scaling={**good, "high_freq_factor": 1.0}).validate()
    with pytest.raises(ConfigError, match="needs model.pos = 'rope'"):
        ModelConfig(pos="learned", rope_scaling=good).validate()
    for key, bad in [("factor", True), ("factor", float("nan")), ("low_freq_factor", float("inf")),
                     ("original_max_len", "8192"), ("factor", -2.0)]:
        with pytest.raises(ConfigError, match=f"rope_scaling.{key} must be"):
            ModelConfig(rope_scaling={**good, key: bad}).validate()
    with pytest.raises(ConfigError, match="original_max_len must be a whole number"):
        ModelConfig(rope_scaling={**good, "original_max_len": 8192.5}).validate()


def test_numpy_sizes_and_rates_are_accepted_and_stored_as_python_numbers(tmp_path):
    """A config built from NumPy numbers (a sweep over np.arange) was refused with "n_layer must
    be a positive integer, got np.int64(2)"; accepted, they must still reach config.json."""
    np = pytest.importorskip("numpy")
    from scratchlm.model import load_model, save_model

    scaling = {"factor": np.float32(8.0), "low_freq_factor": 1, "high_freq_factor": np.float64(4.0),
               "original_max_len": np.int64(64)}
    cfg = ModelConfig(n_layer=np.int64(2), d_model=np.int32(64), dropout=np.float32(0.0), rope_scaling=scaling)
    cfg.validate()
    assert type(cfg.n_layer) is int and type(cfg.d_model) is int and type(cfg.dropout) is float
    assert type(cfg.rope_scaling["factor"]) is float and type(cfg.rope_scaling["original_max_len"]) is int
    assert type(scaling["factor"]) is np.float32  # the caller's table is left as it was
    save_model(GPT(cfg), tmp_path / "m")
    assert load_model(tmp_path / "m").cfg == cfg
    with pytest.raises(ConfigError, match="n_layer must be a positive integer"):
        ModelConfig(n_layer=np.bool_(True)).validate()
    learned = ModelConfig(pos="learned", rope_theta=np.float32(1e4))  # unused there, stored all the same
    learned.validate()
    assert type(learned.rope_theta) is float


def test_replace_derives_the_derived_widths_again():
    """`replace(n_head=8)` of an MHA config kept its 4 KV heads (GQA without asking), and a new
    d_model or mlp kept the old d_ff."""
    base = ModelConfig(vocab_size=64, n_layer=1, n_head=4, d_model=64, max_seq_len=16, mlp="swiglu")
    assert base.replace(n_head=8).n_kv_head == 8
    assert base.replace(d_model=256).d_ff == ModelConfig(vocab_size=64, n_layer=1, n_head=4, d_model=256,
                                                         max_seq_len=16, mlp="swiglu").d_ff
    assert base.replace(mlp="gelu").d_ff == 256
    gqa = base.replace(n_kv_head=2, d_ff=96)  # given ones stay as given
    assert gqa.n_kv_head == 2 and gqa.d_ff == 96
    assert gqa.replace(n_head=8).n_kv_head == 2 and gqa.replace(d_model=128).d_ff == 96


def test_a_rope_scaling_length_beyond_any_size_is_refused():
    """1e20 passed validation, then building the model raised OverflowError in torch."""
    scaling = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_len": 1e20}
    cfg = ModelConfig(vocab_size=64, n_layer=1, n_head=2, d_model=16, max_seq_len=16, pos="rope", rope_scaling=scaling)
    with pytest.raises(ConfigError, match="rope_scaling.original_max_len must be ≤ 2,147,483,647"):
        cfg.validate()


@pytest.mark.parametrize("d_model", ["64", 64.0, None])
def test_a_mistyped_d_model_built_in_python_is_one_config_error(d_model):
    """Deriving d_ff from it raised a TypeError in the constructor, before validate could name it."""
    with pytest.raises(ConfigError, match=f"model.d_model must be a positive integer, got {d_model!r}"):
        GPT(ModelConfig(d_model=d_model))

"""`PretrainConfig` pieces that need no training: the [model] preset and where a run may write."""

from __future__ import annotations

import pytest

from scratchlm.errors import ConfigError
from scratchlm.train.config import build_model_config, load_pretrain_config

BASE = ["data.tokens=tokens", "train.max_steps=1"]


def test_a_model_section_without_a_preset_starts_from_the_tiny_one():
    """Giving one [model] key used to replace the default table, preset included, so the model fell
    back to ModelConfig's defaults (4 K/V heads instead of tiny's 2) and a resume then failed."""
    cfg = load_pretrain_config(None, [*BASE, "model.n_layer=3"])
    assert cfg.model == {"preset": "tiny", "n_layer": 3}  # saved configs name the preset used
    model = build_model_config(cfg.model, 300, 16)
    tiny = build_model_config({"preset": "tiny"}, 300, 16)
    assert model.n_layer == 3 and model.n_kv_head == tiny.n_kv_head == 2 and model.d_ff == tiny.d_ff
    assert build_model_config({"n_layer": 3}, 300, 16) == model  # the library call, without the config


def test_a_preset_of_none_is_the_model_configs_own_defaults():
    cfg = load_pretrain_config(None, [*BASE, "model.preset=none", "model.n_layer=3"])
    assert build_model_config(cfg.model, 300, 16).n_kv_head == 4


@pytest.mark.parametrize(("heads", "kv_heads"), [(1, 1), (2, 2), (3, 3), (8, 2)])
def test_the_presets_kv_heads_stay_only_where_they_divide_the_new_head_count(heads, kv_heads):
    model = build_model_config({"n_head": heads, "d_model": 24 * heads}, 300, 16)
    assert model.n_kv_head == kv_heads


def test_train_out_must_not_be_empty_or_overlap_the_tokens(tmp_path, monkeypatch):
    """A run written into its tokens dir was deleted by the next `data tokenize --out` of it."""
    from scratchlm.train.config import check_train_out

    tokens = tmp_path / "data" / "tokens"
    tokens.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)

    def check(out: str, tokens_dir: str = str(tokens)):
        return check_train_out(load_pretrain_config(None, [f"data.tokens={tokens_dir}", "train.max_steps=1",
                                                           f"train.out={out}"]))

    for out, message in [
        ("", "train.out is empty"),
        ("  ", "train.out is empty"),
        (str(tokens), "is the tokens dir"),
        (str(tokens / "run"), "is inside the tokens dir"),
        ("data/tokens/../tokens", "is the tokens dir"),
    ]:
        with pytest.raises(ConfigError) as caught:
            check(out)
        text = str(caught.value)
        assert text.startswith("train.out") and message in text and "\n" not in text
    with pytest.raises(ConfigError, match="is the tokens dir data/tokens"):
        check(str(tokens), "data/tokens")  # relative paths are resolved too
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        check("a-file")
    assert check("runs/pretrain") == tmp_path / "runs" / "pretrain"
    assert check(str(tmp_path / "data" / "run")) == tmp_path / "data" / "run"  # beside the tokens is fine
    # a run only adds files: the current directory and one holding the tokens are fine, and a
    # run started in its own folder with train.out = . resumes from there
    assert check(".") == tmp_path and check(str(tmp_path / "data")) == tmp_path / "data"


def test_set_takes_none_for_a_model_width_and_text_for_a_run_folder():
    """`--set model.d_ff=none` was refused by an error offering none; `--set train.out=2024-06-01`
    was read as a date."""
    from scratchlm.model.config import default_d_ff

    cfg = load_pretrain_config(None, [*BASE, "model.d_model=96", "model.d_ff=none", "train.out=2024-06-01"])
    assert cfg.model["d_ff"] is None and cfg.train.out == "2024-06-01"
    assert build_model_config(cfg.model, 300, 16).d_ff == default_d_ff(96, "swiglu")
    assert load_pretrain_config(None, [*BASE, "train.out=123", "data.tokens=true"]).data.tokens == "true"


def test_a_negative_budget_is_named_not_called_missing():
    """`max_steps = -1` was told "[train] needs a budget: set max_steps...", which it had set."""
    with pytest.raises(ConfigError, match=r"train.max_steps must be >= 0, got -1"):
        load_pretrain_config(None, ["data.tokens=x", "train.max_steps=-1"])


@pytest.mark.parametrize("value", [False, 0.0])
def test_a_vocab_size_that_is_not_an_integer_is_refused_even_where_it_equals_zero(value):
    """`false == 0` in Python: `model.vocab_size = false` used to mean "the tokenizer's"."""
    assert build_model_config({"vocab_size": 0}, 300, 16).vocab_size == 300
    with pytest.raises(ConfigError, match="vocab_size"):
        build_model_config({"vocab_size": value}, 300, 16)


@pytest.mark.parametrize(("key", "value"), [("beta1", "0.9"), ("beta1", False), ("beta2", None), ("min_lr_ratio", "x")])
def test_a_config_built_in_python_with_a_mistyped_fraction_is_one_config_error(key, value):
    """`train` validates a config built in Python (no loader checked it): a beta of "0.9" was a
    TypeError traceback, and `beta1 = False` passed as 0 to fail later inside torch's AdamW."""
    from dataclasses import replace

    config = load_pretrain_config(None, BASE)
    config.train = replace(config.train, **{key: value})
    with pytest.raises(ConfigError, match=rf"train\.{key} must be a finite number, got {value!r}"):
        config.validate()

"""The config machinery: TOML + --set overrides, strict keys and types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from scratchlm.config import apply_overrides, from_dict, load_config, parse_value, to_dict
from scratchlm.errors import ConfigError


@dataclass
class Train:
    lr: float = 3e-4
    steps: int = 10
    precision: Literal["fp32", "bf16"] = "fp32"
    tags: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Stage:
    name: str = "run"
    train: Train = field(default_factory=Train)

    def validate(self) -> None:
        if self.train.steps < 0:
            raise ConfigError("train.steps must be >= 0")


def test_defaults_file_and_overrides_layer_in_order(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('name = "file"\n[train]\nlr = 1e-3\nsteps = 5\n')
    flags = {"name": "flag", "train": {"lr": 2e-3, "steps": 6}}  # what was typed on the command line
    cfg = load_config(Stage, cfg_file, ["train.steps=7", "train.tags=['a','b']"], base=flags)
    assert cfg.name == "flag"  # a flag wins over the file
    assert cfg.train.lr == 2e-3
    assert cfg.train.steps == 7
    assert cfg.train.tags == ["a", "b"]
    assert cfg.train.precision == "fp32"


def test_int_is_accepted_as_float_but_not_the_reverse():
    assert from_dict(Train, {"lr": 1}).lr == 1.0
    with pytest.raises(ConfigError, match="train.steps: expected an integer"):
        from_dict(Stage, {"train": {"steps": 2.5}})


def test_unknown_key_names_the_valid_keys():
    with pytest.raises(ConfigError) as e:
        load_config(Stage, None, ["train.lrr=0.1"])
    msg = str(e.value)
    assert "train.lrr" in msg and "lr" in msg and "precision" in msg
    assert "\n" not in msg


def test_wrong_literal_and_wrong_type_are_errors():
    with pytest.raises(ConfigError, match="'fp64' is not one of"):
        load_config(Stage, None, ["train.precision=fp64"])
    with pytest.raises(ConfigError, match="expected a table"):
        load_config(Stage, None, ["train=3"])
    with pytest.raises(ConfigError, match="expected a string"):
        from_dict(Stage, {"name": 3})


def test_optional_field_accepts_none_and_value():
    assert load_config(Stage, None, ["train.seed=4"]).train.seed == 4
    with pytest.raises(ConfigError):
        load_config(Stage, None, ["train.seed=four"])


def test_validate_hook_runs():
    with pytest.raises(ConfigError, match="steps must be"):
        load_config(Stage, None, ["train.steps=-1"])


def test_bad_override_syntax_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(Stage, None, ["novalue"])
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(Stage, bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(Stage, tmp_path / "missing.toml")


def test_parse_value_reads_toml_literals_and_keeps_bare_words():
    assert parse_value("3") == 3
    assert parse_value("3e-4") == 3e-4
    assert parse_value("true") is True
    assert parse_value("hello") == "hello"
    assert parse_value("[1, 2]") == [1, 2]


@pytest.mark.parametrize("text", ['"val', "'val", "[1, 2", "{a = 1"])
def test_a_value_that_opens_a_toml_string_or_list_and_never_closes_it_is_an_error(text):
    """Kept as text, `"val` would name another split or file than the one meant, silently."""
    with pytest.raises(ConfigError, match="is not a valid TOML value"):
        parse_value(text)


def test_override_into_value_is_an_error():
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_to_dict_round_trips():
    cfg = load_config(Stage, None, ["train.tags=['x']"])
    assert from_dict(Stage, to_dict(cfg)) == cfg


def test_a_float_setting_must_be_a_finite_number():
    """NaN passes every range check after it (`nan <= 0` is False), and true is no number."""
    for value in (float("nan"), float("inf"), True, "1e-3"):
        with pytest.raises(ConfigError, match="train.lr must be a finite number"):
            from_dict(Stage, {"train": {"lr": value}})


def test_integers_of_any_kind_are_integers_and_bools_of_any_kind_are_not():
    import numpy as np
    import torch

    from scratchlm.config import integer_value

    assert [integer_value(v) for v in (5, np.int64(4), torch.tensor(3))] == [5, 4, 3]
    assert [integer_value(v) for v in (True, np.bool_(True), torch.tensor(True), 2.0, "7", None)] == [None] * 6


@dataclass
class Optionals:
    name: str = "run"
    note: str | None = "x"
    count: int | None = 3
    seeds: list[int] | None = None
    extra: dict = field(default_factory=dict)


@pytest.mark.parametrize("text", ["none", "None", "NULL", "null"])
def test_a_bare_none_sets_an_optional_setting_to_none(text):
    """The error for `--set model.d_ff=none` offered none and then refused it."""
    cfg = load_config(Optionals, None, [f"count={text}", f"note={text}", f"seeds={text}", f"extra.k={text}"])
    assert cfg.count is None and cfg.note is None and cfg.seeds is None and cfg.extra == {"k": None}


def test_none_is_text_where_none_is_not_allowed_and_when_quoted():
    assert load_config(Optionals, None, ["name=none"]).name == "none"
    assert load_config(Optionals, None, ['note="none"']).note == "none"
    with pytest.raises(ConfigError, match=r"count: expected int \| none, got 'none'"):
        load_config(Optionals, None, ["count='none'"])


@pytest.mark.parametrize(("text", "value"), [
    ("2024-06-01", "2024-06-01"), ("123", "123"), ("true", "true"), ("1e-3", "1e-3"), ("07:30:00", "07:30:00"),
    ('"quoted"', "quoted"), ("'lit'", "lit"), ('"a\\tb"', "a\tb"),
])
def test_a_string_setting_takes_unquoted_text_as_typed(text, value):
    """`--set train.out=2024-06-01` names a folder; the TOML reading (a date) belongs to other types."""
    assert load_config(Optionals, None, [f"name={text}"]).name == value
    assert load_config(Optionals, None, [f"note={text}"]).note == value


def test_other_types_keep_toml_semantics_on_the_command_line_and_in_files(tmp_path):
    assert load_config(Optionals, None, ["count=123"]).count == 123
    assert load_config(Stage, None, ["train.tags=['a', 'b']", "train.lr=1e-3"]).train.tags == ["a", "b"]
    toml = tmp_path / "c.toml"
    toml.write_text("name = 2024-06-01\n")
    with pytest.raises(ConfigError, match=r"name: expected a string, got datetime.date\(2024, 6, 1\)"):
        load_config(Optionals, toml)
    with pytest.raises(ConfigError, match="train.steps: expected an integer, got 'many'"):
        load_config(Stage, None, ["train.steps=many"])


def test_a_string_setting_takes_text_that_is_not_toml_and_other_types_still_refuse_it():
    """`--set train.sample_prompt=[INST]` was "not a valid TOML value" although the setting is text."""
    assert load_config(Stage, None, ["name=[INST]"]).name == "[INST]"
    assert load_config(Stage, None, ["name={x"]).name == "{x"
    with pytest.raises(ConfigError, match="is not a valid TOML value"):
        load_config(Stage, None, ["train.tags=[a, b"])
    with pytest.raises(ConfigError, match="is not a valid TOML value"):
        load_config(Stage, None, ['name="unclosed'])  # quoted: meant as TOML, and broken


def test_a_table_set_whole_then_one_of_its_keys():
    """`--set train={steps=3} --set train.lr=1e-3` failed: "'train' is a value, not a section"."""
    cfg = load_config(Stage, None, ["train={steps = 3}", "train.lr=1e-3"])
    assert (cfg.train.steps, cfg.train.lr) == (3, 1e-3)


def test_a_config_file_saved_with_a_byte_order_mark_is_read():
    """Notepad puts U+FEFF first; tomllib then said "Invalid statement (at line 1, column 1)"."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        cfg_file = Path(folder) / "c.toml"
        cfg_file.write_bytes(b"\xef\xbb\xbf" + b'name = "file"\n[train]\nsteps = 5\n')
        cfg = load_config(Stage, cfg_file)
    assert cfg.name == "file" and cfg.train.steps == 5


def test_toml_nested_too_deeply_is_one_config_error(tmp_path, capsys):
    """tomllib has no depth limit: `a = [[[...]]]` in a config file or a --set value ended in a
    RecursionError traceback (exit 1) instead of one error line."""
    from scratchlm.cli import main

    deep = "[" * 5000 + "]" * 5000
    config = tmp_path / "deep.toml"
    config.write_text(f"path = {deep}\n")
    assert main(["data", "inspect", "--config", str(config)]) == 2
    assert capsys.readouterr().err == f"scratchlm: error: {config}: not valid TOML: nested too deeply\n"
    assert main(["data", "inspect", "x", "--set", f"top_tokens={deep}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scratchlm: error: --set value '[[[") and err.endswith("(nested too deeply)\n")

"""Typed configs: dataclasses filled from TOML files and `--set section.key=value` overrides.

Each stage defines its own dataclass (beside the stage's code, e.g. `PrepareConfig` in
`scratchlm/data/prepare.py`); nested dataclass fields are TOML sections. This module is the one
machinery they all share: it checks every key and every type, so a typo in a recipe is an error
that lists the valid keys instead of a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
import sys
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from scratchlm.errors import ConfigError
from scratchlm.fsutil import read_text_file

T = TypeVar("T")


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def require_finite_number(name: str, value: object, *, positive: bool = False) -> float:
    """`value` as a float, or one ConfigError naming `name`. Finiteness comes first because NaN
    fails every comparison (`nan <= 0` is False) and would slip past any range check after it;
    a bool is a mistyped flag, not the number 0 or 1."""
    number = real_value(value)
    if number is None or not math.isfinite(number):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if positive and number <= 0:
        raise ConfigError(f"{name} must be positive, got {value!r}")
    return number


def real_value(value: object) -> float | None:
    """`value` as a Python float when it is a real number of any kind (int, float, NumPy scalar,
    0-d NumPy array or tensor of a number dtype), else None; bools of every kind are flags, not
    numbers. An int too large for a float is ±inf, which a finiteness check then refuses."""
    if _is_bool(value):
        return None
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # 0-d array or tensor: its number
        value = value.item()
    if not isinstance(value, numbers.Real):  # Python and NumPy ints and floats (bools refused above)
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _is_bool(value: object) -> bool:
    return isinstance(value, bool) or str(getattr(value, "dtype", "")) in ("torch.bool", "bool")


def integer_value(value: object) -> int | None:
    """`value` as a Python int when it is an integer of any kind (int, NumPy integer, integer 0-d
    tensor), else None: a float or a bool passed where a count or an id belongs is a mistake."""
    if _is_bool(value):
        return None  # a bool, NumPy's or torch's included
    try:
        return operator.index(value)
    except TypeError:
        return None


MAX_WORKERS = 1024  # far above any machine's cores; beyond it a count is a typo (and overflows C ints)


def check_workers(value: int, zero_means: str, prefix: str = "") -> None:
    """One ConfigError for a worker count outside 0 (`zero_means`) .. MAX_WORKERS."""
    if not 0 <= value <= MAX_WORKERS:
        raise ConfigError(f"{prefix}workers must be 0 ({zero_means}) to {MAX_WORKERS}, got {value}")


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_describe(a) for a in get_args(tp))
    if tp is type(None):
        return "none"
    if origin in (list, tuple):
        args = get_args(tp)
        return f"list of {_describe(args[0])}" if args else "list"
    if origin is dict:
        return "table"
    return getattr(tp, "__name__", str(tp))


@dataclasses.dataclass(frozen=True)
class SetValue:
    """A `--set` value: the text typed and the TOML value it reads as. Which one a setting takes
    is known only once the setting's type is: a string setting takes unquoted text as typed
    (`train.out=2024-06-01` names a folder, not a date; `[INST]` is a prompt, not a broken list),
    an optional one takes a bare `none`. Text that is not TOML keeps its error (`error`) until a
    setting other than a string asks for its value."""

    text: str
    value: Any = None
    error: str | None = None

    def __repr__(self) -> str:  # error messages quote the value, as they would a TOML file's
        return repr(self.text if self.error else self.value)

    @property
    def is_bare_none(self) -> bool:
        """An unquoted none/null: TOML has no null, so `--set key=none` is how None is typed."""
        return self.text.lower() in ("none", "null")

    def toml(self) -> Any:
        """The TOML value, or the ConfigError of text that is not one."""
        if self.error:
            raise ConfigError(self.error)
        return self.value


def _free_value(value: Any) -> Any:
    """A value for a setting of no declared type (a free table such as `[model]`): `--set` values
    read as TOML, a bare none as None (checked later, against the table's real type)."""
    if isinstance(value, SetValue):
        return None if value.is_bare_none else value.toml()
    if isinstance(value, Mapping):
        return {k: _free_value(v) for k, v in value.items()}
    return value


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against annotation `tp`, converting only where no information is lost."""
    origin = get_origin(tp)
    if tp is Any:
        return _free_value(value)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if type(None) in args and (value is None or (isinstance(value, SetValue) and value.is_bare_none)):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: expected {_describe(tp)}, got {value!r}")
    if isinstance(value, SetValue):
        if tp is str and not value.text.startswith(('"', "'")):
            return value.text
        value = value.toml()
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"{where}: {value!r} is not one of {_describe(tp)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table of {field_names(tp)}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, str) and value == "":
            value = []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected {_describe(tp)}, got {value!r}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return _free_value(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        return require_finite_number(where, value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: expected {_describe(tp)}, got {value!r}")


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types raise ConfigError."""
    hints = get_type_hints(cls)
    valid = field_names(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in valid:
            section = f"[{where}]" if where else "the top level"
            raise ConfigError(f"unknown config key '{path}'; valid keys in {section}: {', '.join(valid)}")
        kwargs[key] = _coerce(value, hints[key], path)
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{where or cls.__name__}: {e}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """A plain, TOML/JSON-ready dict of a config dataclass (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(obj)


def _loads_toml(text: str) -> dict[str, Any]:
    """`tomllib.loads`, with nesting too deep for Python's stack read as the TOML error it is:
    tomllib sets no depth limit, and `a = [[[...]]]` ended in a RecursionError traceback."""
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise tomllib.TOMLDecodeError("nested too deeply") from None


def parse_value(text: str) -> Any:
    """Parse the right side of `--set key=value` as a TOML value; bare words stay strings. A value
    that opens a TOML string, list or table must close it: kept as text, `"val` would silently
    name something else."""
    try:
        return _loads_toml(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError as e:
        if text.startswith(('"', "'", "[", "{")):
            raise ConfigError(f"--set value {text!r} is not a valid TOML value ({e})") from None
        return text


def parse_override(item: str) -> tuple[list[str], SetValue]:
    """`section.key=value` as the key's parts and the value, its text kept beside its TOML reading."""
    if "=" not in item:
        raise ConfigError(f"--set expects section.key=value, got {item!r}")
    key, _, raw = item.partition("=")
    parts = [p.strip() for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"--set expects section.key=value, got {item!r}")
    text = raw.strip()
    try:
        return parts, SetValue(text, parse_value(text))
    except ConfigError as e:  # raised only if the setting is not a string (SetValue)
        return parts, SetValue(text, error=str(e))


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Merge `section.key=value` strings into a nested dict (in place; returned for chaining)."""
    for item in overrides:
        parts, value = parse_override(item)
        node = data
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if isinstance(child, SetValue) and not child.error and isinstance(child.value, dict):
                child = node[p] = dict(child.value)  # a table set whole (`--set train={...}`), then a key of it
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item}: '{p}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def read_toml(path: str | Path) -> dict[str, Any]:
    if not str(path).strip():
        raise ConfigError("--config is empty; name a TOML file")
    text = read_text_file(path, ConfigError)  # not found, a directory, not UTF-8: one line each
    try:
        return _loads_toml(text.removeprefix("\ufeff"))  # the BOM some editors (Notepad) put first
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge `extra` into a copy of `base` (tables merge, values replace)."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    base: Mapping[str, Any] | None = None,
) -> T:
    """Defaults ← TOML file ← `base` (the flags given on the command line) ← `--set` overrides,
    then type-checked. What is typed on the command line wins over a file written earlier."""
    data: dict[str, Any] = read_toml(path) if path is not None else {}
    data = merge(data, base or {})
    apply_overrides(data, overrides)
    return from_dict(cls, data)


def is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


__all__ = [
    "apply_overrides",
    "from_dict",
    "integer_value",
    "load_config",
    "merge",
    "parse_override",
    "parse_value",
    "read_toml",
    "SetValue",
    "real_value",
    "require_finite_number",
    "to_dict",
]

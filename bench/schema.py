"""Typed input from YAML: reading a mapping, building a dataclass from it with every key and type checked, and the
one-line checks of names and choices. Shared by the run config, data cards, recipes and method options."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from bench.errors import ConfigError


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with one-line errors for a missing file, bad syntax or a non-mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{at}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_value(tp: Any, value: Any, key: str, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints are accepted where floats are expected)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return check_value(arg, value, key, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: '{key}' expects {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str | int | float) and not isinstance(value, bool) and item is str:
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: '{key}' expects a list, got {value!r}")
        return [check_value(item, v, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' expects a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: '{key}' expects true or false, got {value!r}")
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: '{key}' expects {tp.__name__}, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: '{key}' expects {tp.__name__}, got {value!r}")
    return value


def build_dataclass(cls: type, data: dict[str, Any], prefix: str, where: str) -> Any:
    """Instantiate the dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: '{prefix}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key '{prefix}.{key}'; valid keys: {', '.join(names)}")
        kwargs[key] = check_value(hints[key], value, f"{prefix}.{key}", where)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def check_choice(key: str, value: str, valid: tuple[str, ...]) -> None:
    """Raise a one-line ConfigError naming ``key`` unless ``value`` is one of ``valid``."""
    if value not in valid:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(valid)}")


def check_name(key: str, value: str) -> None:
    """Names become folder and file names: refuse empty ones, path separators and ``..``."""
    if not value or "/" in value or "\\" in value or ".." in value or value != value.strip():
        raise ConfigError(f"{key} {value!r} is not a name: use letters, digits, '-', '_' and '.', without '/' or '..'")

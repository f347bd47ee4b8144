"""Typed configs: nested dataclasses filled from YAML and ``key=value`` overrides.

Unknown keys and values of the wrong type are errors that name the key (``train.steps``).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key or value that cannot be used; the message names the key."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked (and, where lossless, converted) against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {' or '.join(map(_type_name, options))}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {_type_name(tp)} fields, got {value!r}")
        return from_dict(tp, value, key)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; missing keys keep their defaults.

    A section given in part is merged into the default instance of its field (e.g.
    ``ExperimentConfig.train``), so a key not given always has the value ``--help`` shows.
    """
    return _build(cls, data, prefix, base=None, root=cls)


def _build(cls: type[T], data: dict[str, Any], prefix: str, base: T | None, root: type) -> T:
    """``cls`` from ``data`` over ``base`` (None: ``cls``'s own defaults); ``root`` is the
    top-level config class, searched for the keys an unknown key may have meant."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in names:
            raise _unknown_key(key, prefix, names, root)
        default = _field_default(cls, base, key) if isinstance(value, dict) else None
        if dataclasses.is_dataclass(default):  # a section given in part: merged into its default
            kwargs[key] = _build(type(default), value, full, default, root)
        else:
            kwargs[key] = _coerce(value, hints[key], full)
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        message = str(err)
        first = message.split(" ", 1)[0]
        if prefix and first in names:  # "field must be ...": name it in full
            message = f"{prefix}.{message}"
        elif not (message.startswith(f"{prefix}.") if prefix else first.split(".")[0] in names):
            message = f"{prefix or cls.__name__}: {message}"  # unless it names the key already
        raise ConfigError(message) from err


def _field_default(cls: type, base: Any, name: str) -> Any:
    """The value field ``name`` has when not given: ``base``'s, else the field's default."""
    if base is not None:
        return getattr(base, name)
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _option_keys(cls: type, prefix: str = "") -> list[str]:
    """Dotted names of every leaf option of dataclass ``cls`` (nested sections walked)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            keys += _option_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _unknown_key(key: str, prefix: str, names: list[str], root: type) -> ConfigError:
    """The error for unknown ``key`` of section ``prefix``: suggests a close key of the section,
    else a key of the same or a close name in another section (``model.context_len`` ->
    ``sampler.context_len``)."""
    full = f"{prefix}.{key}" if prefix else key
    close = difflib.get_close_matches(key, names, n=1)
    if close:
        hint = f" Did you mean {prefix + '.' if prefix else ''}{close[0]}?"
    else:
        by_name: dict[str, list[str]] = {}
        for option in _option_keys(root):
            by_name.setdefault(option.rsplit(".", 1)[-1], []).append(option)
        elsewhere = difflib.get_close_matches(key, list(by_name), n=1)
        hint = f" Did you mean {' or '.join(by_name[elsewhere[0]])}?" if elsewhere else ""
    return ConfigError(f"Unknown config key {full!r}.{hint} Valid keys here: {', '.join(names)}.")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain (YAML-safe) dict of a dataclass config; tuples become lists."""
    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.steps=100", "data.tasks=[reach-v3,push-v3]"]`` -> a nested dict (YAML values)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Override {item!r} is not key=value (e.g. train.steps=1000).")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"Override {key}: cannot parse {raw!r}: {err}") from err
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"Override {key}: {part} is not a section")
        node[parts[-1]] = value
    return nested


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``update`` wins."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Defaults of ``cls``, then the YAML file, then the overrides."""
    data = read_yaml_mapping(path) if path is not None else {}
    return from_dict(cls, merge(data, parse_overrides(list(overrides))))


def read_yaml_mapping(path: str | Path, what: str = "Config file") -> dict[str, Any]:
    """The mapping a YAML file holds; a missing file, bad YAML or another top level is a
    :class:`ConfigError` that names the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {str(path)!r} must hold a mapping at the top level.")
    return data


def describe(cfg: Any, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(key, type, default) of every leaf option of a config instance, for ``--help``."""
    rows = []
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            rows += describe(value, f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", _type_name(hints[f.name]), value))
    return rows

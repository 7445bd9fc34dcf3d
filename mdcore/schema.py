"""Strict loading of YAML mappings into frozen dataclasses.

Each configuration file is described by a dataclass; this module checks that a loaded
mapping has only known keys, values of the declared types and values that pass the
field's own check, and names the file and key in one line when it does not.
"""

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mdcore.errors import ConfigError

T = TypeVar("T")

# libyaml's loader when PyYAML was built with it: the same safe subset, ten times
# faster, which matters when a server loads a domain on its first lookup.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Check = Callable[[Any], Any]


def checked(check: Check, **field_args: Any) -> Any:
    """Declare a dataclass field whose value is passed through check() at load.

    check returns the value to store (it may normalise it) or raises ValueError with
    the problem in words.
    """
    metadata = dict(field_args.pop("metadata", {}))
    metadata["check"] = check
    return dataclasses.field(metadata=metadata, **field_args)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML file whose top level must be a mapping (an empty file is {})."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(str(path), "", f"cannot read: {error.strerror}") from None

    try:
        data = yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise ConfigError(str(path), "", f"{where}not valid YAML") from None

    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", "the top level must be a mapping of keys")
    return data


def load(cls: type[T], data: Mapping[str, Any], file: str, prefix: str = "") -> T:
    """Build dataclass cls from data, or raise ConfigError naming file and key."""
    if not isinstance(data, Mapping):
        raise ConfigError(file, prefix.rstrip("."), "must be a mapping")

    fields = {
        field.name: field
        for field in dataclasses.fields(cls)  # type: ignore[arg-type]
        if not field.metadata.get("internal")
    }
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(file, f"{prefix}{key}", f"unknown key (known: {known})")

    values: dict[str, Any] = {}
    for name, field in fields.items():
        if name not in data:
            continue
        key = f"{prefix}{name}"
        value = _convert(hints[name], data[name], file, key)
        values[name] = _run_check(field, value, file, key)
    try:
        return cls(**values)
    except TypeError as error:
        raise ConfigError(file, prefix.rstrip("."), f"missing key: {error}") from None


def _run_check(field: dataclasses.Field[Any], value: Any, file: str, key: str) -> Any:
    check = field.metadata.get("check")
    if check is None or value is None:
        return value
    try:
        return check(value)
    except ValueError as error:
        raise ConfigError(file, key, str(error)) from None


def _convert(hint: Any, value: Any, file: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)

    if origin in (typing.Union, types.UnionType):
        return _convert_optional(args, value, file, key)
    if origin is list or origin is tuple:
        return _convert_sequence(args[0], value, file, key)
    if origin is dict:
        return _convert_mapping(args[1], value, file, key)
    if dataclasses.is_dataclass(hint):
        return load(hint, value, file, key + ".")  # type: ignore[arg-type]
    return _convert_scalar(hint, value, file, key)


def _convert_optional(args: tuple[Any, ...], value: Any, file: str, key: str) -> Any:
    if value is None and type(None) in args:
        return None
    (inner,) = [arg for arg in args if arg is not type(None)]
    return _convert(inner, value, file, key)


def _convert_sequence(item: Any, value: Any, file: str, key: str) -> tuple[Any, ...]:
    if not isinstance(value, list):
        raise ConfigError(file, key, f"must be a list, not {_kind(value)}")
    return tuple(
        _convert(item, entry, file, f"{key}[{i}]") for i, entry in enumerate(value)
    )


def _convert_mapping(item: Any, value: Any, file: str, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(file, key, f"must be a mapping, not {_kind(value)}")
    return {
        str(name): _convert(item, entry, file, f"{key}.{name}")
        for name, entry in value.items()
    }


def _convert_scalar(hint: Any, value: Any, file: str, key: str) -> Any:
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(file, key, f"must be true or false, not {_kind(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(file, key, f"must be a whole number, not {_kind(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(file, key, f"must be a number, not {_kind(value)}")
        return float(value)
    if hint is str or hint is Path:
        if not isinstance(value, str):
            raise ConfigError(file, key, f"must be text, not {_kind(value)}")
        return Path(value) if hint is Path else value
    raise ConfigError(file, key, f"unsupported type {hint!r}")


def _kind(value: Any) -> str:
    names = {bool: "true/false", int: "a number", float: "a number", str: "text"}
    if value is None:
        return "empty"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return names.get(type(value), type(value).__name__)


def dump(record: Any) -> dict[str, Any]:
    """Return a dataclass as plain data fit for yaml.safe_dump (tuples become lists)."""
    result: dict[str, Any] = {}
    for field in dataclasses.fields(record):
        result[field.name] = _plain(getattr(record, field.name))
    return result


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dump(value)
    if isinstance(value, tuple | list):
        return [_plain(entry) for entry in value]
    if isinstance(value, dict):
        return {key: _plain(entry) for key, entry in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value

"""Reading the configuration file: YAML into the typed sections of `pvcd.config.schema`.

The loader is generic: it walks the YAML mapping against the dataclass fields and their type
hints (str, int, float, bool, list/tuple of X, X | None, nested section), applies each field's
checks and each section's `cross_check()`, and reports the first problem with the file and the
key. Duplicate keys are an error (plain YAML silently keeps the last).
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import types
import typing
from collections.abc import Mapping
from typing import Any

import yaml

from pvcd.config.checks import describe
from pvcd.config.schema import Config
from pvcd.domain.errors import ConfigError


def load_config(path: str) -> Config:
    """Read and check the configuration file at `path`; a file that holds secrets must not be
    readable by every user of the machine (`check_private`)."""
    try:
        with open(path, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode  # of the file read, not of a path
            # Bytes, so that PyYAML detects the encoding and reports bad bytes as a YAML error.
            data = yaml.load(file.read(), Loader=_StrictLoader)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the file: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML{_yaml_error_text(exc)}") from exc
    config = parse_config(data, path)
    check_private(path, mode, data)
    return config


def check_private(path: str, mode: int, data: object) -> None:
    """ConfigError if the file (permission bits `mode`) is readable by every user and holds a
    secret: API tokens and secret_key, fence passwords, ZooKeeper credentials. They are keys
    whose name says so (`SECRET_KEY_NAME`), so a secret key added later is covered too."""
    if not mode & stat.S_IROTH:
        return
    secrets = secret_keys(data)
    if secrets:
        raise ConfigError(
            f"{path}: the file holds secrets ({', '.join(secrets)}) and every user of this "
            f"machine can read it (mode {stat.S_IMODE(mode):04o}): make it readable by root "
            f"alone, `chmod 0600 {path}` (or 0640 with a group of its own)")


# key names that hold a secret ('ipmi_password', 'secret_key', 'tokens', ...), but not a key
# that names a file or a folder holding one ('password_file')
SECRET_KEY_NAME = re.compile(
    r"(password|passwd|secret|token|credential|digest)(?!.*_(file|path|dir)$)", re.IGNORECASE)


def secret_keys(data: object, key: str = "") -> list[str]:
    """The keys of the parsed YAML `data` that hold a secret with a value (not empty)."""
    found: list[str] = []
    if isinstance(data, Mapping):
        for name, value in data.items():
            child = _join(key, str(name))
            if SECRET_KEY_NAME.search(str(name)) and value not in (None, "", [], {}):
                found.append(child)
            else:
                found += secret_keys(value, child)
    elif isinstance(data, list):
        for index, item in enumerate(data):
            found += secret_keys(item, f"{key}[{index}]")
    return found


def parse_config(data: object, source: str) -> Config:
    """Check already-parsed YAML `data`; `source` names the file in error messages."""
    try:
        config: Config = _build_section(Config, data, "")
    except _Invalid as invalid:
        where = f"{invalid.key}: " if invalid.key else ""
        raise ConfigError(f"{source}: {where}{invalid.problem}") from None
    return dataclasses.replace(config, path=source)


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that rejects duplicate keys, which plain YAML silently resolves last-wins."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # keys from `<<:` merges may legitimately be overridden
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # unhashable: the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_error_text(exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or problem is None:
        return f": {exc}"
    return f" at line {mark.line + 1}, column {mark.column + 1}: {problem}"


class _Invalid(Exception):
    """The first problem found while walking the data; `parse_config` adds the file name."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(key, problem)
        self.key = key
        self.problem = problem


def _build_section(section: type[Any], data: object, key: str) -> Any:
    if not isinstance(data, Mapping):
        raise _Invalid(key, f"expected a mapping, got {describe(data)}")
    fields = [f for f in dataclasses.fields(section) if f.metadata.get("yaml", True)]
    allowed = [f.name for f in fields]
    for name in data:
        if name not in allowed:
            raise _Invalid(_join(key, str(name)), f"unknown key (allowed: {', '.join(allowed)})")
    hints = typing.get_type_hints(section)
    values: dict[str, object] = {}
    for f in fields:
        field_key = _join(key, f.name)
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _Invalid(field_key, "required key is missing")
            continue
        value = _convert(hints[f.name], data[f.name], field_key)
        _check_value(f.metadata, value, field_key)
        values[f.name] = value
    built = section(**values)
    cross_check = getattr(built, "cross_check", None)
    if cross_check is not None and (problem := cross_check()) is not None:
        raise _Invalid(_join(key, problem[0]), problem[1])
    return built


def _convert(hint: Any, value: object, key: str) -> Any:
    """Return `value` as type `hint`, or raise `_Invalid` naming `key`."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        others = [arg for arg in args if arg is not type(None)]
        if len(args) != 2 or len(others) != 1:
            raise TypeError(f"unsupported config type {hint!r}: only `X | None` unions")
        return None if value is None else _convert(others[0], value, key)
    if origin in (list, tuple):
        if origin is tuple and (len(args) != 2 or args[1] is not Ellipsis):
            raise TypeError(f"unsupported config type {hint!r}: only `tuple[X, ...]`")
        if not isinstance(value, list):
            raise _Invalid(key, f"expected a list, got {describe(value)}")
        return origin(_convert(args[0], item, f"{key}[{i}]") for i, item in enumerate(value))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build_section(hint, value, key)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Invalid(key, f"expected true or false, got {describe(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):  # bool is an int in Python
            return value
        raise _Invalid(key, f"expected an integer, got {describe(value)}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _Invalid(key, f"expected a number, got {describe(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Invalid(key, f"expected a string, got {describe(value)}")
    raise TypeError(f"unsupported config type {hint!r}")


def _check_value(metadata: Mapping[str, Any], value: Any, key: str) -> None:
    if value is None:
        return  # an optional key left unset: nothing to check
    check = metadata.get("check")
    if check is not None and (problem := check(value)) is not None:
        raise _Invalid(key, problem)
    each = metadata.get("each")
    if each is not None:
        for index, item in enumerate(value):
            if (problem := each(item)) is not None:
                raise _Invalid(f"{key}[{index}]", problem)


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name

"""One strict parser for every table a user writes (config sections, gates, runtime, recipes, compress steps).

``parse_table(Cls, table, where)`` checks a TOML table against a dataclass: an unknown key is an error naming
the nearest valid key, a value of the wrong type is an error naming the type, lists become tuples (settings
stay frozen). The error class is the caller's (ConfigError for the config, ProfileError for profiles).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Iterable, Literal, TypeVar

from edgekit.errors import ConfigError, EdgekitError, did_you_mean, shown

T = TypeVar("T")


def unknown_key(key: str, valid: Iterable[str], where: str, error: type[EdgekitError] = ConfigError,
                elsewhere: dict[str, str] | None = None) -> EdgekitError:
    """The error for a key nobody defined, naming the nearest valid one (or where the key does belong)."""
    valid = tuple(valid)
    if elsewhere and key in elsewhere:
        return error(f"key '{shown(key)}' in {where} belongs to {elsewhere[key]}; valid keys here: {', '.join(valid)}")
    hint = did_you_mean(key, valid, f"; valid keys: {', '.join(valid)}")
    return error(f"unknown key '{shown(key)}' in {where}{hint}")


def check_keys(table: Any, valid: Iterable[str], where: str, error: type[EdgekitError] = ConfigError,
               elsewhere: dict[str, str] | None = None) -> dict[str, Any]:
    """``table`` must be a table whose keys are all in ``valid``; returns it."""
    valid = tuple(valid)
    if not isinstance(table, dict):
        raise error(f"{where} must be a table, got {type(table).__name__}")
    for key in table:
        if key not in valid:
            raise unknown_key(key, valid, where, error, elsewhere)
    return table


def field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.init)


def parse_table(cls: type[T], table: Any, where: str, error: type[EdgekitError] = ConfigError, base: T | None = None,
                elsewhere: dict[str, str] | None = None, skip: Iterable[str] = ()) -> T:
    """Build ``cls`` from ``table`` (on top of ``base`` when given), checking every key and value type.

    ``elsewhere`` maps keys that belong to another table (another recipe mode, say) to where they belong, so
    the message can say so; ``skip`` names keys the caller has already consumed (a discriminator such as
    ``method``)."""
    skipped = set(skip)
    valid = field_names(cls)
    check_keys(table, (*valid, *skipped), where, error, elsewhere)
    hints = typing.get_type_hints(cls)
    values = {key: coerce(value, hints[key], f"{where} {key}", error) for key, value in table.items() if key not in skipped}
    try:
        return dataclasses.replace(base, **values) if base is not None else cls(**values)
    except EdgekitError as exc:
        raise error(f"{where}: {exc}") from None


def to_table(settings: Any) -> dict[str, Any]:
    """A settings dataclass as the TOML table ``parse_table`` reads back: tuples as lists, unset (None) values left
    out, fields that are not ``__init__`` arguments (a discriminator such as ``method``) kept."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(settings).items() if v is not None}


def coerce(value: Any, hint: Any, where: str, error: type[EdgekitError] = ConfigError) -> Any:
    """Check one TOML value against a field's type hint; ints are accepted as floats, lists become tuples."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin is Literal:
        if not any(type(a) is type(value) and a == value for a in args):
            shown = ", ".join(_literal(a) for a in args)
            raise error(f"{where} = {_literal(value)} is not one of {shown}{did_you_mean(value, [str(a) for a in args])}")
        return value
    if isinstance(hint, types.UnionType) or origin is typing.Union:
        kinds = [a for a in args if a is not type(None)]
        if value is None and len(kinds) < len(args):
            return None
        for kind in kinds:
            try:
                return coerce(value, kind, where, error)
            except EdgekitError:
                continue
        raise error(f"{where} must be {' or '.join(_name(k) for k in kinds)}, got {_literal(value)}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise error(f"{where} must be a list of {_name(args[0])}, got {_literal(value)}")
        return tuple(coerce(v, args[0], f"{where}[{i}]", error) for i, v in enumerate(value))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise error(f"{where} must be a table, got {_literal(value)}")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(hint, type) or (isinstance(value, bool) and hint is not bool) or not isinstance(value, hint):
        raise error(f"{where} must be {_name(hint)}, got {_literal(value)}")
    return value


def _name(kind: Any) -> str:
    if typing.get_origin(kind) is Literal:
        return " or ".join(_literal(a) for a in typing.get_args(kind))
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(kind, str(kind))


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{shown(value)}"' if isinstance(value, str) else shown(repr(value))


def check_field_types(settings: Any, where: str, error: type[EdgekitError] = ConfigError) -> None:
    """Check every field of an already-built settings dataclass against its type hint (a parser that built it
    with ``cls(**table)`` checked the keys only): ``per_channel = "yes"`` for a ``bool`` is an error naming the key."""
    if not dataclasses.is_dataclass(settings) or isinstance(settings, type):
        return
    hints = typing.get_type_hints(type(settings))
    for f in dataclasses.fields(settings):
        if f.name in hints and _checkable(hints[f.name]):
            coerce(getattr(settings, f.name), hints[f.name], f"{where} {f.name}", error)


def _checkable(hint: Any) -> bool:
    """Whether ``coerce`` knows every part of ``hint`` (scalars, Literal, unions and tuples of them)."""
    if hint in (bool, int, float, str, type(None)):
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return True
    if isinstance(hint, types.UnionType) or origin is typing.Union or origin is tuple:
        return all(_checkable(a) for a in args if a is not Ellipsis)
    return False

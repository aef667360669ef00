"""Strict loading of a fleet file (TOML): [defaults], [[build]] entries (a config path or inline tables), [publish].

    [defaults]                       # tables every build inherits; a build's own keys win (tables merge key by key)
    [[build]]  name, config = "x.toml"  |  name, model = {...}, calibration, validation, targets, export
    [publish]  url = "s3://bucket/prefix", endpoint = "http://..."
"""

from __future__ import annotations

import copy
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.config import BuildConfig, parse_config
from edgekit.errors import ConfigError, EdgekitError
from edgekit.publish import PublishConfig, parse_publish
from edgekit.tables import parse_table

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class FleetTables:
    """The fleet file's top level."""

    build: tuple[Any, ...] = ()
    defaults: dict[str, Any] | None = None
    publish: dict[str, Any] | None = None


@dataclass(frozen=True)
class Defaults:
    """Tables every [[build]] inherits (paths in them are relative to the fleet file)."""

    export: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None
    targets: dict[str, Any] | None = None


@dataclass(frozen=True)
class BuildEntry:
    """One [[build]]: ``config`` (a path to an edgekit config) or the config's tables inline."""

    name: str | None = None
    config: str | None = None
    model: dict[str, Any] | None = None
    export: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None
    targets: dict[str, Any] | None = None


INLINE = ("model", "export", "calibration", "validation", "targets")


@dataclass(frozen=True)
class FleetBuild:
    """One model of the fleet: its unique name (its output folder) and its checked build configuration."""

    name: str
    cfg: BuildConfig


@dataclass(frozen=True)
class FleetSpec:
    path: Path
    builds: tuple[FleetBuild, ...]
    publish: PublishConfig | None = None


def load_fleet(path: Path) -> FleetSpec:
    """Read and check a fleet file and every build it names; any mistake is a ConfigError naming the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"fleet file {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a UTF-8 text file") from None
    top = parse_table(FleetTables, raw, "the fleet file")
    if not top.build:
        raise ConfigError(f"{path} has no [[build]] entry; add one per model, e.g. [[build]] config = \"model.toml\"")
    base = path.resolve().parent
    defaults = parse_table(Defaults, top.defaults or {}, "[defaults]")
    shared = _absolute_paths({k: v for k, v in vars(defaults).items() if v is not None}, base)
    builds: list[FleetBuild] = []
    for i, table in enumerate(top.build):
        builds.append(_parse_build(table, i, shared, base))
    names = [b.name for b in builds]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"[[build]] name '{name}' is used twice; give each build its own name = \"...\"")
    publish = parse_publish(top.publish, "[publish]") if top.publish is not None else None
    return FleetSpec(path.resolve(), tuple(builds), publish)


def _parse_build(table: Any, i: int, shared: dict[str, Any], base: Path) -> FleetBuild:
    where = f"[[build]] #{i + 1}"
    entry = parse_table(BuildEntry, table, where)
    inline = {k: getattr(entry, k) for k in INLINE if getattr(entry, k) is not None}
    if entry.config is not None and inline:
        raise ConfigError(f"{where} has both 'config' and inline tables ({', '.join(inline)}); use one or the other")
    if entry.config is None and "model" not in inline:
        raise ConfigError(f"{where} needs 'config' (a path to an edgekit config) or an inline [build.model] table")
    if entry.config is not None:
        cfg_path = Path(entry.config).expanduser()
        cfg_path = cfg_path if cfg_path.is_absolute() else base / cfg_path
        if not cfg_path.is_file():
            raise ConfigError(f"{where} config = {entry.config!r}: {cfg_path} does not exist")
        try:
            own = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{where} config {cfg_path} is not valid TOML: {exc}") from None
        cfg_base, origin, default_name = cfg_path.resolve().parent, cfg_path.resolve(), cfg_path.stem
    else:
        own, cfg_base, origin = inline, base, None
        source = str(inline["model"].get("source", "model"))
        default_name = Path(source.split(":")[-1] if source.startswith("example:") else source.split(":")[0]).stem
    name = entry.name or default_name
    if not NAME.match(name):
        raise ConfigError(f"{where} name = {name!r} must be letters, digits, '.', '_' or '-' (it names the output folder)")
    raw = merge(shared, own)
    try:
        cfg = parse_config(raw, cfg_base, origin)
    except EdgekitError as exc:
        raise type(exc)(f"fleet build '{name}': {exc}") from None
    if cfg.compress:
        raise ConfigError(f"fleet build '{name}': [[compress]] is not supported in a fleet; build that model with "
                          "`edgekit build` and list its compressed export (a .onnx source) here")
    return FleetBuild(name, cfg)


def merge(under: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``under``: tables merge key by key, any other value (lists too) is replaced."""
    out = copy.deepcopy(under)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _absolute_paths(tables: dict[str, Any], base: Path) -> dict[str, Any]:
    """[defaults] paths resolve against the fleet file's folder, whichever config inherits them."""
    out = copy.deepcopy(tables)
    for section in ("calibration", "validation"):
        data = out.get(section, {}).get("data")
        if isinstance(data, str) and not (":" in data and "/" not in data and not data.endswith((".npz", ".npy"))):
            out[section]["data"] = str(_resolve(data, base))
    for name, table in (out.get("targets") or {}).items():
        if isinstance(table, dict) and isinstance(table.get("profile"), str):
            table["profile"] = str(_resolve(table["profile"], base))
    return out


def _resolve(value: str, base: Path) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p

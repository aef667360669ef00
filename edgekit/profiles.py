"""Load built-in and user target profiles (TOML data, not code) and apply a config's overrides."""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from pathlib import Path
from typing import Any

from edgekit.backends import names
from edgekit.config import TargetOverride
from edgekit.errors import ProfileError, did_you_mean
from edgekit.fsutil import check_regular_file
from edgekit.resources import targets_dir
from edgekit.tables import check_keys, coerce, parse_table
from edgekit.types import Gates, RuntimeSettings, TargetProfile

PRECISIONS = ("fp32", "fp16", "int8", "int4")
TOP_KEYS = ("description", "backend", "precision", "device", "host_is_device", "recipe", "runtime", "gates")


def builtin_names() -> list[str]:
    return sorted(p.stem for p in targets_dir().glob("*.toml"))


# [runtime] bounds (docs/limits.md): beyond them a build would run for hours or oversubscribe any host.
MAX_THREADS = 256
MAX_WARMUP = 10_000
MAX_RUNS = 100_000


def _checked_runtime(runtime: RuntimeSettings, where: str) -> RuntimeSettings:
    if runtime.threads < 1 or runtime.runs < 1 or runtime.warmup < 0:
        raise ProfileError(f"{where}: threads and runs must be >= 1, warmup >= 0")
    for key, bound in (("threads", MAX_THREADS), ("warmup", MAX_WARMUP), ("runs", MAX_RUNS)):
        if getattr(runtime, key) > bound:
            raise ProfileError(f"{where}: {key} = {getattr(runtime, key)} is above the limit of {bound:,} "
                               "(docs/limits.md); use a smaller value")
    return runtime


def parse_profile(name: str, raw: dict[str, Any], source: str) -> TargetProfile:
    """Check one profile document and build the TargetProfile."""
    where = f"target profile '{name}' ({source})"
    check_keys(raw, TOP_KEYS, where, ProfileError)
    for key in ("backend", "precision", "device"):
        if not isinstance(raw.get(key), str):
            raise ProfileError(f"{where} needs '{key}' as a string")
    if raw["backend"] not in names():
        raise ProfileError(f"{where}: backend = {raw['backend']!r} is not one of {', '.join(names())}")
    if raw["precision"] not in PRECISIONS:
        raise ProfileError(f"{where}: precision = {raw['precision']!r} is not one of {', '.join(PRECISIONS)}")
    for key in ("recipe", "runtime", "gates"):
        if not isinstance(raw.get(key, {}), dict):
            raise ProfileError(f"{where}: [{key}] must be a table")
    runtime = parse_table(RuntimeSettings, raw.get("runtime", {}), f"{where} [runtime]", ProfileError)
    gates = parse_table(Gates, raw.get("gates", {}), f"{where} [gates]", ProfileError)
    return TargetProfile(
        name=name,
        backend=raw["backend"],
        precision=raw["precision"],
        device=raw["device"],
        description=coerce(raw.get("description", ""), str, f"{where} description", ProfileError),
        host_is_device=coerce(raw.get("host_is_device", True), bool, f"{where} host_is_device", ProfileError),
        recipe=dict(raw.get("recipe", {})),
        runtime=_checked_runtime(runtime, f"{where} [runtime]"),
        gates=gates,
        source=source,
    )


def _read(path: Path, name: str) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"cannot read target profile {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"target profile {path} is not valid TOML: {exc}") from None


def load_profile(name: str, override: TargetOverride | None = None) -> TargetProfile:
    """A built-in profile by name (or the user's profile file from the override), with overrides applied."""
    if override is not None and override.profile is not None:
        check_regular_file(override.profile, f"[targets.{name}] profile file", max_bytes=1 << 20, error=ProfileError)
        profile = parse_profile(name, _read(override.profile, name), str(override.profile))
    else:
        path = targets_dir() / f"{name}.toml"
        if not path.is_file():
            known = builtin_names()
            raise ProfileError(f"unknown target '{name}'{did_you_mean(name, known)} (built-in targets: {', '.join(known)})")
        profile = parse_profile(name, _read(path, name), f"built-in ({path.name})")
    if override is None:
        return profile
    where = f"[targets.{name}]"
    return dataclasses.replace(
        profile,
        gates=parse_table(Gates, override.gates, f"{where} gates", ProfileError, base=profile.gates),
        runtime=_checked_runtime(
            parse_table(RuntimeSettings, override.runtime, f"{where} runtime", ProfileError, base=profile.runtime),
            f"{where} runtime",
        ),
        recipe={**profile.recipe, **override.recipe},
    )


def profile_to_dict(profile: TargetProfile) -> dict[str, Any]:
    """The resolved profile as plain data (for the manifest and `edgekit targets show`)."""
    return {
        "name": profile.name,
        "description": profile.description,
        "backend": profile.backend,
        "precision": profile.precision,
        "device": profile.device,
        "host_is_device": profile.host_is_device,
        "recipe": dict(profile.recipe),
        "runtime": dataclasses.asdict(profile.runtime),
        "gates": {k: v for k, v in dataclasses.asdict(profile.gates).items() if v is not None},
        "source": profile.source,
    }


def profile_to_toml(profile: TargetProfile) -> str:
    """The resolved profile as a profile file: edit it and pass it back with ``[targets.NAME] profile = "FILE"``."""
    d = profile_to_dict(profile)
    lines = [
        f"# target profile '{profile.name}', resolved from {profile.source or 'code'}",
        f"# use it with: [targets.{profile.name}] profile = \"this-file.toml\"",
        "",
    ]
    lines += [f"{key} = {_toml_value(d[key], key)}" for key in ("description", "backend", "precision", "device", "host_is_device")]
    for table in ("recipe", "runtime", "gates"):
        lines += ["", *_toml_table(table, d[table])]
    return "\n".join(lines) + "\n"


def _toml_table(name: str, table: dict[str, Any]) -> list[str]:
    lines = [f"[{name}]"]
    lines += [f"{k} = {_toml_value(v, f'{name}.{k}')}" for k, v in table.items() if not isinstance(v, dict)]
    for k, v in table.items():
        if isinstance(v, dict):
            lines += ["", *_toml_table(f"{name}.{k}", v)]
    return lines


def _toml_value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v, where) for v in value) + "]"
    raise ProfileError(f"{where} = {value!r} cannot be written as TOML")

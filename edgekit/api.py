"""The Python API: build a config's targets (targets and gates overridable in code) and re-check a build.

The command line and these functions run the same pipeline; these return the typed Manifest instead of an
exit code, and raise the EdgekitError subclass the CLI would turn into exit 2 (or 3).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from edgekit import pipeline
from edgekit.config import BuildConfig, TargetOverride, load_config
from edgekit.console import Console
from edgekit.errors import ConfigError, did_you_mean
from edgekit.manifest import Manifest

ConfigSource = str | Path | Mapping[str, Any] | BuildConfig
"""A build configuration: a TOML file, a dict of the same tables, or a loaded BuildConfig."""


def build(
    config: ConfigSource,
    out: str | Path = "dist",
    *,
    targets: str | Iterable[str] | None = None,
    gates: Mapping[str, Mapping[str, float | None]] | None = None,
    strict: bool = False,
    validate: bool = True,
    jobs: int = 1,
    progress: Any = None,
) -> Manifest:
    """Build and validate every target of ``config`` into the folder ``out``; return the manifest written there.

    ``targets`` replaces the config's ``[targets] use`` (a built-in name, or one the config gives a profile file);
    ``gates`` maps a target to gate overrides merged over the config's ``[targets.NAME.gates]``, e.g.
    ``{"ort-int8": {"min_cosine": 0.995}}`` (``None`` turns a gate off). ``strict``: a target this host cannot
    run raises TargetUnavailableError instead of being recorded as unavailable. ``validate=False`` builds without
    measuring. ``jobs``: build targets in that many worker processes (same bytes as 1). ``progress``: None is silent, True prints progress on a terminal as the CLI does, or pass an object
    with the ``step``/``advance``/``warn`` methods of ``edgekit.console.Console``.

    ``manifest.exit_code`` is the CLI's verdict (0 every gate passed, 1 a gate failed or a target errored);
    ``manifest.results[name]`` is a TargetResult (status, reason, metrics, latency, size, gate verdicts).
    """
    cfg = with_overrides(load_config(config), targets, gates)
    options = pipeline.BuildOptions(out=Path(out), validate=validate, strict=strict, jobs=jobs)
    return pipeline.build(cfg, options, _progress(progress))


def revalidate(
    out: str | Path, targets: Iterable[str] = (), data: str | Path | None = None, progress: Any = None,
    against_torch: bool = False,
) -> Manifest:
    """Check every artifact's sha256 in the build folder ``out`` (TamperError if one changed), then measure the
    artifacts again against the ONNX reference in ``out`` and rewrite the manifest; on ``data`` instead of the
    config's [validation] data, when given, recorded in ``out/validations/`` beside the build's record.
    ``against_torch`` also runs the torch model the manifest names (it imports that Python file)."""
    return pipeline.revalidate(Path(out), tuple(targets), Path(data) if data is not None else None, _progress(progress),
                               against_torch=against_torch)


def with_overrides(
    cfg: BuildConfig,
    targets: str | Iterable[str] | None = None,
    gates: Mapping[str, Mapping[str, float | None]] | None = None,
) -> BuildConfig:
    """``cfg`` with its target list replaced and gate overrides merged in (see ``build``); keys are checked when
    the profiles load, like the config's own."""
    if targets is not None:
        use = (targets,) if isinstance(targets, str) else tuple(targets)
        if not use:
            raise ConfigError("targets is empty; name at least one (`edgekit targets` lists the built-in ones)")
        if len(set(use)) != len(use):
            raise ConfigError(f"targets names a target twice: {list(use)}")
        cfg = dataclasses.replace(cfg, targets=use, overrides={n: o for n, o in cfg.overrides.items() if n in use})
    if not gates:
        return cfg
    if not isinstance(gates, Mapping):
        raise ConfigError(f"gates must map target names to gate tables, got {type(gates).__name__}")
    overrides = dict(cfg.overrides)
    for name, table in gates.items():
        if name not in cfg.targets:
            hint = did_you_mean(name, cfg.targets, f"; it builds: {', '.join(cfg.targets)}")
            raise ConfigError(f"gates for target {name!r}, which this build does not use{hint}")
        if not isinstance(table, Mapping):
            raise ConfigError(f"gates[{name!r}] must be a table of gates, e.g. {{'min_cosine': 0.995}}, got {table!r}")
        base = overrides.get(name, TargetOverride())
        overrides[name] = dataclasses.replace(base, gates={**base.gates, **table})
    return dataclasses.replace(cfg, overrides=overrides)


def _progress(progress: Any) -> Any:
    if progress is True:
        return Console()
    return progress or None

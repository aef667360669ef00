"""Strict loading of the build configuration (TOML): every unknown key is an error naming the nearest valid one."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import ConfigError, did_you_mean
from edgekit.types import TensorSpec

DTYPES = ("float32", "float16", "int64", "int32", "int8", "uint8", "bool")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile", "mse")
EXPORTERS = ("dynamo", "torchscript")
TASKS = ("classification", "regression", "embedding")


@dataclass(frozen=True)
class InputConfig:
    """One model input: the example shape used for export and timing, plus which axes are dynamic."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    dynamic: dict[int, str] = field(default_factory=dict)

    @property
    def spec(self) -> TensorSpec:
        dims = tuple(self.dynamic.get(i, d) for i, d in enumerate(self.shape))
        return TensorSpec(self.name, dims, self.dtype)


@dataclass(frozen=True)
class ModelConfig:
    source: str
    weights: Path | None = None
    inputs: tuple[InputConfig, ...] = ()
    outputs: tuple[str, ...] = ()
    task: str | None = None


@dataclass(frozen=True)
class ExportConfig:
    exporter: str = "dynamo"
    opset: int = 18
    simplify: bool = True


@dataclass(frozen=True)
class DataConfig:
    """Where a data set lives and how much of it to use."""

    data: str
    samples: int | None = None
    labels: str | None = None
    batch_size: int = 32
    method: str = "minmax"  # calibration only
    percentile: float = 99.999  # calibration only, method = "percentile"
    allow_overlap: bool = False  # validation only


@dataclass(frozen=True)
class TargetOverride:
    """Per-target overrides from ``[targets.NAME]``: gates, runtime, recipe, or a user profile file."""

    gates: dict[str, Any] = field(default_factory=dict)
    runtime: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    profile: Path | None = None


@dataclass(frozen=True)
class BuildConfig:
    """The resolved build configuration; relative paths are resolved against the config file's folder."""

    model: ModelConfig
    export: ExportConfig = ExportConfig()
    compress: tuple[Any, ...] = ()
    calibration: DataConfig | None = None
    validation: DataConfig | None = None
    train: DataConfig | None = None
    targets: tuple[str, ...] = ()
    overrides: dict[str, TargetOverride] = field(default_factory=dict)
    path: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict)


def _check_keys(table: Any, allowed: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table, got {type(table).__name__}")
    for key in table:
        if key not in allowed:
            hint = did_you_mean(key, allowed, f"; valid keys: {', '.join(allowed)}")
            raise ConfigError(f"unknown key '{key}' in {where}{hint}")
    return table


def _typed(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ConfigError(f"{where} must be {getattr(kind, '__name__', kind)}, got a boolean")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(f"{where} must be {names}, got {value!r}")
    return value


def _choice(value: Any, choices: tuple[str, ...], where: str) -> str:
    if value not in choices:
        raise ConfigError(f"{where} = {value!r} is not one of {', '.join(choices)}{did_you_mean(value, choices)}")
    return value


def _path(value: Any, base: Path, where: str) -> Path:
    _typed(value, str, where)
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def _parse_input(item: Any, i: int) -> InputConfig:
    where = f"[model] inputs[{i}]"
    t = _check_keys(item, ("name", "shape", "dtype", "dynamic"), where)
    if "name" not in t or "shape" not in t:
        raise ConfigError(f"{where} needs 'name' and 'shape', e.g. {{ name = \"image\", shape = [1, 3, 224, 224] }}")
    shape = _typed(t["shape"], list, f"{where}.shape")
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ConfigError(f"{where}.shape must be a list of positive integers, got {shape!r}")
    dtype = _choice(t.get("dtype", "float32"), DTYPES, f"{where}.dtype")
    dynamic: dict[int, str] = {}
    for axis, name in _typed(t.get("dynamic", {}), dict, f"{where}.dynamic").items():
        try:
            ax = int(axis)
        except ValueError:
            raise ConfigError(f"{where}.dynamic key {axis!r} must be an axis number, e.g. {{ 0 = \"batch\" }}") from None
        if not 0 <= ax < len(shape):
            raise ConfigError(f"{where}.dynamic axis {ax} is outside shape {shape}")
        dynamic[ax] = _typed(name, str, f"{where}.dynamic.{axis}")
    return InputConfig(_typed(t["name"], str, f"{where}.name"), tuple(shape), dtype, dynamic)


def resolve_source(source: str, base: Path) -> str:
    """Make file paths in a model source absolute; check the source has one of the known forms."""
    if source.startswith("example:"):
        return source
    if source.endswith(".onnx"):
        return str(_path(source, base, "[model] source"))
    if ".py:" in source:
        file_part, factory = source.rsplit(":", 1)
        return f"{_path(file_part, base, '[model] source')}:{factory}"
    module, _, factory = source.partition(":")
    if factory and module and "/" not in module:
        return source
    raise ConfigError(
        f"[model] source = {source!r}: expected 'file.py:factory', 'package.module:factory', "
        "a .onnx file, or 'example:digits'"
    )


def _parse_model(t: Any, base: Path) -> ModelConfig:
    t = _check_keys(t, ("source", "weights", "inputs", "outputs", "task"), "[model]")
    if "source" not in t:
        raise ConfigError("[model] needs 'source', e.g. source = \"models/net.py:build\" or \"model.onnx\"")
    source = resolve_source(_typed(t["source"], str, "[model] source"), base)
    weights = _path(t["weights"], base, "[model] weights") if "weights" in t else None
    inputs = tuple(_parse_input(x, i) for i, x in enumerate(_typed(t.get("inputs", []), list, "[model] inputs")))
    names = [x.name for x in inputs]
    if len(set(names)) != len(names):
        raise ConfigError(f"[model] inputs has duplicate names: {names}")
    outputs = tuple(_typed(o, str, "[model] outputs[]") for o in _typed(t.get("outputs", []), list, "[model] outputs"))
    task = _choice(t["task"], TASKS, "[model] task") if "task" in t else None
    return ModelConfig(source, weights, inputs, outputs, task)


def _parse_data(t: Any, section: str, base: Path) -> DataConfig:
    keys = {
        "calibration": ("data", "samples", "method", "percentile", "batch_size"),
        "validation": ("data", "samples", "labels", "batch_size", "allow_overlap"),
        "train": ("data", "samples", "labels"),  # the batch size is each training step's own (batch_size)
    }[section]
    t = _check_keys(t, keys, f"[{section}]")
    if "data" not in t:
        raise ConfigError(f"[{section}] needs 'data' (a .npz file, a folder of .npy/.npz, or 'module:function')")
    data = _typed(t["data"], str, f"[{section}] data")
    if not (":" in data and not data.endswith((".npz", ".npy")) and "/" not in data):
        data = str(_path(data, base, f"[{section}] data"))
    samples = t.get("samples")
    if samples is not None and (_typed(samples, int, f"[{section}] samples") <= 0):
        raise ConfigError(f"[{section}] samples must be a positive integer, got {samples}")
    batch = _typed(t.get("batch_size", 32), int, f"[{section}] batch_size")
    if batch <= 0:
        raise ConfigError(f"[{section}] batch_size must be positive, got {batch}")
    method = _choice(t.get("method", "minmax"), CALIBRATION_METHODS, f"[{section}] method")
    pct = float(_typed(t.get("percentile", 99.999), (int, float), f"[{section}] percentile"))
    if not 50.0 < pct <= 100.0:
        raise ConfigError(f"[{section}] percentile must be in (50, 100], got {pct}")
    labels = _typed(t["labels"], str, f"[{section}] labels") if "labels" in t else None
    overlap = _typed(t.get("allow_overlap", False), bool, f"[{section}] allow_overlap")
    return DataConfig(data, samples, labels, batch, method, pct, overlap)


def _parse_targets(t: Any, base: Path) -> tuple[tuple[str, ...], dict[str, TargetOverride]]:
    t = _typed(t, dict, "[targets]")
    use = t.get("use")
    if use is None:
        raise ConfigError("[targets] needs 'use', e.g. use = [\"ort-fp32\", \"ort-int8\"]; `edgekit targets` lists them")
    use = tuple(_typed(u, str, "[targets] use[]") for u in _typed(use, list, "[targets] use"))
    if not use:
        raise ConfigError("[targets] use is empty; name at least one target (`edgekit targets` lists them)")
    if len(set(use)) != len(use):
        raise ConfigError(f"[targets] use names a target twice: {list(use)}")
    overrides: dict[str, TargetOverride] = {}
    for name, table in t.items():
        if name == "use":
            continue
        if name not in use:
            hint = did_you_mean(name, use, f"; [targets] use = {list(use)}")
            raise ConfigError(f"[targets.{name}] configures a target that is not in [targets] use{hint}")
        o = _check_keys(table, ("gates", "runtime", "recipe", "profile"), f"[targets.{name}]")
        profile = _path(o["profile"], base, f"[targets.{name}] profile") if "profile" in o else None
        overrides[name] = TargetOverride(
            gates=dict(_typed(o.get("gates", {}), dict, f"[targets.{name}.gates]")),
            runtime=dict(_typed(o.get("runtime", {}), dict, f"[targets.{name}.runtime]")),
            recipe=dict(_typed(o.get("recipe", {}), dict, f"[targets.{name}.recipe]")),
            profile=profile,
        )
    return use, overrides


def _check_compress(steps: tuple[Any, ...], raw: dict[str, Any]) -> None:
    """What the steps need from the rest of the config: a torch model, and [train] data for the training steps."""
    source = raw.get("model", {}).get("source", "") if isinstance(raw.get("model"), dict) else ""
    if steps and isinstance(source, str) and source.endswith(".onnx"):
        raise ConfigError(
            "[[compress]] works on a torch model, but [model] source is an ONNX file; remove [[compress]] "
            "or give the torch model (file.py:factory) instead"
        )
    from edgekit.compress import STEPS

    for i, step in enumerate(steps):
        if STEPS[step.method].needs_train and "train" not in raw:
            raise ConfigError(
                f"[[compress]] #{i + 1} method = '{step.method}' needs training data: add a [train] section, "
                "e.g. [train] data = \"train.npz\" (labels = \"labels\" adds the hard-label loss)"
            )


def parse_config(raw: dict[str, Any], base: Path, path: Path | None = None) -> BuildConfig:
    """Turn a parsed TOML document into a BuildConfig; paths resolve against ``base``."""
    _check_keys(raw, ("model", "export", "compress", "calibration", "validation", "train", "targets"), "the config")
    if "model" not in raw:
        raise ConfigError("the config needs a [model] table with at least 'source'")
    e = _check_keys(raw.get("export", {}), ("exporter", "opset", "simplify"), "[export]")
    export = ExportConfig(
        exporter=_choice(e.get("exporter", "dynamo"), EXPORTERS, "[export] exporter"),
        opset=_typed(e.get("opset", 18), int, "[export] opset"),
        simplify=_typed(e.get("simplify", True), bool, "[export] simplify"),
    )
    if not 13 <= export.opset <= 21:
        raise ConfigError(f"[export] opset = {export.opset} is outside the supported range 13..21")
    steps: tuple[Any, ...] = ()
    if "compress" in raw:
        from edgekit.compress import parse_step  # the compress package owns its step settings

        steps = tuple(parse_step(s, i) for i, s in enumerate(_typed(raw["compress"], list, "[[compress]]")))
        _check_compress(steps, raw)
    use, overrides = _parse_targets(raw.get("targets", {"use": ["ort-fp32"]}), base)
    cfg = BuildConfig(
        model=_parse_model(raw["model"], base),
        export=export,
        compress=steps,
        calibration=_parse_data(raw["calibration"], "calibration", base) if "calibration" in raw else None,
        validation=_parse_data(raw["validation"], "validation", base) if "validation" in raw else None,
        train=_parse_data(raw["train"], "train", base) if "train" in raw else None,
        targets=use,
        overrides=overrides,
        path=path,
        raw=raw,
    )
    return cfg


def load_config(path: str | Path) -> BuildConfig:
    """Read and check a build configuration file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a UTF-8 text file") from None
    return parse_config(raw, path.resolve().parent, path.resolve())


def resolved_dict(cfg: BuildConfig) -> dict[str, Any]:
    """The config as plain data with absolute paths: stored in the manifest and re-parseable by ``parse_config``."""
    m = cfg.model
    model: dict[str, Any] = {
        "source": m.source,
        "inputs": [
            {"name": i.name, "shape": list(i.shape), "dtype": i.dtype, "dynamic": {str(k): v for k, v in i.dynamic.items()}}
            for i in m.inputs
        ],
    }
    if m.weights is not None:
        model["weights"] = str(m.weights)
    if m.outputs:
        model["outputs"] = list(m.outputs)
    if m.task:
        model["task"] = m.task
    out: dict[str, Any] = {
        "model": model,
        "export": {"exporter": cfg.export.exporter, "opset": cfg.export.opset, "simplify": cfg.export.simplify},
    }
    if cfg.compress:
        from edgekit.compress import settings_table

        out["compress"] = [settings_table(s) for s in cfg.compress]
    for section in ("calibration", "validation", "train"):
        d: DataConfig | None = getattr(cfg, section)
        if d is None:
            continue
        entry: dict[str, Any] = {"data": d.data} if section == "train" else {"data": d.data, "batch_size": d.batch_size}
        if d.samples is not None:
            entry["samples"] = d.samples
        if section == "calibration":
            entry.update(method=d.method, percentile=d.percentile)
        else:
            if d.labels is not None:
                entry["labels"] = d.labels
        if section == "validation" and d.allow_overlap:
            entry["allow_overlap"] = True
        out[section] = entry
    targets: dict[str, Any] = {"use": list(cfg.targets)}
    for name, o in cfg.overrides.items():
        t: dict[str, Any] = {k: v for k, v in (("gates", o.gates), ("runtime", o.runtime), ("recipe", o.recipe)) if v}
        if o.profile is not None:
            t["profile"] = str(o.profile)
        targets[name] = t
    out["targets"] = targets
    return out

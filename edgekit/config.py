"""Strict loading of the build configuration (TOML): every unknown key is an error naming the nearest valid one."""

from __future__ import annotations

import copy
import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgekit.errors import ConfigError, did_you_mean
from edgekit.fsutil import check_regular_file
from edgekit.resources import targets_dir
from edgekit.tables import check_keys, coerce, field_names, parse_table, to_table
from edgekit.types import TensorSpec

DTYPES = ("float32", "float16", "int64", "int32", "int8", "uint8", "bool")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile", "mse")
EXPORTERS = ("dynamo", "torchscript")
HF_TASKS = ("feature-extraction", "sequence-classification", "image-classification")  # an hf: source's task names
TASKS = ("classification", "regression", "embedding", *HF_TASKS)
SECTIONS = ("model", "export", "compress", "calibration", "validation", "train", "targets", "bundle", "publish")  # [publish]: edgekit.publish
# Bounds on what a config may ask for (docs/limits.md): beyond them a build only runs out of memory or time.
MAX_RANK = 8
MAX_INPUT_ELEMENTS = 1 << 24  # one declared input shape: 16,777,216 elements (64 MiB of float32)
MAX_SAMPLES = 10_000_000
MAX_BATCH = 65_536
MAX_CONFIG_BYTES = 1 << 20


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
    weights_key: str | None = None  # the key of a training checkpoint dict holding the state_dict


@dataclass(frozen=True)
class ExportConfig:
    exporter: str = "dynamo"
    opset: int = 18
    simplify: bool = True
    # a model whose weights exceed this many MiB is written as model.onnx + model.onnx.data (external data); protobuf
    # cannot hold more than 2 GiB, so the bound is 2000
    external_data_mb: int = 1800


@dataclass(frozen=True)
class ImageSettings:
    """``[calibration.images]`` / ``[validation.images]``: how a folder of images becomes model input (unset: from
    the model's input shape). resize: shorter side (int) or exact [h, w]; crop: center crop, int or [h, w]; pixels are
    multiplied by scale, then (x - mean) / std per channel in the order the model takes them (after channels)."""

    resize: int | tuple[int, ...] | None = None
    crop: int | tuple[int, ...] | None = None
    scale: float | None = None  # default 1/255 for a float input, 1 for an integer one
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channels: Literal["RGB", "BGR", "L"] | None = None  # default: L for 1 channel, RGB for 3
    layout: Literal["NCHW", "NHWC"] | None = None  # default: from the input shape
    dtype: Literal["float32", "float16", "uint8", "int8"] | None = None  # default: the model input's dtype


@dataclass(frozen=True)
class TextSettings:
    """``[calibration.text]`` / ``[validation.text]``: how lines of a .txt/.jsonl become transformer inputs."""

    tokenizer: str
    max_length: int = 128
    padding: Literal["max_length", "none"] = "max_length"
    field: str = "text"  # .jsonl: the key holding the text
    inputs: tuple[str, ...] | None = None  # default: the model inputs among input_ids, attention_mask, token_type_ids


@dataclass(frozen=True)
class DataConfig:
    """Where a data set lives and how much of it to use."""

    data: str
    samples: int | None = None
    labels: str | None = None
    batch_size: int = 32
    method: str = "minmax"  # calibration only
    percentile: float = 99.999  # calibration only, method = "percentile"
    cache: str | bool | None = None  # calibration only: the statistics cache folder; false: none; unset: the default
    allow_overlap: bool = False  # validation only
    images: ImageSettings | None = None
    text: TextSettings | None = None


MAX_RECOVER_BUDGET_S = 86_400.0


@dataclass(frozen=True)
class RecoverSettings:
    """``[targets.NAME.recover]``: the build's recovery of an INT8 target that misses a gate (docs/recovery.md)."""

    enabled: bool = True
    budget_s: float = 180.0  # seconds of candidate search per target, after the first validation

    def __post_init__(self) -> None:
        if not 0 < self.budget_s <= MAX_RECOVER_BUDGET_S:
            raise ConfigError(f"budget_s = {self.budget_s:g} must be > 0 and at most {MAX_RECOVER_BUDGET_S:g} seconds")


@dataclass(frozen=True)
class TargetOverride:
    """Per-target overrides from ``[targets.NAME]``: gates, runtime, recipe, or a user profile file."""

    gates: dict[str, Any] = field(default_factory=dict)
    runtime: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    profile: Path | None = None
    recover: RecoverSettings | None = None  # None: the defaults


@dataclass(frozen=True)
class BundleConfig:
    """``[bundle]``: write a device bundle per target (edgekit/bundle/make.py) into ``DIR/bundles`` after the build."""

    samples: int = 32  # validation samples carried as golden inputs (plus the largest/smallest-magnitude ones)
    targets: tuple[str, ...] = ()  # default: every target with an artifact


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
    bundle: BundleConfig | None = None
    path: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict)


def _choice(value: Any, choices: tuple[str, ...], where: str) -> str:
    if value not in choices:
        raise ConfigError(f"{where} = {value!r} is not one of {', '.join(choices)}{did_you_mean(value, choices)}")
    return value


def _path(value: Any, base: Path, where: str) -> Path:
    coerce(value, str, where)
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def _parse_input(item: Any, i: int) -> InputConfig:
    where = f"[model] inputs[{i}]"
    t = check_keys(item, ("name", "shape", "dtype", "dynamic"), where)
    if "name" not in t or "shape" not in t:
        raise ConfigError(f"{where} needs 'name' and 'shape', e.g. {{ name = \"image\", shape = [1, 3, 224, 224] }}")
    shape = coerce(t["shape"], list, f"{where}.shape")
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ConfigError(f"{where}.shape must be a list of positive integers, got {shape!r}")
    if len(shape) > MAX_RANK or math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise ConfigError(f"{where}.shape = {shape} is above the limit of {MAX_RANK} dimensions and "
                          f"{MAX_INPUT_ELEMENTS:,} elements (docs/limits.md); declare the example shape of one "
                          "sample or a small batch")
    dtype = _choice(t.get("dtype", "float32"), DTYPES, f"{where}.dtype")
    dynamic: dict[int, str] = {}
    for axis, name in coerce(t.get("dynamic", {}), dict, f"{where}.dynamic").items():
        try:
            ax = int(axis)
        except ValueError:
            raise ConfigError(f"{where}.dynamic key {axis!r} must be an axis number, e.g. {{ 0 = \"batch\" }}") from None
        if not 0 <= ax < len(shape):
            raise ConfigError(f"{where}.dynamic axis {ax} is outside shape {shape}")
        dynamic[ax] = coerce(name, str, f"{where}.dynamic.{axis}")
    return InputConfig(coerce(t["name"], str, f"{where}.name"), tuple(shape), dtype, dynamic)


def resolve_source(source: str, base: Path) -> str:
    """Make file paths in a model source absolute; check the source has one of the known forms."""
    if source.startswith("example:"):
        return source
    if source.startswith("hf:"):  # a Hugging Face model folder (edgekit/hf.py)
        return "hf:" + str(_path(source[3:], base, "[model] source")) if source[3:].strip() else source
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
        "a .onnx file, 'hf:path/to/model-folder', or 'example:digits'"
    )


def _parse_model(t: Any, base: Path) -> ModelConfig:
    t = check_keys(t, field_names(ModelConfig), "[model]")
    if "source" not in t:
        raise ConfigError("[model] needs 'source', e.g. source = \"models/net.py:build\" or \"model.onnx\"")
    source = resolve_source(coerce(t["source"], str, "[model] source"), base)
    weights = _path(t["weights"], base, "[model] weights") if "weights" in t else None
    inputs = tuple(_parse_input(x, i) for i, x in enumerate(coerce(t.get("inputs", []), list, "[model] inputs")))
    names = [x.name for x in inputs]
    if len(set(names)) != len(names):
        raise ConfigError(f"[model] inputs has duplicate names: {names}")
    outputs = coerce(t.get("outputs", ()), tuple[str, ...], "[model] outputs")
    task = _choice(t["task"], TASKS, "[model] task") if "task" in t else None
    weights_key = coerce(t["weights_key"], str, "[model] weights_key") if "weights_key" in t else None
    if weights_key is not None and weights is None and not source.startswith("example:"):
        raise ConfigError("[model] weights_key names a key of the weights file, but [model] has no 'weights'")
    return ModelConfig(source, weights, inputs, outputs, task, weights_key)


# The keys each data section takes (DataConfig holds the union); [train]'s batch size is each training step's own.
DATA_KEYS = {
    "calibration": ("data", "samples", "method", "percentile", "batch_size", "images", "text", "cache"),
    "validation": ("data", "samples", "labels", "batch_size", "allow_overlap", "images", "text"),
    "train": ("data", "samples", "labels"),
}


def _parse_data(t: Any, section: str, base: Path, tokenizer: str | None = None) -> DataConfig:
    """One data section; ``tokenizer`` (an hf: source's folder) is the default of ``[section.text] tokenizer``."""
    where = f"[{section}]"
    t = check_keys(t, DATA_KEYS[section], where)
    if tokenizer is not None and section != "train" and isinstance(t.get("data"), str) and \
            t["data"].endswith((".txt", ".jsonl")) and isinstance(t.get("text", {}), dict):
        t = {**t, "text": {"tokenizer": tokenizer, **t.get("text", {})}}
    if "data" not in t:
        raise ConfigError(f"{where} needs 'data' (a .npz file, a folder of .npy/.npz or images, a .txt/.jsonl, or "
                          "'file.py:function' / 'module:function')")
    subs = {k: t[k] for k in ("images", "text") if k in t}
    d = parse_table(DataConfig, {k: v for k, v in t.items() if k not in subs}, where)
    images = parse_table(ImageSettings, subs["images"], f"[{section}.images]") if "images" in subs else None
    if isinstance(subs.get("text"), dict) and "tokenizer" not in subs["text"]:
        raise ConfigError(f"[{section}.text] needs 'tokenizer', a folder holding tokenizer.json (a Hugging Face tokenizer)")
    text = parse_table(TextSettings, subs["text"], f"[{section}.text]") if "text" in subs else None
    if text is not None:
        text = dataclasses.replace(text, tokenizer=str(_path(text.tokenizer, base, f"[{section}.text] tokenizer")))
    data = d.data
    if ".py:" in data:
        file_part, function = data.rsplit(":", 1)
        data = f"{_path(file_part, base, f'{where} data')}:{function}"
    elif not (":" in data and not data.endswith((".npz", ".npy")) and "/" not in data):
        data = str(_path(data, base, f"{where} data"))
    labels = d.labels
    if labels is not None and labels.endswith(".csv"):
        labels = str(_path(labels, base, f"{where} labels"))
    if d.samples is not None and not 0 < d.samples <= MAX_SAMPLES:
        raise ConfigError(f"{where} samples must be a positive integer up to {MAX_SAMPLES:,} (docs/limits.md), got {d.samples}")
    if not 0 < d.batch_size <= MAX_BATCH:
        raise ConfigError(f"{where} batch_size must be a positive integer up to {MAX_BATCH:,} (docs/limits.md), got {d.batch_size}")
    _choice(d.method, CALIBRATION_METHODS, f"{where} method")
    if not 50.0 < d.percentile <= 100.0:
        raise ConfigError(f"{where} percentile must be in (50, 100], got {d.percentile}")
    cache = d.cache
    if isinstance(cache, str):
        if not cache.strip():
            raise ConfigError(f'{where} cache is empty: give a folder, or false (or "none") for no statistics cache')
        if cache.strip().lower() != "none":
            cache = str(base / Path(cache).expanduser())  # an absolute path stays as it is
    return dataclasses.replace(d, data=data, labels=labels, images=images, text=text, cache=cache)


def _parse_targets(t: Any, base: Path) -> tuple[tuple[str, ...], dict[str, TargetOverride]]:
    t = coerce(t, dict, "[targets]")
    use = t.get("use")
    if use is None:
        raise ConfigError("[targets] needs 'use', e.g. use = [\"ort-fp32\", \"ort-int8\"]; `edgekit targets` lists them")
    use = coerce(use, tuple[str, ...], "[targets] use")
    if not use:
        raise ConfigError("[targets] use is empty; name at least one target (`edgekit targets` lists them)")
    twice = next((n for i, n in enumerate(use) if n in use[:i]), None)
    if twice is not None:
        raise ConfigError(f"[targets] use names a target twice: '{twice}' in {list(use)}; list each target once")
    overrides: dict[str, TargetOverride] = {}
    builtin = sorted(p.stem for p in targets_dir().glob("*.toml"))
    own = {n for n, table in t.items() if isinstance(table, dict) and "profile" in table}
    for i, name in enumerate(use):
        if name not in builtin and name not in own:
            raise ConfigError(f"[targets] use[{i}]: unknown target '{name}'{did_you_mean(name, builtin, '')} (built-in "
                              f"targets: {', '.join(builtin)}; a target of your own needs [targets.{name}] profile = "
                              "\"FILE.toml\")")
    for name, table in t.items():
        if name == "use":
            continue
        if name not in use:
            hint = did_you_mean(name, use, f"; [targets] use = {list(use)}")
            raise ConfigError(f"[targets.{name}] configures a target that is not in [targets] use{hint}")
        o = check_keys(table, field_names(TargetOverride), f"[targets.{name}]")
        profile = _path(o["profile"], base, f"[targets.{name}] profile") if "profile" in o else None
        overrides[name] = TargetOverride(
            gates=coerce(o.get("gates", {}), dict, f"[targets.{name}.gates]"),
            runtime=coerce(o.get("runtime", {}), dict, f"[targets.{name}.runtime]"),
            recipe=coerce(o.get("recipe", {}), dict, f"[targets.{name}.recipe]"),
            profile=profile,
            recover=parse_table(RecoverSettings, o["recover"], f"[targets.{name}.recover]") if "recover" in o else None,
        )
    return use, overrides


def _parse_compress(tables: list[Any], raw: dict[str, Any]) -> tuple[Any, ...]:
    """The [[compress]] steps; the compress package owns their settings (imported here only: it needs torch)."""
    from edgekit.compress import parse_steps

    model = raw.get("model")
    source = model.get("source", "") if isinstance(model, dict) else ""
    return parse_steps(tables, onnx_source=isinstance(source, str) and source.endswith(".onnx"), has_train="train" in raw)


def _parse_bundle(t: Any, use: tuple[str, ...]) -> BundleConfig:
    b = parse_table(BundleConfig, t, "[bundle]")
    if b.samples < 1:
        raise ConfigError(f"[bundle] samples must be a positive integer, got {b.samples}")
    for name in b.targets:
        if name not in use:
            raise ConfigError(f"[bundle] targets names '{name}', which is not in [targets] use{did_you_mean(name, use)}")
    return b


def parse_config(raw: dict[str, Any], base: Path, path: Path | None = None) -> BuildConfig:
    """Turn a parsed TOML document into a BuildConfig; paths resolve against ``base``."""
    check_keys(raw, SECTIONS, "the config")
    if "model" not in raw:
        raise ConfigError("the config needs a [model] table with at least 'source'")
    export = parse_table(ExportConfig, raw.get("export", {}), "[export]")
    _choice(export.exporter, EXPORTERS, "[export] exporter")
    if not 13 <= export.opset <= 21:
        raise ConfigError(f"[export] opset = {export.opset} is outside the supported range 13..21")
    if not 0 <= export.external_data_mb <= 2000:
        raise ConfigError(f"[export] external_data_mb = {export.external_data_mb} is outside 0..2000 (MiB of weights "
                          "above which the model is written with external data; protobuf's limit is 2 GiB)")
    steps = _parse_compress(coerce(raw["compress"], list, "[[compress]]"), raw) if "compress" in raw else ()
    use, overrides = _parse_targets(raw.get("targets", {"use": ["ort-fp32"]}), base)
    model = _parse_model(raw["model"], base)
    if model.task in HF_TASKS and not model.source.startswith("hf:"):
        raise ConfigError(f"[model] task = {model.task!r} is for an hf: source; for this source use one of "
                          f"{', '.join(t for t in TASKS if t not in HF_TASKS)}")
    tokenizer = _hf_tokenizer(model.source)
    cfg = BuildConfig(
        model=model,
        export=export,
        compress=steps,
        calibration=_parse_data(raw["calibration"], "calibration", base, tokenizer) if "calibration" in raw else None,
        validation=_parse_data(raw["validation"], "validation", base, tokenizer) if "validation" in raw else None,
        train=_parse_data(raw["train"], "train", base) if "train" in raw else None,
        targets=use,
        overrides=overrides,
        bundle=_parse_bundle(raw["bundle"], use) if "bundle" in raw else None,
        path=path,
        raw=raw,
    )
    return cfg


def _hf_tokenizer(source: str) -> str | None:
    """An hf: source's tokenizer folder, the default of [calibration.text] / [validation.text] tokenizer: the folder,
    or for an older sentence-transformers folder the 0_Transformer/ module holding the model and tokenizer."""
    if not source.startswith("hf:") or not source[3:].strip():
        return None
    folder = Path(source[3:])
    nested = folder / "0_Transformer"
    return str(nested if not (folder / "config.json").exists() and (nested / "config.json").exists() else folder)


def load_config(config: str | Path | Mapping[str, Any] | BuildConfig, base: str | Path | None = None) -> BuildConfig:
    """Read and check a build configuration: a TOML file, or the same tables as a dict (relative paths then resolve
    against ``base``, default the current directory). A BuildConfig is returned as it is."""
    if isinstance(config, BuildConfig):
        return config
    if isinstance(config, Mapping):
        return parse_config(copy.deepcopy(dict(config)), Path(base if base is not None else Path.cwd()).resolve())
    if not isinstance(config, (str, Path)):
        raise ConfigError(f"a config is a TOML file path, a dict of its tables or a BuildConfig, got {type(config).__name__}")
    path = Path(config)
    check_regular_file(path, "config file", max_bytes=MAX_CONFIG_BYTES, error=ConfigError)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a UTF-8 text file") from None
    except RecursionError:
        raise ConfigError(f"{path} nests tables or arrays too deeply to be a build config") from None
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
    if m.weights_key is not None:
        model["weights_key"] = m.weights_key
    if m.outputs:
        model["outputs"] = list(m.outputs)
    if m.task:
        model["task"] = m.task
    out: dict[str, Any] = {
        "model": model,
        "export": {"exporter": cfg.export.exporter, "opset": cfg.export.opset, "simplify": cfg.export.simplify},
    }
    if cfg.export.external_data_mb != ExportConfig.external_data_mb:
        out["export"]["external_data_mb"] = cfg.export.external_data_mb
    if cfg.compress:
        out["compress"] = [to_table(s) for s in cfg.compress]
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
        for key in ("images", "text"):
            if getattr(d, key) is not None:
                entry[key] = to_table(getattr(d, key))
        out[section] = entry
    targets: dict[str, Any] = {"use": list(cfg.targets)}
    for name, o in cfg.overrides.items():
        t: dict[str, Any] = {k: v for k, v in (("gates", o.gates), ("runtime", o.runtime), ("recipe", o.recipe)) if v}
        if o.profile is not None:
            t["profile"] = str(o.profile)
        if o.recover is not None:
            t["recover"] = to_table(o.recover)
        targets[name] = t
    out["targets"] = targets
    if cfg.bundle is not None:
        out["bundle"] = to_table(cfg.bundle)
    return out

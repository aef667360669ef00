"""Hugging Face model folders as a model source (``hf:path/to/folder``): the task and head from config.json, inputs
from the tokenizer or image processor, a sentence-transformers folder's pooling and normalization applied. Offline
only (HF_HUB_OFFLINE=1, local_files_only): nothing is downloaded and no code from the folder is run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.config import InputConfig, ModelConfig
from edgekit.errors import ConfigError, ModelError
from edgekit.fsutil import hash_file
from edgekit.types import SourceModel

log = logging.getLogger(__name__)

PREFIX = "hf:"
TASKS = ("feature-extraction", "sequence-classification", "image-classification")
EDGEKIT_TASK = {"feature-extraction": "embedding", "sequence-classification": "classification",
                "image-classification": "classification"}
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # in the order the wrapper's forward() takes them
SEQUENCE = 128  # the example sequence length of the export and of synthetic inputs ([model] inputs overrides it)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max", "pooling_mode_mean_tokens": "mean",
                "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len"}  # sentence-transformers' concatenation order
ST_MODULES = ("Transformer", "Pooling", "Normalize")
ATTENTION_RTOL = 1e-4  # eager vs the loaded attention: max abs difference over max abs output


@dataclass(frozen=True)
class Pooling:
    """A sentence-transformers folder's pooling (modes concatenated in this order) and whether it L2-normalizes."""

    modes: tuple[str, ...]
    normalize: bool


@dataclass(frozen=True)
class HfFolder:
    """What a model folder declares, read from its JSON files (no model built)."""

    root: Path
    model_dir: Path  # the folder with config.json: the root, or a sentence-transformers Transformer module under it
    architecture: str
    task: str  # one of TASKS
    pooling: Pooling | None

    @property
    def is_image(self) -> bool:
        return self.task == "image-classification"

    @property
    def outputs(self) -> tuple[str, ...]:
        if self.task != "feature-extraction":
            return ("logits",)
        return ("sentence_embedding",) if self.pooling is not None else ("last_hidden_state",)


def is_hf(source: str) -> bool:
    return source.startswith(PREFIX)


def _json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{what} {path} is not readable JSON: {str(exc)[:160]}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{what} {path} is not a JSON object")
    return data


def _pooling(root: Path) -> tuple[Path, Pooling | None]:
    """(folder of the Transformer module, pooling) of a sentence-transformers folder; (root, None) for a plain one."""
    if not (root / "modules.json").is_file():
        return root, None
    try:
        modules = json.loads((root / "modules.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{root / 'modules.json'} is not readable JSON: {str(exc)[:160]}") from None
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ModelError(f"{root / 'modules.json'} is not a list of modules")
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    unknown = [k for k in kinds if k not in ST_MODULES]
    if unknown or kinds[:1] != ["Transformer"]:
        raise ModelError(f"sentence-transformers folder {root}: modules {kinds} are not supported; edgekit applies "
                         f"{', '.join(ST_MODULES)} (in that order); write a 'file.py:factory' source for the rest")
    model_dir = root / str(modules[0].get("path", ""))
    pooling = None
    if "Pooling" in kinds:
        path = root / str(modules[kinds.index("Pooling")].get("path", "")) / "config.json"
        if not path.is_file():
            raise ModelError(f"sentence-transformers folder {root}: the Pooling module has no {path}")
        cfg = _json(path, "pooling config")
        other = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v and k not in POOLING_KEYS]
        if other:
            raise ModelError(f"{path}: pooling {other} is not supported; edgekit pools with "
                             f"{', '.join(POOLING_KEYS.values())}")
        modes = tuple(mode for key, mode in POOLING_KEYS.items() if cfg.get(key))
        if not modes:
            raise ModelError(f"{path} turns no pooling mode on")
        pooling = Pooling(modes, "Normalize" in kinds)
    return model_dir, pooling


def _task_of(architecture: str, config: dict[str, Any]) -> str | None:
    """The task config.json's first architecture implies, or None when edgekit has no head for it."""
    if architecture.endswith("ForSequenceClassification"):
        return "sequence-classification"
    if architecture.endswith("ForImageClassification"):
        return "image-classification"
    if architecture.endswith("Model") and not config.get("is_encoder_decoder"):
        return "feature-extraction"
    return None


def read_folder(source: str, task: str | None = None) -> HfFolder:
    """Check an ``hf:`` folder and read what it declares; ``task`` (HF or edgekit name) overrides config.json's."""
    if not source[len(PREFIX):].strip():
        raise ConfigError("[model] source = \"hf:\" names no folder; write source = \"hf:path/to/model-folder\"")
    root = Path(source[len(PREFIX):]).expanduser()
    if not root.exists():
        raise ModelError(f"Hugging Face model folder {root} does not exist (hf: sources are local folders; edgekit "
                         "downloads nothing: save the model with save_pretrained or `hf download` first)")
    if not root.is_dir():
        raise ModelError(f"hf: source {root} is not a folder; give the folder holding config.json")
    model_dir, pooling = _pooling(root)
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"folder {model_dir} has no config.json: it is not a saved transformers model "
                         "(model.save_pretrained(folder) writes one)")
    config = _json(model_dir / "config.json", "model config")
    if "auto_map" in config:
        raise ModelError(f"{model_dir / 'config.json'} maps its model to code of its own (auto_map); edgekit runs no "
                         "code from a model folder (trust_remote_code): write a 'file.py:factory' source instead")
    if not any((model_dir / f).is_file() for f in WEIGHT_FILES):
        raise ModelError(f"folder {model_dir} holds no weights ({' / '.join(WEIGHT_FILES[::2])}); edgekit downloads "
                         "nothing: save them into the folder")
    architectures = config.get("architectures") or []
    architecture = str(architectures[0]) if isinstance(architectures, list) and architectures else ""
    found = _task_of(architecture, config)
    if task == "embedding":  # edgekit's task names (a resolved config re-read) map back to the folder's head
        task = "feature-extraction"
    elif task == "classification":
        image = (model_dir / "preprocessor_config.json").is_file() and not (model_dir / "tokenizer_config.json").is_file()
        task = found if found in ("sequence-classification", "image-classification") else (
            "image-classification" if image else "sequence-classification")
    elif task is not None and task not in TASKS:
        raise ConfigError(f"[model] task = {task!r} is not one an hf: source takes: {', '.join(TASKS)}")
    chosen = task or found
    if chosen is None:
        raise ModelError(f"{model_dir / 'config.json'}: architecture {architecture or '(none)'} has no task edgekit "
                         f"knows; set [model] task to one of {', '.join(TASKS)} (feature-extraction uses its base model)")
    if pooling is not None and chosen != "feature-extraction":
        raise ConfigError(f"[model] task = {chosen!r}: {root} is a sentence-transformers folder (an embedding model); "
                          "use task = \"feature-extraction\" or leave task out")
    return HfFolder(root, model_dir, architecture, chosen, pooling)


def _transformers() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when huggingface_hub is first imported
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        import transformers
    except ImportError:
        raise ModelError("an hf: source needs the transformers library: pip install 'edgekit[hf]'") from None
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    return transformers


def _tokenizer(folder: HfFolder) -> Any:
    transformers = _transformers()
    try:
        return transformers.AutoTokenizer.from_pretrained(str(folder.model_dir), local_files_only=True,
                                                          trust_remote_code=False)
    except Exception as exc:  # OSError for missing files, ValueError for unknown classes, and more
        raise ModelError(f"the tokenizer of {folder.model_dir} cannot be loaded offline: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}") from None


def _image_size(folder: HfFolder) -> tuple[int, int, int]:
    """(channels, height, width) of the image input: preprocessor_config.json's crop/size, else config.json."""
    config = _json(folder.model_dir / "config.json", "model config")
    channels = int(config.get("num_channels", 3))
    pre_path = folder.model_dir / "preprocessor_config.json"
    pre = _json(pre_path, "preprocessor config") if pre_path.is_file() else {}
    for key in ("crop_size", "size"):
        size = pre.get(key) if pre.get(f"do_{'center_crop' if key == 'crop_size' else 'resize'}", True) else None
        if isinstance(size, int):
            return channels, size, size
        if isinstance(size, dict) and isinstance(size.get("height"), int) and isinstance(size.get("width"), int):
            return channels, size["height"], size["width"]
        if isinstance(size, dict) and isinstance(size.get("shortest_edge"), int):
            return channels, size["shortest_edge"], size["shortest_edge"]
    side = config.get("image_size")
    if isinstance(side, int):
        return channels, side, side
    raise ModelError(f"{folder.model_dir}: no image size in preprocessor_config.json or config.json; declare "
                     "[model] inputs = [{ name = \"pixel_values\", shape = [1, 3, H, W] }]")


def default_inputs(folder: HfFolder) -> tuple[InputConfig, ...]:
    """The inputs the folder implies: the tokenizer's input_ids / attention_mask / token_type_ids (int64, dynamic
    batch and sequence, example length SEQUENCE), or the image processor's pixel_values (float32, dynamic batch)."""
    if folder.is_image:
        return (InputConfig("pixel_values", (1, *_image_size(folder)), "float32", {0: "batch"}),)
    names = set(_tokenizer(folder).model_input_names) | {"input_ids", "attention_mask"}
    return tuple(InputConfig(n, (1, SEQUENCE), "int64", {0: "batch", 1: "sequence"}) for n in TEXT_INPUTS if n in names)


def completed(cfg: ModelConfig) -> ModelConfig:
    """An ``hf:`` model config with what the folder implies filled in (inputs, output names, edgekit's task name);
    any other source is returned as it is. Declared inputs keep their shapes; the manifest records the result."""
    if not is_hf(cfg.source):
        return cfg
    folder = read_folder(cfg.source, cfg.task)
    inputs = cfg.inputs or default_inputs(folder)
    return dataclasses.replace(cfg, inputs=inputs, outputs=cfg.outputs or folder.outputs, task=EDGEKIT_TASK[folder.task])


def _loader(transformers: Any, task: str) -> Any:
    return {"feature-extraction": transformers.AutoModel,
            "sequence-classification": transformers.AutoModelForSequenceClassification,
            "image-classification": transformers.AutoModelForImageClassification}[task]


def _pool(hidden: Any, mask: Any, pooling: Pooling) -> Any:
    """sentence-transformers' Pooling (+ Normalize) over the tokens the attention mask keeps."""
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)
    parts = []
    for mode in pooling.modes:
        if mode == "cls":
            parts.append(hidden[:, 0])
        elif mode == "max":
            parts.append(torch.where(m > 0, hidden, torch.finfo(hidden.dtype).min).amax(1))
        else:
            total, count = (hidden * m).sum(1), m.sum(1).clamp(min=1e-9)
            parts.append(total / (count if mode == "mean" else count.sqrt()))
    out = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
    return torch.nn.functional.normalize(out, p=2.0, dim=1) if pooling.normalize else out


def _wrapper(model: Any, folder: HfFolder, names: tuple[str, ...]) -> Any:
    import torch

    class HfText(torch.nn.Module):
        """The folder's model with positional tensor inputs (the ONNX inputs, in order) and one tensor output."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            extra = {"token_type_ids": token_type_ids} if "token_type_ids" in names else {}
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)
            if folder.task != "feature-extraction":
                return out.logits
            if folder.pooling is None:
                return out.last_hidden_state
            return _pool(out.last_hidden_state, attention_mask, folder.pooling)

    class HfImage(torch.nn.Module):
        """An image classifier: pixel_values in, logits out."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: Any) -> Any:
            return self.model(pixel_values=pixel_values).logits

    return (HfImage if folder.is_image else HfText)().eval()


def _check_inputs(folder: HfFolder, inputs: tuple[InputConfig, ...]) -> None:
    names = tuple(i.name for i in inputs)
    if folder.is_image:
        if names != ("pixel_values",):
            raise ConfigError(f"[model] inputs {list(names)}: an image classifier from {folder.root} takes "
                              "[\"pixel_values\"]")
        return
    order = [n for n in TEXT_INPUTS if n in names]
    if list(names) != order or names[:2] != ("input_ids", "attention_mask"):
        raise ConfigError(f"[model] inputs {list(names)}: a text model from {folder.root} takes input_ids, "
                          "attention_mask and optionally token_type_ids, in that order")


def _load(transformers: Any, folder: HfFolder) -> Any:
    try:
        model, info = _loader(transformers, folder.task).from_pretrained(
            str(folder.model_dir), local_files_only=True, trust_remote_code=False, output_loading_info=True)
    except Exception as exc:  # OSError (missing files), ValueError (unknown model_type), and whatever else
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:240]
        raise ModelError(f"{folder.model_dir} cannot be loaded offline as {folder.task} "
                         f"({type(exc).__name__}: {first})") from None
    missing = [k for k in info.get("missing_keys", ()) if not (folder.task == "feature-extraction" and k.startswith("pooler."))]
    if missing:
        raise ModelError(f"{folder.model_dir}: the weights lack {len(missing)} tensor(s) of the {folder.task} model "
                         f"({', '.join(sorted(missing)[:4])}{' …' if len(missing) > 4 else ''}); they would be random. "
                         "Is [model] task right for this folder?")
    return model.eval()


def _attention_for_export(model: Any, wrapper: Any, example: tuple[Any, ...]) -> dict[str, Any]:
    """Switch a model loaded with SDPA (or another fused kernel) to eager attention when both give the same outputs:
    the eager form is what ONNX Runtime's transformer fusion turns into Attention (QAttention under dynamic INT8)."""
    import torch

    loaded = str(getattr(model.config, "_attn_implementation", "eager") or "eager")
    if loaded == "eager":
        return {"attention": "eager (as loaded)"}
    with torch.no_grad():
        before = wrapper(*example)
        try:
            model.set_attn_implementation("eager")
        except Exception as exc:  # a model class without the eager path, or one that cannot switch
            return {"attention": f"{loaded} (as loaded; switching to eager failed: {str(exc)[:120]})"}
        after = wrapper(*example)
    scale = max(float(before.abs().max()), 1e-12)
    err = float((before - after).abs().max()) / scale
    if not err <= ATTENTION_RTOL:
        model.set_attn_implementation(loaded)
        return {"attention": f"{loaded} (as loaded; eager attention changed outputs by {err:.2g} relative, kept {loaded})"}
    return {"attention": f"loaded as {loaded}, exported and validated as eager: its graph is the one ONNX Runtime "
                         f"fuses into Attention; eager vs {loaded} on an example input: max relative difference {err:.1e}"}


def _example(inputs: tuple[InputConfig, ...], vocab: int, seed: int = 0) -> tuple[Any, ...]:
    """A two-row example: random ids below ``vocab``, the second row half padding (the mask path is exercised)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in inputs:
        shape = (2, *i.shape[1:])
        if i.dtype.startswith("float"):
            out.append(torch.randn(shape, generator=gen))
        elif i.name == "attention_mask":
            mask = torch.ones(shape, dtype=torch.int64)
            mask[1, shape[1] // 2:] = 0
            out.append(mask)
        elif i.name == "input_ids":
            out.append(torch.randint(min(5, vocab - 1), vocab, shape, generator=gen))
        else:
            out.append(torch.zeros(shape, dtype=torch.int64))
    return tuple(out)


def _fingerprint(folder: HfFolder) -> str:
    """sha256 over the folder's files (names and bytes), READMEs and git files left out."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.root.rglob("*") if p.is_file()):
        rel = path.relative_to(folder.root)
        if rel.name.startswith(".") or rel.parts[0].startswith(".") or rel.suffix == ".md":
            continue
        digest.update(str(rel).encode() + b"\0")
        hash_file(digest, path)
    return digest.hexdigest()


def load_hf(cfg: ModelConfig) -> SourceModel:
    """The SourceModel of an ``hf:`` folder: its model with the task's head (and a sentence-transformers folder's
    pooling) behind positional tensor inputs, switched to eager attention when that is verified equal."""
    if cfg.weights is not None:
        raise ConfigError("[model] weights: a Hugging Face folder carries its own weights; remove 'weights'")
    cfg = completed(cfg)
    folder = read_folder(cfg.source, cfg.task)
    _check_inputs(folder, cfg.inputs)
    transformers = _transformers()
    model = _load(transformers, folder)
    wrapper = _wrapper(model, folder, tuple(i.name for i in cfg.inputs))
    try:
        notes = {"hf": f"{folder.architecture or 'model'} from {folder.model_dir} as {folder.task}"
                       + (f"; sentence-transformers pooling {'+'.join(folder.pooling.modes)}"
                          + (" + L2 normalize" if folder.pooling.normalize else "") if folder.pooling else "")}
        notes.update(_attention_for_export(model, wrapper, _example(cfg.inputs, int(getattr(model.config, "vocab_size", 0) or 100))))
    except Exception as exc:  # the model's own forward on the example: a user-side problem named in one line
        raise ModelError(f"{folder.model_dir}: the model fails on an example input: {type(exc).__name__}: "
                         f"{str(exc)[:200]}") from None
    log.info("hf source: %s", notes)
    specs = tuple(i.spec for i in cfg.inputs)
    return SourceModel(cfg.source, specs, cfg.outputs, cfg.task, wrapper, None, _fingerprint(folder), notes=notes)

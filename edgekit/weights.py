"""Safe weights loading: a state_dict from .safetensors or a torch file (``weights_only=True``), picked out of a
training checkpoint ({"model": ..., "optimizer": ...}) and with a wrapper's key prefix (``module.``) stripped."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

from edgekit.errors import WeightsError, shown
from edgekit.fsutil import check_regular_file

# Prefixes a wrapper adds to every key: DistributedDataParallel / DataParallel, a LightningModule or a wrapper
# holding the net as `self.model`, torch.compile's OptimizedModule. Stripped (repeatedly) only when that makes the
# keys fit the model.
WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")
SHOWN_KEYS = 5  # keys listed in a message before "… (+N more)"


def _listed(keys: list[str]) -> str:
    head = ", ".join(shown(k, 60) for k in keys[:SHOWN_KEYS])
    return head + (f" … (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else "")


def _is_state_dict(obj: Any) -> bool:
    import torch

    return (isinstance(obj, dict) and bool(obj)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def read_weights_file(path: Path) -> Any:
    """What the file holds: a flat mapping from .safetensors, or the object a torch file pickles, unpickled with
    ``weights_only=True`` (tensors, dicts, lists, numbers; anything that would run code is refused)."""
    import torch

    check_regular_file(path, "weights file", error=WeightsError)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError, OverflowError, TypeError) as exc:
            raise WeightsError(f"weights file {path} is not a readable safetensors file: {shown(exc, 200)}") from None
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise WeightsError(f"weights file {path} does not hold a state_dict (a mapping of names to tensors)")
        return state
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        culprit = next((ln.strip() for ln in text.splitlines() if "GLOBAL" in ln or "global" in ln.split()[:3]), "")
        if not culprit:
            raise WeightsError(f"weights file {path} is not a readable torch state_dict (its pickle stream is corrupt)") from None
        raise WeightsError(
            f"weights file {path} was refused: loading it would execute code or build arbitrary objects "
            f"({culprit[:160]}); save a plain state_dict (torch.save(model.state_dict(), ...)) or use .safetensors"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError, TypeError,
            AttributeError, OverflowError, MemoryError, UnicodeDecodeError, NotImplementedError) as exc:
        # torch.load on damaged bytes raises many kinds; all mean the same to the user
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise WeightsError(f"weights file {path} is not a readable torch file ({type(exc).__name__}: {first})") from None


def strip_prefix(state: dict[str, Any], own: set[str]) -> tuple[dict[str, Any], str]:
    """``state`` with the wrapper prefixes every key shares removed, when that makes its keys the model's; else
    ``state`` unchanged. Returns the state and the prefix removed ('' when none)."""
    if set(state) == own:
        return state, ""
    keys, removed = list(state), ""
    while True:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in keys)), None)
        if prefix is None:
            return state, ""
        keys = [k[len(prefix):] for k in keys]
        removed += prefix
        if set(keys) == own:
            return dict(zip(keys, state.values())), removed


def _fits(state: dict[str, Any], own: set[str]) -> bool:
    return set(strip_prefix(state, own)[0]) == own


def _keys_of(obj: dict[Any, Any]) -> str:
    return _listed([repr(shown(k, 40)) if isinstance(k, str) else repr(k) for k in obj])


def select_state_dict(obj: Any, path: Path, key: str | None = None, own: set[str] | None = None) -> tuple[dict[str, Any], str]:
    """The state_dict inside what a weights file holds, and a note saying where it was found ('' for a plain one).

    With ``key``: ``obj[key]``. Without: ``obj`` itself when it is a state_dict; else the one value of the checkpoint
    dict that is a state_dict fitting the model's keys ``own`` (or the only state_dict in it when none fits, so the
    mismatch is reported on it); several candidates are an error listing them."""
    if key is not None:
        if _is_state_dict(obj):
            raise WeightsError(f"[model] weights_key = {key!r}: weights {path} is a plain state_dict, not a checkpoint "
                               "dict; remove weights_key")
        if not isinstance(obj, dict):
            raise WeightsError(f"[model] weights_key = {key!r}: weights {path} holds a {type(obj).__name__}, not a "
                               "checkpoint dict")
        if key not in obj:
            raise WeightsError(f"[model] weights_key = {key!r} is not a key of weights {path}; its keys: {_keys_of(obj)}")
        if not _is_state_dict(obj[key]):
            raise WeightsError(f"weights {path}[{key!r}] is a {type(obj[key]).__name__}, not a state_dict (a mapping "
                               f"of names to tensors); state_dicts in the file: {_candidates_text(obj)}")
        return obj[key], f"state_dict taken from key {key!r} of the checkpoint (weights_key)"
    if _is_state_dict(obj):
        return obj, ""
    if not isinstance(obj, dict):
        raise WeightsError(f"weights file {path} does not hold a state_dict (a mapping of names to tensors); it holds "
                           f"a {type(obj).__name__}")
    candidates = [k for k, v in obj.items() if isinstance(k, str) and _is_state_dict(v)]
    if not candidates:
        raise WeightsError(f"weights file {path} does not hold a state_dict (a mapping of names to tensors) nor a "
                           f"checkpoint dict with one; its keys: {_keys_of(obj)}")
    fitting = [k for k in candidates if own is not None and _fits(obj[k], own)]
    chosen = fitting if fitting else candidates
    if len(chosen) > 1:
        names = ", ".join(repr(shown(k, 40)) for k in chosen)
        raise WeightsError(f"weights {path.name} holds several state_dicts: {names}; choose one with [model] "
                           f"weights_key (or --weights-key)")
    others = sorted(str(k) for k in obj if k != chosen[0])
    rest = f" (also in the file: {', '.join(shown(k, 30) for k in others[:6])}{' …' if len(others) > 6 else ''})" if others else ""
    return obj[chosen[0]], f"state_dict taken from key {chosen[0]!r} of the checkpoint{rest}"


def _candidates_text(obj: dict[Any, Any]) -> str:
    found = [repr(shown(k, 40)) for k, v in obj.items() if isinstance(k, str) and _is_state_dict(v)]
    return ", ".join(found) if found else "none"


def read_state_dict(path: Path, key: str | None = None) -> dict[str, Any]:
    """The state_dict a weights file holds (see ``select_state_dict``; without the model, no fit is checked)."""
    return select_state_dict(read_weights_file(path), path, key)[0]


def _prefix_hint(file_keys: list[str], own_keys: list[str]) -> str:
    """Why the keys miss each other, when one side has a prefix on every key the other lacks."""
    def shared_head(keys: list[str]) -> str:
        heads = {k.split(".", 1)[0] for k in keys}
        return next(iter(heads)) + "." if len(heads) == 1 and all("." in k for k in keys) else ""

    mine, theirs = shared_head(own_keys), shared_head(file_keys)
    if theirs and theirs != mine:
        return (f"; every key in the file starts with '{theirs}' and the model's do not: the file may hold a wrapper's "
                "weights (set [model] weights_key, or save the inner module's state_dict)")
    if mine and mine != theirs:
        return (f"; every key of the model starts with '{mine}' and the file's do not: the file may hold the weights "
                "of a submodule; make the factory return that submodule")
    return ""


def fit_problems(state: dict[str, Any], own: dict[str, Any]) -> list[str]:
    """Missing and unexpected keys (counts and the first few) and shape mismatches of ``state`` against ``own``."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
                  for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if keys:
            total = f" ({len(keys)} of {len(own) if label != 'unexpected keys' else len(state)})" if len(keys) > SHOWN_KEYS else ""
            problems.append(f"{label}: {_listed(keys)}{total}")
    return problems


def load_weights(module: Any, path: Path, key: str | None = None) -> str:
    """Load the weights file's state_dict into ``module`` (strict); return a note on how it was found ('' for a plain
    state_dict whose keys are the model's). A mismatch names the missing/unexpected keys and a prefix hint."""
    own = module.state_dict()
    state, picked = select_state_dict(read_weights_file(path), path, key, set(own))
    state, prefix = strip_prefix(state, set(own))
    problems = fit_problems(state, own)
    if problems:
        hint = _prefix_hint(list(state), list(own)) if any(p.startswith(("missing", "unexpected")) for p in problems) else ""
        where = f"{path}[{key!r}]" if key is not None else str(path)
        raise WeightsError(f"weights {where} do not fit the model: {'; '.join(problems)}{hint}")
    module.load_state_dict(state, strict=True)
    notes = [picked] if picked else []
    if prefix:
        notes.append(f"prefix '{prefix}' stripped from every key to fit the model")
    return "; ".join(notes)

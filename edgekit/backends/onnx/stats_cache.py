"""A cache of the activation statistics static INT8 calibration collects: shared by the targets of one build whose
graphs match (ort-int8, tensorrt-int8), reused by a later build of the same inputs. Entries carry their own sha256
and are verified before use; a stale, corrupt or modified entry is ignored with a warning and collected again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from edgekit import strictjson
from edgekit.backends.onnx.qdq_ranges import ActivationStats
from edgekit.fsutil import atomic_write_bytes, hash_file

log = logging.getLogger(__name__)

FORMAT = 1
ENV = "EDGEKIT_CALIBRATION_CACHE"  # a folder, or "none": the default when neither the config nor the CLI says
OFF = ("none", "off", "false")


def default_dir() -> str:
    """Where the statistics go when the config and the command line do not say: ``$EDGEKIT_CALIBRATION_CACHE``,
    else ``$XDG_CACHE_HOME/edgekit/calibration``, else ``~/.cache/edgekit/calibration``; "" when disabled."""
    env = os.environ.get(ENV, "").strip()
    if env:
        return "" if env.lower() in OFF else str(Path(env).expanduser())
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return str(Path(base).expanduser() / "edgekit" / "calibration")


def resolve_dir(setting: str | bool | None) -> str:
    """The cache folder for ``[calibration] cache`` / ``--calibration-cache``: None or true: the default folder;
    false or "none": no cache (""); a path: that folder."""
    if setting is None or setting is True:
        return default_dir()
    if setting is False or str(setting).strip().lower() in OFF:
        return ""
    return str(Path(str(setting)).expanduser())


def graph_sha256(model: Path, graph: Any) -> str:
    """sha256 of the ONNX file the statistics are collected on, and of its external data files, if any."""
    h = hashlib.sha256()
    files = [Path(model)]
    for init in graph.initializer:
        if init.data_location == 1:  # EXTERNAL
            location = next((e.value for e in init.external_data if e.key == "location"), "")
            files.append(Path(model).parent / location)
    for path in dict.fromkeys(files):
        h.update(path.name.encode())
        hash_file(h, path)
    return h.hexdigest()


def key_parts(graph_sha: str, data: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Everything the statistics depend on: the exact graph, the data, how they are measured, the code measuring."""
    import numpy
    import onnxruntime

    from edgekit import __version__

    parts = {"format": FORMAT, "graph_sha256": graph_sha, "data": data, "settings": settings,
             "edgekit": __version__, "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__}
    return json.loads(json.dumps(parts))  # as it reads back from an entry (tuples as lists)


def key_digest(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


@dataclass
class Collected:
    """The statistics, the samples and batches they were measured on, and how this build got them."""

    stats: ActivationStats
    samples: int
    batches: int
    note: str  # "cache hit <key prefix>" or "collected (N samples)"
    warning: str = ""  # an entry found and not trusted, or a cache that could not be written


def cached_stats(folder: str, parts: dict[str, Any], collect: Callable[[], tuple[ActivationStats, int, int]]) -> Collected:
    """The statistics of ``parts`` from the cache folder (verified), else ``collect()`` them and store them there.

    Concurrent builds (``--jobs``, fleet tasks) of the same key wait on a lock, so the statistics are collected once."""
    if not folder:
        stats, samples, batches = collect()
        return Collected(stats, samples, batches, f"collected ({samples} samples); no cache")
    digest = key_digest(parts)
    entry = Path(folder) / f"{digest}.json"
    with _locked(entry.with_suffix(".lock")):
        found, problem = _read(entry, parts)
        if found is not None:
            stats, samples, batches = found
            return Collected(stats, samples, batches, f"cache hit {digest[:12]}")
        stats, samples, batches = collect()
        warning = f"calibration statistics cache entry {entry} ignored ({problem}); collected again" if problem else ""
        try:
            atomic_write_bytes(entry, _dumps(parts, stats, samples, batches))
        except OSError as exc:
            warning = "; ".join(filter(None, [warning, f"calibration statistics not cached: {entry.parent} is not "
                                              f"writable ({exc.strerror or exc}); use --calibration-cache DIR or none"]))
        return Collected(stats, samples, batches, f"collected ({samples} samples)", warning)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (flock) while held; without one (no folder, no fcntl, NFS) the body just runs."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a")
    except (ImportError, OSError):
        yield
        return
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError:
            pass
        yield


def _floats(pairs: dict[str, tuple[float, float]]) -> list[list[str]]:
    # float.hex: exact, and holds -inf/nan (fill values) where strict JSON cannot
    return [[t, float(a).hex(), float(b).hex()] for t, (a, b) in pairs.items()]


def _pairs(rows: list[list[str]]) -> dict[str, tuple[float, float]]:
    return {str(t): (float.fromhex(a), float.fromhex(b)) for t, a, b in rows}


def _payload(parts: dict[str, Any], stats: ActivationStats, samples: int, batches: int) -> dict[str, Any]:
    return {"key": parts, "samples": samples, "batches": batches,
            "stats": {"bounds": _floats(stats.bounds), "fill_tensors": list(stats.fill_tensors),
                      "fill_nodes": list(stats.fill_nodes), "mse_ranges": _floats(stats.mse_ranges),
                      "histogram_ranges": _floats(stats.histogram_ranges)}}


def _sha(payload: dict[str, Any]) -> str:
    return hashlib.sha256(strictjson.dumps(payload, sort_keys=True).encode()).hexdigest()


def _dumps(parts: dict[str, Any], stats: ActivationStats, samples: int, batches: int) -> bytes:
    payload = _payload(parts, stats, samples, batches)
    return (strictjson.dumps({**payload, "sha256": _sha(payload)}, sort_keys=True) + "\n").encode()


def _read(entry: Path, parts: dict[str, Any]) -> tuple[tuple[ActivationStats, int, int] | None, str]:
    """The entry's statistics if it exists, is intact (sha256) and is for ``parts``; else (None, why not) ("": none)."""
    if not entry.exists():
        return None, ""
    try:
        doc = strictjson.loads_strict(entry.read_text(encoding="utf-8"))
        payload = {k: v for k, v in doc.items() if k != "sha256"}
        if doc.get("sha256") != _sha(payload):
            return None, "its sha256 does not match its content: modified or corrupt"
        if doc["key"] != parts:
            return None, "stale: made for other inputs"
        s = doc["stats"]
        stats = ActivationStats(_pairs(s["bounds"]), [str(t) for t in s["fill_tensors"]], [str(n) for n in s["fill_nodes"]],
                                _pairs(s["mse_ranges"]), _pairs(s["histogram_ranges"]))
        return (stats, int(doc["samples"]), int(doc["batches"])), ""
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.debug("calibration cache entry %s unreadable", entry, exc_info=True)
        return None, f"unreadable: {type(exc).__name__}"

"""What report.html draws beyond the manifest, read from the build folder: each target's per-sample error histogram
(DIR/<target>/metrics.json ``error_histogram``) and per-layer analysis (DIR/<target>/debug.json). A file that is
missing or not of the expected shape leaves its plot out of the page; it is never an error of the build."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from edgekit import strictjson

DEBUG_FILE = "debug.json"
METRICS_FILE = "metrics.json"
HISTOGRAM_KEY = "error_histogram"


@dataclass
class ReportData:
    """Per target: the error histogram (``Comparison.histogram`` shape) and debug.json (docs: ``edgekit debug``)."""

    histograms: dict[str, dict[str, Any]] = field(default_factory=dict)
    debug: dict[str, dict[str, Any]] = field(default_factory=dict)


MAX_FILE_BYTES = 16 << 20  # a build folder is input: a file larger than this is not read for a report


def read_json(path: Path) -> Any:
    """The JSON of a report's side file, or None when it is missing, a link, too large or not JSON."""
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > MAX_FILE_BYTES:
            return None
        return strictjson.restore(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def valid_histogram(h: Any) -> bool:
    """An ``error_histogram`` as the validator writes it: n+1 increasing edges, n counts per output."""
    if not isinstance(h, dict) or not isinstance(h.get("edges"), list) or not isinstance(h.get("outputs"), dict):
        return False
    edges = h["edges"]
    if len(edges) < 3 or not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in edges):
        return False
    if any(b <= a for a, b in zip(edges, edges[1:])) or edges[1] <= 0:
        return False
    counts = list(h["outputs"].values())
    return bool(counts) and all(isinstance(c, list) and len(c) == len(edges) - 1 and all(map(_count, c)) for c in counts)


def valid_debug(d: Any) -> bool:
    """debug.json's outer shape (the plot checks each layer's numbers itself)."""
    return isinstance(d, dict) and isinstance(d.get("layers"), list) and all(isinstance(x, dict) for x in d["layers"])


def read_report_data(root: Path, targets: Iterable[str]) -> ReportData:
    """The histograms and debug analyses of ``targets`` found under ``root``."""
    data = ReportData()
    for name in targets:
        metrics = read_json(root / name / METRICS_FILE)
        if isinstance(metrics, dict) and valid_histogram(metrics.get(HISTOGRAM_KEY)):
            data.histograms[name] = metrics[HISTOGRAM_KEY]
        debug = read_json(root / name / DEBUG_FILE)
        if valid_debug(debug):
            data.debug[name] = debug
    return data

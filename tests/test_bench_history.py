"""benchmarks/report.py's run history: each full `make bench` run appends its bars; BENCHMARKS.md tables them."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import report  # noqa: E402

SPEED = "batch 1: edgekit ort-int8-dynamic >= 1.70x faster than ORT FP32"
COSINE = "batch 1: edgekit ort-int8-dynamic mean cosine >= 0.993"
ST = "batch 1: edgekit ort-int8-dynamic not slower than sentence-transformers avx512_vnni"


def entry(date: str, cpu: str, speed: str, met: bool) -> dict:
    return {"date": date, "commit": "abc1234", "cpu": cpu, "isa": ["avx2"], "results": "r.json",
            "bars": {"minilm": [{"bar": SPEED, "measured": speed, "met": met},
                                {"bar": COSINE, "measured": "0.9964", "met": True},
                                {"bar": ST, "measured": "1.14x (sentence-transformers p50 / edgekit p50)", "met": True}]}}


def test_history_round_trips_and_tables_speed_bars(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    for e in (entry("d1", "EPYC", "1.61x (repeats 1.60-1.73)", False), entry("d2", "Xeon", "2.50x", True),
              entry("d3", "EPYC", "1.81x (repeats 1.80-1.81)", True)):
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(report.json.dumps(e) + "\n")
    runs = report.load_history(path)
    assert [r["date"] for r in runs] == ["d1", "d2", "d3"]
    lines = report.history_section(runs, "EPYC")
    text = "\n".join(lines)
    assert "the 2 runs recorded on this CPU model (EPYC)" in text
    header = next(ln for ln in lines if ln.startswith("| run |"))
    assert SPEED in header and ST in header and COSINE not in header  # speed bars only
    rows = [ln for ln in lines if ln.startswith("| d")]
    assert rows == ["| d1 | abc1234 | **1.61x (repeats 1.60-1.73)** | 1.14x |",
                    "| d3 | abc1234 | 1.81x (repeats 1.80-1.81) | 1.14x |"]  # Xeon run left out, not-met in bold


def test_history_needs_two_runs(tmp_path: Path) -> None:
    assert report.load_history(tmp_path / "missing.jsonl") == []
    assert report.history_section([entry("d1", "EPYC", "1.61x", False)], "EPYC") == []

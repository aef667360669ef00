"""--jobs N: targets built in worker processes give the same bytes as one process."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from edgekit.cli.commands import demo_config
from edgekit.config import parse_config
from edgekit.errors import UsageError
from edgekit.jobs import build_in_workers
from edgekit.pipeline import BuildOptions, build

TARGETS = ("ort-int8", "torch-fbgemm")


def _digests(root: Path) -> dict[str, str]:
    """sha256 of every file under the targets' folders, and of the reference, except metrics.json (build_seconds)."""
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and p.name != "metrics.json"
             and (p.parent.name in TARGETS or p.parent.name == "reference")]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_two_workers_build_byte_identical_artifacts(tmp_path, monkeypatch):
    import edgekit.pipeline

    pools = []

    def spy(jobs, inputs, workers):  # the real worker pool, recorded
        pools.append(workers)
        return build_in_workers(jobs, inputs, workers)

    monkeypatch.setattr(edgekit.pipeline, "build_in_workers", spy)
    cfg = parse_config(demo_config(), Path.cwd())
    one = build(cfg, BuildOptions(out=tmp_path / "one", targets=TARGETS, validate=False, jobs=1))
    assert pools == []
    two = build(cfg, BuildOptions(out=tmp_path / "two", targets=TARGETS, validate=False, jobs=2))
    assert pools == [2]
    for name in TARGETS:
        assert one.results[name].status == two.results[name].status == "passed"
        assert one.results[name].artifact.files == two.results[name].artifact.files
        assert one.results[name].artifact.notes == two.results[name].artifact.notes
    digests = _digests(tmp_path / "one")
    assert len(digests) >= len(TARGETS) + 1 and digests == _digests(tmp_path / "two")
    listed = {f.path: f.sha256 for name in TARGETS for f in one.results[name].artifact.files}
    assert listed and all(digests[path] == sha for path, sha in listed.items())


def test_jobs_below_one_is_a_usage_error(tmp_path):
    cfg = parse_config(demo_config(), Path.cwd())
    with pytest.raises(UsageError, match="--jobs must be >= 1"):
        build(cfg, BuildOptions(out=tmp_path / "o", targets=TARGETS, jobs=0))

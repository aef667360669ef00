"""The content-addressed step cache: each step's output stored under the sha256 of its inputs, checked before use.

    CACHE/objects/<key[:2]>/<key>/entry.json   kind, meta, and path + sha256 + bytes of every file (written last)
    CACHE/objects/<key[:2]>/<key>/files/...    the step's output files
    CACHE/inputs/<model>/<target>.json         the inputs of the pair's last build (``--dry-run`` says what changed)

An entry is built in CACHE/tmp and renamed into place whole, so a reader sees all of it or none. An entry whose
entry.json is missing or unreadable, or one of whose files is missing or has other bytes, is removed and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from edgekit.fsutil import atomic_write_bytes, atomic_write_json
from edgekit.types import ArtifactFile

ENTRY = "entry.json"


def digest(value: Any) -> str:
    """sha256 of a JSON-able value, keys sorted: the same inputs give the same key on every host."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, allow_nan=False, default=str).encode()).hexdigest()


def step_key(kind: str, components: dict[str, str]) -> str:
    """The key of one step's output: its kind and the digest of every input it reads."""
    return digest({"kind": kind, "inputs": components})


@dataclass(frozen=True)
class Entry:
    """One verified cache entry: its files (paths relative to ``files_dir``) and the step's metadata."""

    key: str
    kind: str
    meta: dict[str, Any]
    files: tuple[ArtifactFile, ...]
    files_dir: Path

    def read(self) -> dict[str, bytes]:
        return {f.path: (self.files_dir / f.path).read_bytes() for f in self.files}

    def copy_into(self, root: Path) -> None:
        for f in self.files:
            dst = root / f.path
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.files_dir / f.path, dst)


class Cache:
    """A folder of entries; ``get`` trusts an entry only after every file's sha256 matches its entry.json."""

    def __init__(self, root: Path, repair: bool = True):
        self.root = Path(root)
        self.repair = repair  # remove a corrupt entry when found (False for a dry run, which writes nothing)

    def _dir(self, key: str) -> Path:
        return self.root / "objects" / key[:2] / key

    def check(self, key: str) -> tuple[Entry | None, str]:
        """(the entry, "") when present and whole; (None, why) when missing or corrupt (a corrupt one is removed)."""
        folder = self._dir(key)
        if not folder.exists():
            return None, "not in the cache"
        try:
            data = json.loads((folder / ENTRY).read_text(encoding="utf-8"))
            files = tuple(ArtifactFile(**f) for f in data["files"])
            entry = Entry(key, data["kind"], data["meta"], files, folder / "files")
        except (OSError, ValueError, KeyError, TypeError):
            self._remove(folder)
            return None, "its cache entry was incomplete"
        for f in files:
            path = entry.files_dir / f.path
            if not path.is_file() or ArtifactFile.of(path, entry.files_dir) != f:
                self._remove(folder)
                return None, f"its cached {f.path} was corrupt (sha256 mismatch)"
        return entry, ""

    def get(self, key: str) -> Entry | None:
        return self.check(key)[0]

    def put(self, key: str, kind: str, files: dict[str, bytes], meta: dict[str, Any]) -> Entry:
        """Store a step's output files and metadata under ``key``; an entry already there (another writer) is kept."""
        tmp = self.root / "tmp" / f"{key}-{uuid.uuid4().hex[:8]}"
        try:
            listed = []
            for rel, data in sorted(files.items()):
                p = PurePosixPath(rel)
                if p.is_absolute() or ".." in p.parts:
                    raise ValueError(f"cache file path {rel!r} is outside the entry")
                atomic_write_bytes(tmp / "files" / rel, data)
                listed.append(vars(ArtifactFile.of(tmp / "files" / rel, tmp / "files")))
            atomic_write_json(tmp / ENTRY, {"key": key, "kind": kind, "meta": meta, "files": listed})
            final = self._dir(key)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists() and self.get(key) is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        entry = self.get(key)
        if entry is None:
            raise OSError(f"the cache entry {key[:12]}… under {self.root} failed its check right after it was written")
        return entry

    # the inputs of each pair's last build, for ``--dry-run``'s "which input changed"
    def last_inputs(self, model: str, target: str) -> dict[str, str] | None:
        try:
            return json.loads((self.root / "inputs" / model / f"{target}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def record_inputs(self, model: str, target: str, components: dict[str, str]) -> None:
        atomic_write_json(self.root / "inputs" / model / f"{target}.json", components)

    def _remove(self, folder: Path) -> None:
        if self.repair:
            shutil.rmtree(folder, ignore_errors=True)


def changed(before: dict[str, str] | None, now: dict[str, str]) -> str:
    """Which inputs differ from the last build, in words ("weights changed, profile changed")."""
    if before is None:
        return "never built"
    names = [k for k in now if before.get(k) != now[k]] + [k for k in before if k not in now]
    return ", ".join(f"{n} changed" for n in names) if names else ""

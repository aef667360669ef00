"""A partial rebuild (``--target X -o DIR`` over an earlier build of more targets) keeps the other targets.

Before any work, ``earlier_targets`` reads the earlier build in DIR and re-checks the sha256 of every file of the
targets that are not rebuilt; after the export, ``carry_into`` checks the new reference is byte-identical to the
earlier one (else the kept artifacts would come from another model), copies the kept targets (and whatever else the
folder holds: validations/, bundles/) into the staging folder, re-checks them there and merges their records
into the new manifest. Anything that does not fit is a refusal with the way out, and nothing in DIR changes.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import EdgekitError, OutputDirError
from edgekit.manifest import MANIFEST, Manifest, verify_files
from edgekit.types import reference_files
from edgekit.readback import load_build, verify_build

REWRITTEN = (MANIFEST, "report.md", "report.html", "reference")  # every build writes these itself


@dataclass
class Earlier:
    """The earlier build in the output folder and the targets of it that this build keeps."""

    root: Path
    manifest: Manifest
    kept: tuple[str, ...]


def _refuse(out: Path, why: str, rebuilt: tuple[str, ...]) -> OutputDirError:
    only = " ".join(f"--target {t}" for t in rebuilt)
    return OutputDirError(f"{out} holds an earlier build whose other targets would be lost by `{only}`, and they cannot "
                          f"be kept: {why}; rebuild every target (omit --target) or choose another -o")


def earlier_targets(out: Path, rebuilt: tuple[str, ...], partial: bool) -> Earlier | None:
    """The earlier build in ``out`` when this build is ``partial`` (--target) and that build has other targets;
    their files re-checked against their sha256. None when there is nothing to keep."""
    if not partial or not (out / MANIFEST).exists():
        return None
    try:
        manifest = load_build(out)
    except EdgekitError as exc:
        raise _refuse(out, str(exc), rebuilt) from None
    kept = tuple(n for n in manifest.results if n not in rebuilt)
    if not kept:
        return None
    try:
        verify_build(out, manifest, kept)
    except EdgekitError as exc:
        raise _refuse(out, str(exc), rebuilt) from None
    return Earlier(out, manifest, kept)


def check_inputs(earlier: Earlier, inputs: dict[str, object], rebuilt: tuple[str, ...]) -> None:
    """Refuse when the model, weights or validation data differ from the earlier build's (before any work)."""
    for key in ("weights", "validation", "model"):  # weights first: the model fingerprint covers them too
        old, new = earlier.manifest.inputs.get(key), inputs.get(key)
        if old is not None and new is not None and old != new:
            raise _refuse(earlier.root, f"its {key} differs from this build's (inputs.{key} in its manifest)", rebuilt)


def carry_into(staging: Path, manifest: Manifest, earlier: Earlier, rebuilt: tuple[str, ...]) -> None:
    """Copy the kept targets and the folder's other entries into ``staging``, re-check them, merge their records."""
    old_ref, new_ref = reference_files(earlier.manifest.reference), reference_files(manifest.reference)
    if [f.sha256 for f in old_ref] != [f.sha256 for f in new_ref]:
        raise _refuse(earlier.root, "this build's reference/model.onnx differs from the one its targets were built "
                      "from (another model, export setting or library version)", rebuilt)
    for entry in sorted(earlier.root.iterdir()):
        if entry.name in REWRITTEN or entry.name in rebuilt or (staging / entry.name).exists():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, staging / entry.name, symlinks=True)
        elif entry.is_file() and not entry.is_symlink():
            shutil.copy2(entry, staging / entry.name)
    for name in earlier.kept:
        r = earlier.manifest.results[name]
        if r.artifact is not None:
            verify_files(staging, list(r.artifact.files))  # re-vouched where they now are
    results = {n: earlier.manifest.results[n] for n in earlier.manifest.results if n in earlier.kept}
    results.update(manifest.results)
    manifest.results = results
    manifest.profiles = {**{n: earlier.manifest.profiles[n] for n in earlier.kept if n in earlier.manifest.profiles},
                         **manifest.profiles}
    old_inputs = earlier.manifest.inputs
    manifest.inputs = {**{k: v for k, v in old_inputs.items() if k != "profiles"}, **manifest.inputs,
                       "profiles": {**old_inputs.get("profiles", {}), **manifest.inputs.get("profiles", {})}}
    cfg_targets = manifest.config.setdefault("targets", {})
    cfg_targets["use"] = list(dict.fromkeys([*earlier.manifest.config.get("targets", {}).get("use", []),
                                            *cfg_targets.get("use", [])]))

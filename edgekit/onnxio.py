"""Reading and writing ONNX files that may keep their weights in an external data file (``model.onnx.data``):
the form every model over protobuf's 2 GB limit must take, and the form a smaller one takes when asked."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from edgekit.types import ArtifactFile

PROTOBUF_LIMIT = 2 << 30  # a serialized ModelProto cannot exceed 2 GiB
# Above this many bytes of tensors a model is written with external data: under the limit with room for the graph.
EXTERNAL_DATA_BYTES = 1800 << 20
SMALL_TENSOR_BYTES = 1024  # tensors under this stay inside the .onnx file (shapes, scalars)


def _tensors(graph: Any) -> Iterator[Any]:
    """Every initializer and tensor attribute of ``graph`` and its subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for g in attr.graphs:
                yield from _tensors(g)


def tensor_bytes(model: Any) -> int:
    """Bytes of the initializers and Constant tensors held in ``model`` (external ones counted by their length)."""
    total = 0
    for t in _tensors(model.graph):
        if t.data_location == 1:  # EXTERNAL
            total += int({e.key: e.value for e in t.external_data}.get("length", 0) or 0)
        else:
            total += len(t.raw_data) or t.ByteSize()
    return total


def file_bytes(path: Path) -> int:
    """Bytes on disk of the ONNX file at ``path`` and its external data files."""
    return sum(p.stat().st_size for p in (path, *external_files(path)))


def in_memory_ok(path: Path) -> bool:
    """Whether the model at ``path`` can be serialized as one protobuf (what a session from bytes needs)."""
    return file_bytes(path) < PROTOBUF_LIMIT - (64 << 20)


def has_external_data(path: Path) -> bool:
    """Whether the ONNX file at ``path`` keeps any tensor in an external file."""
    return bool(external_files(path))


def external_files(path: Path) -> list[Path]:
    """The external data files the ONNX file at ``path`` names, in order of first use (beside it, by onnx's rule)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    seen: dict[str, None] = {}
    for t in _tensors(model.graph):
        if t.data_location == 1:
            seen.setdefault({e.key: e.value for e in t.external_data}["location"], None)
    return [path.parent / loc for loc in seen]


def load_onnx(path: Path) -> Any:
    """The ONNX model at ``path`` with its external data (if any) loaded into memory."""
    import onnx

    return onnx.load(str(path), load_external_data=True)


def save_onnx(model: Any, path: Path, external: bool | None = None) -> list[Path]:
    """Write ``model`` to ``path``; with external data (one file, ``<name>.data`` beside it) when ``external`` is
    true, or when None and its tensors exceed EXTERNAL_DATA_BYTES. Returns the files written. onnx moves the tensor
    bytes out of ``model`` when it writes external data: do not use ``model`` after this call."""
    import onnx

    if external is None:
        external = tensor_bytes(model) > EXTERNAL_DATA_BYTES
    data = path.parent / f"{path.name}.data"
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    if not external:
        onnx.save_model(model, str(path))
        return [path]
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name,
                    size_threshold=SMALL_TENSOR_BYTES, convert_attribute=False)
    return [path, data] if data.exists() else [path]


def save_like(model: Any, path: Path, source: Path) -> list[Path]:
    """Write ``model``, rewritten from the file ``source``, in that file's form: external data when ``source`` had
    it (or when the model is large enough to need it)."""
    return save_onnx(model, path, external=has_external_data(source) or None)


def model_files(path: Path, root: Path) -> tuple[ArtifactFile, ...]:
    """The ONNX file at ``path`` and each external data file it names, with sha256 and size, relative to ``root``."""
    return (ArtifactFile.of(path, root), *(ArtifactFile.of(p, root) for p in external_files(path)))


def move_model(src: Path, dst: Path) -> None:
    """Move the ONNX file ``src`` to ``dst`` and its external data files beside it, under the names the model
    records for them."""
    from edgekit.fsutil import atomic_move

    for data in external_files(src):
        atomic_move(data, dst.parent / data.name)
    atomic_move(src, dst)

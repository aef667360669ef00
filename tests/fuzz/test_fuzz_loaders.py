"""Fuzz the byte-level loaders: an ONNX model source, safetensors and torch state_dict weights, with flipped,
truncated and spliced bytes and well-formed files that lie (unknown opset, undefined element type, huge shapes).
Every outcome is a success or an exit-2 EdgekitError naming the user's file, never another exception, and an ONNX
source is never blamed as "the exported model"."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgekit.config import ModelConfig
from edgekit.errors import EdgekitError
from edgekit.model import load_model
from edgekit.weights import read_state_dict
from fuzzing import outcome, scaled


def _onnx_bytes(opset: int = 17, elem_type: int = 1, dim: int = 4) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(dim * 3, dtype=np.float32).reshape(dim, 3), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y0"]), helper.make_node("Relu", ["y0"], ["y"])], "g",
        [helper.make_tensor_value_info("x", elem_type, ["batch", dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model.SerializeToString()


GOOD_ONNX = _onnx_bytes()


def _safetensors_bytes() -> bytes:
    import torch
    from safetensors.torch import save

    return save({"fc.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4), "fc.bias": torch.zeros(3)})


def _pt_bytes() -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save({"fc.weight": torch.ones(3, 4), "fc.bias": torch.zeros(3)}, buf)
    return buf.getvalue()


GOOD_ST, GOOD_PT = _safetensors_bytes(), _pt_bytes()

mutations = st.lists(st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("zero"), st.integers(0, 10**6), st.integers(1, 64)),
), min_size=1, max_size=6)


def mutate(data: bytes, edits) -> bytes:
    b = bytearray(data)
    for kind, at, arg in edits:
        if not b:
            break
        at %= len(b)
        if kind == "flip":
            b[at] ^= arg
        elif kind == "truncate":
            del b[at:]
        elif kind == "insert":
            b[at:at] = bytes([arg])
        else:
            b[at:at + arg] = bytes(min(arg, len(b) - at))
    return bytes(b)


def _check_onnx(path: Path) -> None:
    result = outcome(load_model, ModelConfig(source=str(path)))
    if isinstance(result, EdgekitError):
        assert str(path) in str(result), f"the message does not name the user's file: {result}"
        assert "exported model" not in str(result), result


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz_loaders")


@scaled(60)
@given(edits=mutations)
def test_damaged_onnx_source(edits, work):
    path = work / "model.onnx"
    path.write_bytes(mutate(GOOD_ONNX, edits))
    _check_onnx(path)


@scaled(20)
@given(opset=st.one_of(st.integers(0, 30), st.sampled_from([99, 1000, 2**31 - 1])),
       elem_type=st.one_of(st.integers(0, 25), st.sampled_from([99, 2**31 - 1])), dim=st.sampled_from([0, 1, 4]))
def test_onnx_that_lies(opset, elem_type, dim, work):
    path = work / "lies.onnx"
    path.write_bytes(_onnx_bytes(opset, elem_type, dim))
    _check_onnx(path)


@scaled(60)
@given(edits=mutations, which=st.sampled_from(["st", "pt"]))
def test_damaged_weights(edits, which, work):
    path = work / ("w.safetensors" if which == "st" else "w.pt")
    path.write_bytes(mutate(GOOD_ST if which == "st" else GOOD_PT, edits))
    result = outcome(read_state_dict, path)
    if isinstance(result, EdgekitError):
        assert str(path) in str(result), result


@scaled(30)
@given(header=st.dictionaries(st.sampled_from(["fc.weight", "fc.bias", "__metadata__", "x"]),
                              st.one_of(st.fixed_dictionaries({"dtype": st.sampled_from(["F32", "F64", "I8", "BOOL", "Q9", ""]),
                                                               "shape": st.lists(st.integers(-2, 2**40), max_size=4),
                                                               "data_offsets": st.lists(st.integers(-2, 2**40), max_size=3)}),
                                        st.integers(), st.text(max_size=4)), max_size=3),
       body=st.binary(max_size=64))
def test_safetensors_header_that_lies(header, body, work):
    import json
    import struct

    text = json.dumps(header).encode()
    path = work / "lies.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)
    result = outcome(read_state_dict, path)
    if isinstance(result, EdgekitError):
        assert str(path) in str(result), result

"""Shared fixtures: a sandbox folder with a tiny model, its weights, good data and every kind of bad file; the
builds that several test files only read, made once per session; the ``slow`` marker on build-level tests."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the command line sets it (edgekit/cli/main.py), before torch

import importlib.util
import fcntl
import json
import shutil
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pytest

from edgekit.config import DataConfig
from edgekit.data import open_feed
from edgekit.types import TensorSpec

from data_files import make_bad_data

TINY_NET = '''
import torch.nn as nn

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.flat = nn.Flatten()
        self.fc = nn.Linear(8 * 8 * 8, 4)

    def forward(self, x):
        return self.fc(self.flat(self.relu(self.bn(self.conv(x)))))

def build():
    return Tiny()

def broken():
    raise RuntimeError("factory exploded on purpose")

def not_a_module():
    return 42
'''


class Evil:
    """Unpickling this creates a folder: proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _small_onnx(opset: int = 17, elem_type: int = 1, name: str = "x") -> bytes:
    """x @ w for an 8x8 input (the sandbox's shape, flattened), as ONNX bytes."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((64, 4), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Flatten", [name], ["f"]), helper.make_node("MatMul", ["f", "w"], ["logits"])],
                              "g", [helper.make_tensor_value_info(name, elem_type, ["batch", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model.SerializeToString()


def make_sandbox(root: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    (root / "net.py").write_text(TINY_NET)
    (root / "syntax_error.py").write_text("def build(:\n")
    (root / "exits.py").write_text("import sys\nsys.exit(0)\n")  # a script, not a model file
    import importlib.util

    spec = importlib.util.spec_from_file_location("_sandbox_net", root / "net.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    model = mod.build().eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(root / "w.safetensors"))
    torch.save(state, root / "w.pt")
    torch.save({k: v for k, v in state.items() if k != "fc.bias"}, root / "missing_key.pt")
    torch.save({**state, "extra.weight": torch.zeros(2)}, root / "unexpected_key.pt")
    torch.save({**state, "fc.weight": torch.zeros(4, 10)}, root / "wrong_shape.pt")
    torch.save(Evil(str(root / "PWNED")), root / "evil.pt")
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "epoch": 3}, root / "checkpoint.pt")
    torch.save({"model": state, "ema": {k: v.clone() for k, v in state.items()}, "epoch": 3}, root / "ambiguous.pt")
    torch.save({f"module.{k}": v for k, v in state.items()}, root / "ddp.pt")
    torch.save({"model": {"evil": Evil(str(root / "PWNED"))}, "epoch": 3}, root / "evil_checkpoint.pt")
    (root / "corrupt.safetensors").write_bytes(b"\x00garbage" * 10)
    (root / "corrupt.pt").write_bytes(b"not a zip file at all")
    (root / "corrupt.onnx").write_bytes(b"\x08\x07garbage onnx")
    (root / "opset99.onnx").write_bytes(_small_onnx(opset=99))  # well-formed bytes that lie (fuzz regressions)
    (root / "undefined_type.onnx").write_bytes(_small_onnx(elem_type=0, name="x\nline two"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((48, 1, 8, 8)).astype(np.float32)
    np.savez(root / "calib.npz", x=x[:24])
    np.savez(root / "val.npz", x=x[24:], y=rng.integers(0, 4, 24))
    np.savez(root / "single.npz", rng.standard_normal((8, 1, 8, 8)).astype(np.float32))
    nan = x[:8].copy()
    nan[3, 0, 2, 2] = np.nan
    np.savez(root / "nan.npz", x=nan)
    inf = x[:8].copy()
    inf[0, 0, 0, 0] = np.inf
    np.savez(root / "inf.npz", x=inf, y=np.zeros(8, np.int64))
    np.savez(root / "empty.npz", x=np.zeros((0, 1, 8, 8), np.float32))
    np.savez(root / "wrong_shape.npz", x=x[:8, :, :4, :4])
    np.savez(root / "wrong_rank.npz", x=x[:8, 0, 0, :])
    np.savez(root / "wrong_name.npz", image=x[:8], mask=x[:8])
    np.savez(root / "wrong_dtype.npz", x=np.array(["a"] * 8))
    np.savez(root / "no_labels.npz", x=x[:8])
    np.save(root / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (root / "empty_dir").mkdir(exist_ok=True)
    (root / "not_a_dir").write_text("a file where a directory should be")
    (root / "foreign_out").mkdir(exist_ok=True)
    (root / "foreign_out" / "precious.txt").write_text("not edgekit's")
    make_bad_data(root)
    return root


@pytest.fixture(scope="session")
def sandbox_template(tmp_path_factory) -> Path:
    return make_sandbox(tmp_path_factory.mktemp("sandbox_template"))


@pytest.fixture()
def sandbox(sandbox_template, tmp_path) -> Path:
    """A fresh copy per test, so a test that writes cannot disturb another."""
    dst = tmp_path / "sandbox"
    shutil.copytree(sandbox_template, dst)
    return dst


GOOD_CONFIG = """
[model]
source = "net.py:build"
weights = "w.safetensors"
inputs = [ { name = "x", shape = [1, 1, 8, 8], dynamic = { 0 = "batch" } } ]
outputs = ["logits"]
task = "classification"

[calibration]
data = "calib.npz"

[validation]
data = "val.npz"
labels = "y"

[targets]
use = ["ort-fp32", "ort-int8"]
"""


X32_SPECS = (TensorSpec("x", ("batch", 32)),)


def calibration_feed(path: Path, specs: tuple[TensorSpec, ...], **arrays: np.ndarray):
    """``arrays`` saved as the .npz ``path`` and opened as a calibration FeedSource for ``specs``."""
    np.savez(path, **arrays)
    return open_feed(DataConfig(str(path)), specs, "calibration")


@pytest.fixture()
def calib_x32(tmp_path: Path):
    """16 Gaussian samples of one input 'x' of width 32, as a calibration FeedSource."""
    rng = np.random.default_rng(1)
    return calibration_feed(tmp_path / "calib_x32.npz", X32_SPECS, x=rng.standard_normal((16, 32)).astype(np.float32))


# ------------------------------------------------------------------------------------ session builds

ROOT = Path(__file__).resolve().parents[1]

# No build of the suite reads or fills the user's calibration statistics cache (~/.cache/edgekit/calibration): a
# test that means to use one names its folder (tests/test_calibration_cache.py)
os.environ.setdefault("EDGEKIT_CALIBRATION_CACHE", "none")


def _record_golden():
    """tools/record_golden.py as a module: the golden build's CPU flags come from one place."""
    spec = importlib.util.spec_from_file_location("record_golden", ROOT / "tools" / "record_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Built(NamedTuple):
    """A build made once per session: ``root / "out"`` is the output folder. Tests read it, never write into it."""

    root: Path
    code: int
    manifest: dict

    @property
    def out(self) -> Path:
        return self.root / "out"


def _built_once(tmp_path_factory, name: str, make: Callable[[Path], int]) -> Built:
    """``make(root)`` once per test run, even with several xdist workers: the first worker builds under a lock in the
    run's shared temp folder, the others wait for it and read the same folder (tests never write into it)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        root = tmp_path_factory.mktemp(name)
        code = make(root)
    else:
        root = tmp_path_factory.getbasetemp().parent / name
        with open(root.with_name(name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            done = root / "exit_code"
            if not done.exists():
                shutil.rmtree(root, ignore_errors=True)  # a worker that died mid-build left it half-made
                root.mkdir()
                done.write_text(str(make(root)))
            code = int(done.read_text())
    return Built(root, code, json.loads((root / "out" / "manifest.json").read_text()))


@pytest.fixture(scope="session")
def digits_build(tmp_path_factory) -> Built:
    """``edgekit demo`` (every built-in target) with the CPU flags tools/record_golden.py fixes: the build that
    tests/data/golden/digits_manifest.json recorded. Shared by test_golden, test_contract and test_tensorrt."""
    import torch

    from edgekit import hostinfo
    from edgekit.cli import main

    fixed = _record_golden().FIXED_CPU

    def make(root: Path) -> int:
        engine, cpu = torch.backends.quantized.engine, hostinfo.cpu
        hostinfo.cpu = lambda: dict(fixed)  # as record_golden.golden_build does; restored for the other tests
        try:
            code = main(["-q", "demo", "-o", str(root / "out")])
        finally:
            hostinfo.cpu = cpu
        assert torch.backends.quantized.engine == engine, "a build left another quantized engine selected"
        return code

    return _built_once(tmp_path_factory, "digits_build", make)


@pytest.fixture(scope="session")
def good_build(tmp_path_factory) -> Built:
    """A sandbox with GOOD_CONFIG built into ``out`` once per session (the sandbox model, ort-fp32 + ort-int8)."""
    from edgekit.cli import main

    def make(root: Path) -> int:
        make_sandbox(root)
        (root / "cfg.toml").write_text(GOOD_CONFIG)
        return main(["-q", "build", str(root / "cfg.toml"), "-o", str(root / "out")])

    built = _built_once(tmp_path_factory, "good_build", make)
    assert built.code == 0
    return built


@pytest.fixture()
def built_sandbox(good_build, tmp_path) -> Path:
    """A fresh copy of the good_build sandbox, its ``out`` included, for a test that writes."""
    dst = tmp_path / "sandbox"
    shutil.copytree(good_build.root, dst)
    return dst


@pytest.fixture(scope="session", autouse=True)
def _one_onnx_registry_per_opset():
    """torch's dynamo exporter rebuilds its aten -> ONNX function table from onnxscript's sources on every export,
    and re-derives each function's signature from its source: most of a small model's export time. The table
    depends on the opset only, so the tests build it once per opset and hand each export a copy (the functions'
    cached signatures shared). test_golden checks that artifacts stay byte-identical with it."""
    try:
        from torch.onnx._internal.exporter._registration import ONNXRegistry
    except ImportError:  # another torch: exports build their own table, as in production
        yield
        return
    original = ONNXRegistry.__dict__["from_torchlib"]
    tables: dict[tuple, ONNXRegistry] = {}

    def from_torchlib(cls, *args, **kwargs):
        key = (cls, args, tuple(sorted(kwargs.items())))
        if key not in tables:
            tables[key] = original.__func__(cls, *args, **kwargs)
        table = cls()  # a copy per export: a custom_translation_table registered into one cannot leak into the next
        table.__dict__.update(tables[key].__dict__)
        table.functions = {op: list(metas) for op, metas in tables[key].functions.items()}
        return table

    ONNXRegistry.from_torchlib = classmethod(from_torchlib)
    yield
    ONNXRegistry.from_torchlib = original


# ------------------------------------------------------------------------------------------ markers

# A test that uses one of these fixtures reads a real build: it is slow (``pytest -m "not slow"`` skips it).
SLOW_FIXTURES = frozenset({"digits_build", "good_build", "built_sandbox", "built", "compressed", "builds", "digits",
                           "resnet", "layernorm", "demo", "wheel_venv"})
# Files whose tests given a ``sandbox`` build from it in their own bodies.
SLOW_WITH_SANDBOX = frozenset({"test_pipeline.py", "test_compress_run.py", "test_torch_ao.py"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & SLOW_FIXTURES or (item.path.name in SLOW_WITH_SANDBOX and "sandbox" in fixtures):
            item.add_marker(pytest.mark.slow)

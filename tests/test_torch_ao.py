"""torch-fbgemm / torch-qnnpack: real torch.ao builds, artifacts run in a fresh process without the model source."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.backends.torch_ao.artifact import TorchAoRunner
from edgekit.backends.torch_ao.backend import PercentileObserver
from edgekit.backends.torch_ao.common import quantized_engine
from edgekit.backends.torch_ao.recipe import TorchAoRecipe
from edgekit.cli import main
from edgekit.errors import ProfileError
from edgekit.resources import calibration_dir
from edgekit.types import TargetProfile, TensorSpec

MODELS = '''
import torch
from torch import nn


class Block(nn.Module):
    """ResNet basic block: conv-bn-relu, conv-bn, residual add (1x1 conv-bn projection when the shape changes), relu."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.out = nn.ReLU(inplace=True)

    def forward(self, x):
        identity = x if self.down is None else self.down(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.out(self.bn2(self.conv2(y)) + identity)


class ResNetish(nn.Module):
    """ResNet-18 layout (2 basic blocks per stage), narrower by default."""

    def __init__(self, widths=(32, 64, 128, 256), classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            layers += [Block(cin, w, 1 if i == 0 else 2), Block(w, w, 1)]
            cin = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def resnet(widths=(16, 32, 64, 128)):
    torch.manual_seed(0)
    model = ResNetish(widths)
    for m in model.modules():  # trained-looking BatchNorm statistics, so that folding them matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


class Gate(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        if x.mean() > 0:
            return self.scale(x)
        return x


class Odd(nn.Module):
    """Convolutions around an untraceable module and an op with no quantized kernel (cumsum)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.gate = Gate()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 4)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        y = torch.cumsum(self.conv2(self.gate(y)), dim=3) / 8
        return self.fc(torch.flatten(y, 1))


def odd():
    torch.manual_seed(1)
    return Odd()


class Branchy(nn.Module):
    """Its own forward cannot be traced (a branch on a tensor value); its children can."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 8 * 8, 4))

    def forward(self, x):
        y = self.body(x)
        if y.amax() > 1e6:
            y = y / 2
        return self.head(y)


def branchy():
    torch.manual_seed(2)
    return Branchy()


class Sequence(nn.Module):
    """A transformer encoder, then an LSTM: the two kinds of model dynamic quantization is for."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(16, 64)
        layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.lstm = nn.LSTM(64, 64, batch_first=True)
        self.head = nn.Linear(64, 5)

    def forward(self, x):
        y, _ = self.lstm(self.encoder(self.embed(x)))
        return self.head(y[:, -1])


def sequence():
    torch.manual_seed(3)
    return Sequence()


class TinyBert(nn.Module):
    """BERT's integer plumbing: token ids and position ids into nn.Embedding, the int64 attention mask made into an
    additive bias as HF BERT's extended mask is, and mean pooling over the mask; torch.fx traces all of it."""

    def __init__(self, vocab=100, d=32, heads=4, classes=8):
        super().__init__()
        self.heads = heads
        self.embed, self.pos = nn.Embedding(vocab, d), nn.Embedding(16, d)
        self.norm = nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ff1, self.ff2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.head = nn.Linear(d, classes)

    def forward(self, input_ids, attention_mask):
        n, length = input_ids.shape
        x = self.norm(self.embed(input_ids) + self.pos(torch.arange(length).unsqueeze(0)))
        bias = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0

        def split(t):
            return t.reshape(n, length, self.heads, -1).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / 2.0 + bias
        x = x + self.o(torch.matmul(scores.softmax(-1), v).transpose(1, 2).reshape(n, length, -1))
        x = x + self.ff2(torch.relu(self.ff1(x)))
        mask = attention_mask.unsqueeze(-1).to(x.dtype)
        return self.head((x * mask).sum(1) / mask.sum(1).clamp(min=1e-9))


def tinybert():
    torch.manual_seed(4)
    return TinyBert()
'''

CONFIG = """
{export}
[model]
source = "models.py:{factory}"
inputs = [ {{ name = "x", shape = {shape}{dynamic} }} ]

[calibration]
data = "{data}_calib.npz"
method = "{method}"

[validation]
data = "{data}_val.npz"

[targets]
use = {targets}
{extra}
"""

FAST = "[targets.{t}.runtime]\nwarmup = 3\nruns = 20\n"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("torch_ao")
    (root / "models.py").write_text(MODELS)
    rng = np.random.default_rng(0)
    for name, shape in (("img", (40, 3, 8, 8)), ("res", (40, 3, 32, 32)), ("seq", (40, 12, 16))):
        x = rng.standard_normal(shape).astype(np.float32)
        np.savez(root / f"{name}_calib.npz", x=x[:24])
        np.savez(root / f"{name}_val.npz", x=x[24:])
    ids = rng.integers(1, 100, (40, 16))
    mask = (np.arange(16) < rng.integers(3, 17, (40, 1))).astype(np.int64)  # padded sentences of 3..16 tokens
    np.savez(root / "ids_calib.npz", input_ids=ids[:24] * mask[:24], attention_mask=mask[:24])
    np.savez(root / "ids_val.npz", input_ids=ids[24:] * mask[24:], attention_mask=mask[24:])
    return root


def _config(factory: str, shape: list[int], data: str, targets: list[str], *, method: str = "minmax",
            extra: str = "", torchscript_export: bool = False, dynamic: bool = True) -> str:
    return CONFIG.format(
        export='[export]\nexporter = "torchscript"\n' if torchscript_export else "", factory=factory, shape=shape,
        dynamic=', dynamic = { 0 = "batch" }' if dynamic else "", data=data, method=method,
        targets=json.dumps(targets), extra=extra + "".join(FAST.format(t=t) for t in targets),
    )


def _build(root: Path, config: str, out: str, *extra: str) -> tuple[int, dict]:
    (root / f"{out}.toml").write_text(config)
    code = main(["-q", "build", str(root / f"{out}.toml"), "-o", str(root / out), *extra])
    return code, json.loads((root / out / "manifest.json").read_text())


def _worst(manifest: dict, target: str) -> dict:
    return manifest["targets"][target]["metrics"]["vs_torch"]["worst"]


DIGITS = """
[model]
source = "example:digits"
inputs = [ { name = "image", shape = [1, 1, 8, 8], dtype = "float32", dynamic = { 0 = "batch" } } ]
task = "classification"

[calibration]
data = "CAL/calib.npz"
samples = 256
method = "minmax"

[validation]
data = "CAL/val.npz"
labels = "labels"

[targets]
use = USE
"""


@pytest.fixture(scope="module")
def digits(sandbox) -> tuple[int, dict]:
    engine_before = torch.backends.quantized.engine
    config = DIGITS.replace("CAL", str(calibration_dir() / "digits")).replace("USE", '["torch-fbgemm", "torch-qnnpack"]')
    result = _build(sandbox, config, "digits")
    assert torch.backends.quantized.engine == engine_before, "a build left another quantized engine selected"
    return result


@pytest.fixture(scope="module")
def resnet(sandbox) -> tuple[int, dict]:
    return _build(sandbox, _config("resnet", [1, 3, 32, 32], "res", ["torch-fbgemm", "torch-qnnpack"]), "resnet")


# -------------------------------------------------------------------------------------------- digits


def test_digits_int8_accuracy_is_within_half_a_point_of_fp32(digits, sandbox):
    code, m = digits
    fp32 = m["references"]["torch-fp32"]["accuracy"]
    assert code == 0
    assert fp32 > 99.0
    for target in ("torch-fbgemm", "torch-qnnpack"):
        t = m["targets"][target]
        assert t["status"] == "passed", t["reason"]
        assert t["metrics"]["accuracy"] >= fp32 - 0.5, (target, t["metrics"]["accuracy"], fp32)
        assert _worst(m, target)["cosine"] >= 0.999
        assert t["notes"]["stayed_float"] == ["nothing: every compute op runs in INT8"]
        assert t["size"]["ratio_to_fp32"] < 0.3  # int8 weights: a quarter of the FP32 ONNX, plus scales
        assert t["latency"]["threads"] == 2 and t["latency"]["runs"] == 200
        metrics = json.loads((sandbox / "digits" / target / "metrics.json").read_text())
        assert metrics["metrics"]["accuracy"] == t["metrics"]["accuracy"]
    assert m["targets"]["torch-fbgemm"]["notes"]["weights"].startswith("qint8 symmetric per-channel")
    assert m["targets"]["torch-qnnpack"]["notes"]["weights"].startswith("qint8 symmetric per-tensor")


def test_qnnpack_latency_on_x86_is_marked_host_not_target(digits, sandbox):
    _, m = digits
    if torch.backends.cpu.get_cpu_capability() in ("NEON", "SVE256") or os.uname().machine in ("aarch64", "arm64"):
        pytest.skip("on an ARM host qnnpack runs on a device of its kind")
    assert "host, not the target device" in m["targets"]["torch-qnnpack"]["measured_on"]
    assert "not the target" not in m["targets"]["torch-fbgemm"]["measured_on"]
    report = (sandbox / "digits" / "report.md").read_text()
    assert "| torch-qnnpack | passed * |" in report
    assert "host, not the target device" in report


def test_same_config_twice_gives_identical_bytes_whatever_the_target_order(digits, sandbox):
    _, first = digits
    config = DIGITS.replace("CAL", str(calibration_dir() / "digits")).replace("USE", '["torch-qnnpack", "torch-fbgemm"]')
    code, again = _build(sandbox, config, "digits_again", "--no-validate")
    assert code == 0
    for target in ("torch-fbgemm", "torch-qnnpack"):
        assert again["targets"][target]["files"] == first["targets"][target]["files"]
    assert first["targets"]["torch-fbgemm"]["files"][0]["sha256"] != first["targets"]["torch-qnnpack"]["files"][0]["sha256"]


def test_runners_of_both_engines_alive_at_once_keep_their_own_numbers(digits, sandbox):
    spec = (TensorSpec("image", ("batch", 1, 8, 8)),)
    x = np.load(calibration_dir() / "digits" / "val.npz")["image"][:16]
    paths = {t: sandbox / "digits" / t / "model.pt" for t in ("torch-fbgemm", "torch-qnnpack")}
    alone = {}
    for target, path in paths.items():
        runner = TorchAoRunner(path, spec, ("logits",), target.split("-")[1], threads=1)
        alone[target] = runner.run({"image": x})["logits"]
    before = torch.backends.quantized.engine
    runners = {t: TorchAoRunner(p, spec, ("logits",), t.split("-")[1], threads=1) for t, p in paths.items()}
    for _ in range(2):
        for target, runner in runners.items():
            np.testing.assert_array_equal(runner.run({"image": x})["logits"], alone[target])
    assert torch.backends.quantized.engine == before
    assert not np.array_equal(alone["torch-fbgemm"], alone["torch-qnnpack"])  # two engines, two recipes


# -------------------------------------------------------------------------------------------- resnet


def test_resnet_style_cnn_folds_batchnorm_and_quantizes_residual_adds(resnet):
    code, m = resnet
    assert code == 0
    for target in ("torch-fbgemm", "torch-qnnpack"):
        t = m["targets"][target]
        assert t["status"] == "passed", t["reason"]
        assert _worst(m, target)["cosine"] >= 0.99
        assert _worst(m, target)["sqnr_db"] > 20
        assert t["notes"]["stayed_float"] == ["nothing: every compute op runs in INT8"]
        assert t["notes"]["reproducibility"].startswith("reproducible")
        assert t["size"]["ratio_to_fp32"] < 0.3


SUBPROCESS_RUN = textwrap.dedent("""
    import json, sys, zipfile
    import numpy as np
    import torch

    path, data, out = sys.argv[1:4]
    with zipfile.ZipFile(path) as archive:  # the engine is recorded inside the artifact
        meta = json.loads(archive.read("archive/extra/edgekit.json"))
    torch.backends.quantized.engine = meta["engine"]
    model = torch.jit.load(path)
    with torch.inference_mode():
        y = model(torch.from_numpy(np.load(data)["x"]))
    np.save(out, y.numpy())
    print(json.dumps({"engine": meta["engine"], "inputs": meta["inputs"],
                      "foreign": sorted(m for m in sys.modules if m.startswith(("edgekit", "models")))}))
""")


def test_artifact_runs_in_a_fresh_process_without_the_model_source(resnet, sandbox, tmp_path):
    _, m = resnet
    artifact = tmp_path / "model.pt"
    artifact.write_bytes((sandbox / "resnet" / "torch-fbgemm" / "model.pt").read_bytes())
    script = tmp_path / "run.py"
    script.write_text(SUBPROCESS_RUN)
    empty = tmp_path / "empty"
    empty.mkdir()

    proc = subprocess.run([sys.executable, "-I", str(script), str(artifact), str(sandbox / "res_val.npz"), str(tmp_path / "y.npy")],
                          cwd=empty, capture_output=True, text=True, timeout=120, env={"PATH": os.environ.get("PATH", "")})

    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["engine"] == "fbgemm" and info["inputs"][0]["name"] == "x" and info["foreign"] == []
    y = np.load(tmp_path / "y.npy")
    x = np.load(sandbox / "res_val.npz")["x"]
    runner = TorchAoRunner(artifact, (TensorSpec("x", ("batch", 3, 32, 32)),), ("y",), "fbgemm", threads=2)
    np.testing.assert_array_equal(y, runner.run({"x": x})["y"])  # the same numbers as the validator measured
    sys.path.insert(0, str(sandbox))
    try:
        import models  # noqa: PLC0415 - the reference, imported here only
    finally:
        sys.path.remove(str(sandbox))
    with torch.no_grad():
        ref = models.resnet().eval()(torch.from_numpy(x)).numpy()
    cos = np.sum(ref * y, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(y, axis=1))
    assert cos.mean() == pytest.approx(_worst(m, "torch-fbgemm")["cosine"], abs=1e-6)
    assert cos.min() >= 0.99


# ------------------------------------------------------------------------------ dynamic, float fallback


def test_dynamic_mode_quantizes_transformer_encoder_and_lstm(sandbox):
    extra = '[targets.torch-fbgemm]\nrecipe = { mode = "dynamic" }\n'
    config = _config("sequence", [1, 12, 16], "seq", ["torch-fbgemm"], extra=extra, dynamic=False, torchscript_export=True)
    code, m = _build(sandbox, config, "seq")
    t = m["targets"]["torch-fbgemm"]
    assert code == 0, t["reason"]
    assert _worst(m, "torch-fbgemm")["cosine"] >= 0.99
    assert t["notes"]["mode"] == "dynamic" and "calibration" not in t["notes"]
    assert t["notes"]["transformer_rewrite"].startswith("2 nn.TransformerEncoderLayer(s) rewritten")
    assert t["notes"]["artifact"].startswith("TorchScript (torch.jit.script")
    stayed = t["notes"]["stayed_float"]
    assert len(stayed) == 2 and all("scaled_dot_product_attention" in s and "activation x activation" in s for s in stayed)
    assert t["size"]["ratio_to_fp32"] < 0.5


def test_untraceable_module_and_unsupported_op_stay_float_and_are_listed(sandbox):
    config = _config("odd", [1, 3, 8, 8], "img", ["torch-fbgemm"], torchscript_export=True)
    code, m = _build(sandbox, config, "odd")
    t = m["targets"]["torch-fbgemm"]
    assert code == 0, t["reason"]
    assert _worst(m, "torch-fbgemm")["cosine"] >= 0.99
    assert t["notes"]["untraceable"] == ["gate: TraceError: symbolically traced variables cannot be used as inputs to control flow"]
    stayed = "\n".join(t["notes"]["stayed_float"])
    assert "gate.scale (Conv2d): conv2d x1 — inside gate, which torch.fx cannot trace" in stayed
    assert "(model forward): cumsum x1 — torch.ao's fbgemm backend config quantizes no pattern" in stayed
    assert "conv2 " not in stayed and "fc " not in stayed  # the rest is INT8


def test_model_whose_own_forward_is_untraceable_quantizes_its_children(sandbox):
    config = _config("branchy", [1, 3, 8, 8], "img", ["torch-fbgemm"], torchscript_export=True,
                     extra='[targets.torch-fbgemm]\nrecipe = { keep_float = ["head.1"] }\n')
    code, m = _build(sandbox, config, "branchy")
    t = m["targets"]["torch-fbgemm"]
    assert code == 0, t["reason"]
    assert _worst(m, "torch-fbgemm")["cosine"] >= 0.99
    assert t["notes"]["untraceable_forward"][0].startswith("(model): TraceError")
    stayed = "\n".join(t["notes"]["stayed_float"])
    assert "(model forward): amax x1 — in the forward of the model itself, which torch.fx cannot trace" in stayed
    assert "head.1 (Linear): linear x1 — kept float by recipe keep_float (head.1)" in stayed
    assert "body" not in stayed  # conv-bn-relu quantized as its own island


def test_a_build_that_quantized_nothing_says_so(sandbox):
    config = _config("branchy", [1, 3, 8, 8], "img", ["torch-fbgemm"], torchscript_export=True,
                     extra='[targets.torch-fbgemm]\nrecipe = { keep_float = ["body", "head"] }\n')
    code, m = _build(sandbox, config, "nothing")
    t = m["targets"]["torch-fbgemm"]
    # an "INT8" artifact that computes in FP32 fails the INT8 profile's min_int8_fraction gate, naming the count
    assert code == 1 and t["status"] == "failed"
    assert t["reason"] == "torch-fbgemm: 0 of 2 compute layers INT8 (0%) fails min_int8_fraction (>= 0.5)"
    assert t["notes"]["int8_layers"] == {"int8": 0, "total": 2, "fp32": ["body.0 (Conv2d)", "head.1 (Linear)"]}
    assert t["notes"]["warning"].startswith("nothing in this model was quantized: the artifact computes in FP32")
    assert 'recipe = { mode = "dynamic" }' in t["notes"]["warning"]
    assert "warning" not in _build(sandbox, _config("branchy", [1, 3, 8, 8], "img", ["torch-fbgemm"], torchscript_export=True), "something")[1][
        "targets"]["torch-fbgemm"]["notes"]

BERT = """
[model]
source = "models.py:tinybert"
inputs = [ { name = "input_ids", shape = [1, 16], dtype = "int64", dynamic = { 0 = "batch" } },
           { name = "attention_mask", shape = [1, 16], dtype = "int64", dynamic = { 0 = "batch" } } ]

[calibration]
data = "ids_calib.npz"
method = "minmax"

[validation]
data = "ids_val.npz"

[targets]
use = ["torch-fbgemm", "torch-qnnpack"]
"""


def test_int64_ids_and_mask_stay_integer_and_static_int8_builds(sandbox):
    code, m = _build(sandbox, BERT + "".join(FAST.format(t=t) for t in ("torch-fbgemm", "torch-qnnpack")), "bert")

    assert code == 0
    for target in ("torch-fbgemm", "torch-qnnpack"):
        t = m["targets"][target]
        assert t["status"] == "passed", t["reason"]
        assert t["notes"]["mode"] == "static"
        assert _worst(m, target)["cosine"] >= 0.99
        assert t["notes"]["integer_inputs"][0].startswith("(model): input_ids, attention_mask: never quantized")
        stayed = "\n".join(t["notes"]["stayed_float"])
        assert "(model forward): __rsub__ x1 — integer input" in stayed  # the mask made into a bias stays float
        assert "embed (Embedding): embedding x1 — integer input" in stayed
        assert "linear" not in stayed  # q, k, v, o, the feed-forward and the head run in INT8
        assert t["notes"]["reproducibility"].startswith("reproducible")  # the stand-ins left no trace in the artifact
    feed = {k: v for k, v in np.load(sandbox / "ids_val.npz").items()}
    specs = tuple(TensorSpec(k, ("batch", 16), "int64") for k in ("input_ids", "attention_mask"))
    runner = TorchAoRunner(sandbox / "bert" / "torch-fbgemm" / "model.pt", specs, ("y",), "fbgemm", threads=1)
    y = runner.run(feed)["y"]
    sys.path.insert(0, str(sandbox))
    try:
        import models  # noqa: PLC0415 - the reference, imported here only
    finally:
        sys.path.remove(str(sandbox))
    with torch.no_grad():
        ref = models.tinybert().eval()(*(torch.from_numpy(feed[s.name]) for s in specs)).numpy()
    cos = np.sum(ref * y, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(y, axis=1))
    assert y.shape == (16, 8) and cos.min() >= 0.99


def test_onnx_source_makes_torch_targets_unavailable_with_the_reason(resnet, sandbox):
    (sandbox / "res.onnx").write_bytes((sandbox / "resnet" / "reference" / "model.onnx").read_bytes())
    config = _config("x", [1, 3, 32, 32], "res", ["torch-fbgemm"]).replace('"models.py:x"', '"res.onnx"')
    code, m = _build(sandbox, config, "onnx_source", "--no-validate")
    t = m["targets"]["torch-fbgemm"]
    assert code == 0 and t["status"] == "unavailable"
    assert "this build's model is an ONNX file" in t["reason"] and "file.py:factory" in t["reason"]
    assert main(["-q", "build", str(sandbox / "onnx_source.toml"), "-o", str(sandbox / "onnx_strict"), "--strict"]) == 3


# ------------------------------------------------------------------------------------- recipe, observers


def _profile(**recipe) -> TargetProfile:
    return TargetProfile("t", "torch_ao", "int8", "cpu", recipe=recipe)


@pytest.mark.parametrize("recipe, message", [
    ({"engine": "onednn"}, "recipe engine = 'onednn'; expected one of ('fbgemm', 'qnnpack')"),
    ({"mode": "qat"}, "recipe mode = 'qat'; expected one of ('static', 'dynamic')"),
    ({"per_chanel": True}, "unknown key 'per_chanel' in target 't' [recipe]; did you mean 'per_channel'?"),
    ({"granularity": 1}, "unknown key 'granularity' in target 't' [recipe]; valid keys: engine, mode, keep_float, per_channel, "
                           "reduce_range, compute_only"),
    ({"per_channel": "yes"}, "recipe per_channel must be true or false, got 'yes'"),
    ({"reduce_range": True}, "recipe reduce_range = True; expected one of ('activations', 'weights', 'none')"),
    ({"keep_float": "fc"}, "recipe keep_float must be a list of module names"),
])
def test_bad_recipes_are_profile_errors(recipe, message):
    with pytest.raises(ProfileError, match=re.escape(message)):
        TorchAoRecipe.parse(_profile(**recipe))


def test_percentile_observer_ignores_outliers_that_minmax_keeps():
    torch.manual_seed(0)
    x = torch.randn(100_000)
    x[:5] = 1000.0
    observer = PercentileObserver(percentile=99.9)
    observer(x)
    scale, zero_point = observer.calculate_qparams()
    assert 5.5 / 255 < float(scale) < 8.0 / 255  # about the 0.05%..99.95% range of N(0, 1): +-3.3
    assert 100 < int(zero_point) < 155


def test_engine_context_restores_the_previous_engine():
    before = torch.backends.quantized.engine
    with pytest.raises(RuntimeError):
        with quantized_engine("qnnpack"):
            assert torch.backends.quantized.engine == "qnnpack"
            raise RuntimeError("boom")
    assert torch.backends.quantized.engine == before


def test_keep_float_naming_a_module_the_model_lacks_is_a_profile_error(tmp_path):
    from torch import nn

    from edgekit.backends.base import BuildContext, CalibrationSettings
    from edgekit.backends.torch_ao.backend import TorchAoBackend
    from edgekit.types import SourceModel

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    source = SourceModel("m", (TensorSpec("x", ("batch", 4)),), ("y",), module=model)
    ctx = BuildContext(_profile(mode="dynamic", keep_float=["0", "head"]), None, source, tmp_path, tmp_path, None, CalibrationSettings())
    with pytest.raises(ProfileError, match=re.escape("recipe keep_float names ['head'], which the model does not have")):
        TorchAoBackend().build(ctx)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------- clamps after a layer


class _Relu6Net(torch.nn.Module):
    """conv -> BN -> ReLU6 (its only reader: folded into the conv's range), then a ReLU6 that is not a layer's only
    reader (it stays, on a channels-last qnnpack tensor), then a conv. Two BN channels sit far outside [0, 6] (always
    clamped): quantized before the clamp, their range leaves the other channels a few levels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.bn.bias.data[:2] = torch.tensor([-1000.0, 1000.0])
        self.act = torch.nn.ReLU6()
        self.mid = torch.nn.Conv2d(8, 8, 1)
        self.out = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.mid(self.act(self.bn(self.conv(x))))
        return self.out(torch.nn.functional.relu6(y) + y)


@pytest.mark.parametrize("engine", ["fbgemm", "qnnpack"])
def test_relu6_after_a_layer_is_folded_into_its_range_and_qnnpack_clamps_keep_their_order(engine):
    from edgekit.backends.base import CalibrationSettings
    from edgekit.backends.torch_ao.backend import quantize_static

    model = _Relu6Net().eval()
    x = torch.randn(32, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
    with quantized_engine(engine):
        q, _ = quantize_static(model, engine, iter([(x[:16],)]), (x[:2],), CalibrationSettings(method="minmax"), ())
        with torch.no_grad():
            out = q(x)
    cos = torch.nn.functional.cosine_similarity(out.flatten(1), ref.flatten(1)).mean()
    assert float(cos) > 0.999  # without the fold 0.69 (fbgemm): the ReLU6 sees 0 or 6 only; qnnpack 0.58: its clamp scrambles channels-last; 0.988 with the conv's input observer clamped too

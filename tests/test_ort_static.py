"""The static INT8 recipe's additions (edgekit/backends/ort_static.py): MSE activation ranges, 8-bit weights where
ONNX Runtime's kernels are exact, the "auto" choice of FP32 input layers, and FP32 for attention-mask fill values.
Every artifact here is run on ORT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.backends.base import CalibrationSettings
from edgekit.backends.onnx.qdq import QdqSettings, quantize_static_qdq
from edgekit.backends.ort.recipe import OrtRecipe
from edgekit.backends.onnx.qdq_ranges import best_range
from edgekit.errors import ProfileError
from edgekit.types import TargetProfile, TensorSpec

from conftest import calibration_feed


def _fake_quant_mse(x: np.ndarray, lo: float, hi: float, levels: int = 255) -> float:
    step = (hi - lo) / levels
    q = np.clip(np.round((x - lo) / step), 0, levels) * step + lo
    return float(np.mean((q - x) ** 2))


def test_best_range_beats_min_max_on_a_long_tail():
    rng = np.random.default_rng(0)
    x = np.exp(1.5 * rng.standard_normal(200_000)) - 1  # log-normal: min/max set by a few far-out values
    lo, hi = float(x.min()), float(x.max())
    hist = np.histogram(x, bins=2048, range=(lo, hi))[0].astype(np.float64)
    a, b = best_range(hist, lo, hi, 255, symmetric=False)
    assert lo <= a <= 0.0 <= b < 0.9 * hi
    assert _fake_quant_mse(x, a, b) < 0.8 * _fake_quant_mse(x, lo, hi)


def test_best_range_symmetric_is_centred_and_keeps_a_tight_range():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, 100_000)  # nothing to clip: the best symmetric range is about the data's
    amax = float(np.abs(x).max())
    hist = np.histogram(np.abs(x), bins=2048, range=(0.0, amax))[0].astype(np.float64)
    a, b = best_range(hist, 0.0, amax, 254, symmetric=True)
    assert a == -b
    assert 0.97 * amax <= b <= amax


def _session_outputs(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def _sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - got).astype(np.float64) ** 2)))


def _tail_model(path: Path, batch: int | str = 1) -> None:
    """x -> MatMul -> Relu -> MatMul -> y; fed inputs with rare outliers, so every min/max is set by a few values."""
    rng = np.random.default_rng(5)
    w1 = numpy_helper.from_array((rng.standard_normal((32, 256)) / np.sqrt(32)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((256, 16)) / 16).astype(np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
        helper.make_node("Relu", ["h"], ["e"], name="relu"),
        helper.make_node("MatMul", ["e", "w2"], ["y"], name="second"),
    ]
    graph = helper.make_graph(nodes, "tail", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 16])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _with_outliers(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_t(2, size=(n, 32)).astype(np.float32)  # heavy tails: min/max set by rare values


def test_mse_ranges_land_in_the_artifact_and_it_runs(tmp_path):
    specs = (TensorSpec("x", (1, 32)),)
    rng = np.random.default_rng(6)
    calib = calibration_feed(tmp_path / "c.npz", specs, x=_with_outliers(rng, 64))
    model = tmp_path / "m.onnx"
    _tail_model(model)
    held_out = _with_outliers(rng, 32)
    ref = np.concatenate([_session_outputs(model, {"x": x[None]}) for x in held_out])
    scale, sqnr = {}, {}
    for method in ("minmax", "mse"):
        out = tmp_path / f"{method}.onnx"
        notes = quantize_static_qdq(model, out, calib, specs, CalibrationSettings(method=method, samples=64),
                                    QdqSettings())
        inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer}
        scale[method] = {k: float(v) for k, v in inits.items() if k.endswith("_scale") and v.ndim == 0}
        got = np.concatenate([_session_outputs(out, {"x": x[None]}) for x in held_out])
        sqnr[method] = _sqnr_db(ref, got)
    assert "narrowed" in notes["calibration"]["ranges"]
    # some activation's far tail is clipped: a finer step than min/max, and none coarser ...
    ratios = {k: scale["mse"][k] / v for k, v in scale["minmax"].items() if k in scale["mse"]}
    assert len(ratios) >= 3 and min(ratios.values()) < 0.99 and max(ratios.values()) <= 1.0 + 1e-6, ratios
    # ... and the artifact stays as accurate (this toy's error is dominated by the 7-bit weights, not the ranges)
    assert sqnr["mse"] > 15.0 and sqnr["mse"] > sqnr["minmax"] - 1.0, sqnr


def _cnn(path: Path, pool: bool) -> None:
    """image -> stem Conv -> Relu [-> MaxPool] -> depthwise Conv -> Relu -> pointwise Conv -> y."""
    rng = np.random.default_rng(7)
    inits = [
        numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w_stem"),
        numpy_helper.from_array((rng.standard_normal((8, 1, 3, 3)) * 0.3).astype(np.float32), "w_dw"),
        numpy_helper.from_array((rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float32), "w_pw"),
    ]
    nodes = [helper.make_node("Conv", ["image", "w_stem"], ["a"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu")]
    if pool:
        nodes.append(helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]))
    nodes += [helper.make_node("Conv", ["p" if pool else "r", "w_dw"], ["d"], name="dw", group=8, pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["d"], ["dr"], name="relu2"),
              helper.make_node("Conv", ["dr", "w_pw"], ["y"], name="pw")]
    side = 8 if pool else 16
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, side, side])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _weight_codes(graph, conv_name: str) -> np.ndarray | None:
    """The integer codes a quantized Conv's weight is stored as (None when the Conv reads an FP32 weight)."""
    producers = {o: n for n in graph.node for o in n.output}
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    conv = next(n for n in graph.node if n.name == conv_name)
    dq = producers.get(conv.input[1])
    return None if dq is None else inits[dq.input[0]]


@pytest.mark.parametrize("pool", [True, False])
def test_reduce_range_keeps_8_bits_where_the_kernel_is_exact_and_auto_stem(tmp_path, pool):
    specs = (TensorSpec("image", (1, 3, 16, 16)),)
    rng = np.random.default_rng(8)
    calib = calibration_feed(tmp_path / "c.npz", specs, image=rng.standard_normal((16, 3, 16, 16)).astype(np.float32))
    model, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    _cnn(model, pool)
    notes = quantize_static_qdq(model, out, calib, specs, CalibrationSettings(samples=16),
                                QdqSettings(reduce_range=True, fp32_input_layers="auto"))
    graph = onnx.load(str(out)).graph
    stem, dw, pw = (_weight_codes(graph, n) for n in ("stem", "dw", "pw"))
    assert int(np.abs(pw.astype(np.int32)).max()) <= 64  # 7-bit: the u8 x s8 GEMM would saturate with 8
    assert dw.dtype == np.int8 and int(np.abs(dw.astype(np.int32)).max()) == 127  # depthwise: exact kernel, 8 bits
    if pool:  # ORT would run the pool after an FP32 stem in FP32: the stem is quantized, uint8 weights, 8 bits
        assert stem.dtype == np.uint8 and int(stem.max()) - int(stem.min()) > 200
        assert "a pooling op follows the stem" in notes["fp32_input_layers"]
    else:
        assert stem is None and "kept FP32: stem" in notes["fp32_input_layers"]
    held_out = rng.standard_normal((8, 3, 16, 16)).astype(np.float32)
    ref = np.concatenate([_session_outputs(model, {"image": x[None]}) for x in held_out]).reshape(8, -1)
    got = np.concatenate([_session_outputs(out, {"image": x[None]}) for x in held_out]).reshape(8, -1)
    cosine = np.sum(ref * got, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    assert float(cosine.min()) > 0.99


def test_fp32_input_layers_rejects_other_values():
    profile = TargetProfile("t", "ort", "int8", "cpu", recipe={"mode": "static", "fp32_input_layers": "sometimes"})
    with pytest.raises(ProfileError, match="fp32_input_layers"):
        OrtRecipe.parse(profile)


def _masked_attention(path: Path) -> None:
    """x [1, 16, 8], keep [1, 16] (1 = token, 0 = padding) -> scores x Wq (x Wk)^T + where(keep, 0, finfo.min)
    -> Softmax -> @ x Wv -> y: the additive key mask transformers export."""
    rng = np.random.default_rng(11)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 8)) / np.sqrt(8)).astype(np.float32), n) for n in ("wq", "wk", "wv")]
    inits += [numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
              numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32), "fill"),
              numpy_helper.from_array(np.array([1, 1, 16], np.int64), "mask_shape")]
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="v_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1], name="k_t"),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),
        helper.make_node("Cast", ["keep"], ["keep_bool"], to=TensorProto.BOOL, name="cast"),
        helper.make_node("Reshape", ["keep_bool", "mask_shape"], ["keep_3d"], name="mask_reshape"),
        helper.make_node("Where", ["keep_3d", "zero", "fill"], ["mask"], name="mask"),
        helper.make_node("Add", ["scores", "mask"], ["masked"], name="add_mask"),
        helper.make_node("Softmax", ["masked"], ["probs"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["probs", "v"], ["y"], name="pv"),
    ]
    graph = helper.make_graph(nodes, "masked_attention",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8]),
                               helper.make_tensor_value_info("keep", TensorProto.INT64, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _padded(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((n, 16, 8)).astype(np.float32)
    keep = np.zeros((n, 16), np.int64)
    for i, length in enumerate(rng.integers(3, 12, n)):
        keep[i, :length] = 1  # most positions are padding, as in sentences padded to a fixed length
    return x, keep


@pytest.mark.parametrize("method", ["minmax", "mse"])
def test_attention_mask_fill_values_stay_fp32(tmp_path, method):
    specs = (TensorSpec("x", (1, 16, 8)), TensorSpec("keep", (1, 16), "int64"))
    rng = np.random.default_rng(12)
    x, keep = _padded(rng, 48)
    calib = calibration_feed(tmp_path / "c.npz", specs, x=x, keep=keep)
    model, out = tmp_path / "attn.onnx", tmp_path / "attn_int8.onnx"
    _masked_attention(model)
    notes = quantize_static_qdq(model, out, calib, specs, CalibrationSettings(method=method, samples=48), QdqSettings())
    # the mask and the masked scores reach -3.4e38: both are named, and no Q/DQ pair touches them
    assert notes["fill_values"].startswith("2 tensor(s) reach |x| >= 10000"), notes["fill_values"]
    assert "mask" in notes["fill_values"] and "masked" in notes["fill_values"]
    quantized = {n.input[0] for n in onnx.load(str(out)).graph.node if n.op_type == "QuantizeLinear"}
    assert not quantized & {"mask", "masked"} and {"x", "probs"} <= quantized, quantized
    # the rest is INT8 and the artifact stays close to FP32 (quantizing the masked scores would flatten the softmax)
    hx, hkeep = _padded(rng, 16)
    ref = np.stack([_session_outputs(model, {"x": a[None], "keep": k[None]})[0] for a, k in zip(hx, hkeep)])
    got = np.stack([_session_outputs(out, {"x": a[None], "keep": k[None]})[0] for a, k in zip(hx, hkeep)])
    assert _sqnr_db(ref, got) > 25.0, _sqnr_db(ref, got)


def test_handing_edgekit_ranges_to_ort_gives_the_artifact_ort_calibration_gives(tmp_path, monkeypatch):
    """edgekit's own min/max pass, written as ORT's calibration cache, replaces ORT's calibration pass: same scales
    and zero points as when ORT calibrates (as it still does on onnxruntime builds without calibration_cache_path)."""
    import inspect

    import edgekit.backends.onnx.qdq as ort_backend

    specs = (TensorSpec("x", (1, 32)),)
    calib = calibration_feed(tmp_path / "c.npz", specs, x=_with_outliers(np.random.default_rng(8), 40))
    model = tmp_path / "m.onnx"
    _tail_model(model)

    def build(out: Path) -> tuple[dict, dict]:
        notes = quantize_static_qdq(model, out, calib, specs, CalibrationSettings(method="minmax", samples=40),
                                    QdqSettings())
        g = onnx.load(str(out)).graph
        inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        return notes, {n.input[0]: (float(inits[n.input[1]]), int(inits[n.input[2]])) for n in g.node if n.op_type == "QuantizeLinear"}

    handed, ours = build(tmp_path / "handed.onnx")

    class NoCacheParameter:  # an onnxruntime whose quantize_static has no calibration_cache_path
        @staticmethod
        def signature(fn):
            return inspect.Signature()

    monkeypatch.setattr(ort_backend, "inspect", NoCacheParameter)
    calibrated, theirs = build(tmp_path / "calibrated.onnx")
    assert handed["calibration"]["ort_pass"].startswith("skipped") and calibrated["calibration"]["ort_pass"] == "ONNX Runtime's calibrator"
    assert handed["calibration"]["samples"] == calibrated["calibration"]["samples"] == 40
    assert len(ours) >= 3 and ours.keys() == theirs.keys()
    for t in ours:
        assert ours[t][1] == theirs[t][1] and abs(ours[t][0] / theirs[t][0] - 1) < 1e-6, (t, ours[t], theirs[t])


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_streaming_histograms_give_ort_one_shot_ranges(tmp_path, monkeypatch, method):
    """Percentile and entropy ranges come from ONNX Runtime's HistogramCollector fed one batch at a time (memory that
    does not grow with the samples) instead of ORT's calibrator, which holds every batch until the end: the
    histograms are ORT's one-shot histograms, so every scale is ORT's."""
    import inspect

    import edgekit.backends.onnx.qdq as qdq_module

    specs = (TensorSpec("x", ("batch", 32)),)
    rng = np.random.default_rng(21)
    calib = calibration_feed(tmp_path / "c.npz", specs, x=_with_outliers(rng, 96))
    model = tmp_path / "m.onnx"
    _tail_model(model, batch="batch")
    settings = CalibrationSettings(method=method, samples=96, batch_size=8)  # 12 batches: the histograms merge

    def build(out: Path) -> tuple[dict, dict]:
        notes = quantize_static_qdq(model, out, calib, specs, settings, QdqSettings())
        g = onnx.load(str(out)).graph
        inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        return notes, {n.input[0]: float(inits[n.input[1]]) for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] != "w"}

    streamed, ours = build(tmp_path / "streamed.onnx")

    class NoCacheParameter:  # ORT's own calibrator, as on onnxruntime builds without calibration_cache_path
        @staticmethod
        def signature(fn):
            return inspect.Signature()

    monkeypatch.setattr(qdq_module, "inspect", NoCacheParameter)
    one_shot, theirs = build(tmp_path / "one_shot.onnx")
    assert streamed["calibration"]["ort_pass"] == f"skipped: edgekit's streaming {method} histograms handed over"
    assert one_shot["calibration"]["ort_pass"] == "ONNX Runtime's calibrator"
    assert len(theirs) >= 3 and set(theirs) <= set(ours)
    for t, scale in theirs.items():  # the same histograms, summed batch by batch: the same scales, bit for bit
        assert ours[t] == scale, (t, ours[t], scale)


def _shared_reader_model(path: Path) -> None:
    """Tensors quantized for a MatMul that also have an FP32 reader: x read by 'tanh', t (its output) read by 'gate',
    and r (a Relu output, which ONNX Runtime may fold into the Q after it) read by 'neg'."""
    rng = np.random.default_rng(8)
    inits = [numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name)
             for name, shape in (("w1", (32, 64)), ("w2", (32, 16)), ("w3", (64, 16)))]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
        helper.make_node("Tanh", ["x"], ["t"], name="tanh"),
        helper.make_node("MatMul", ["t", "w2"], ["y"], name="second"),
        helper.make_node("Sigmoid", ["t"], ["z"], name="gate"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w3"], ["y3"], name="third"),
        helper.make_node("Neg", ["r"], ["n"], name="neg"),
    ]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, width])
               for name, width in (("y", 16), ("z", 32), ("y3", 16), ("n", 64))]
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_fp32_nodes_read_the_fp32_tensor_not_its_qdq_copy(tmp_path, monkeypatch):
    """A tensor is quantized once for all its readers; a node kept FP32 reads what it read before quantization. Its
    output is then closer to FP32 than with ONNX Runtime's shared Q/DQ copy; a reader of a Relu output stays
    correct whether or not the quantizer folded the Relu into its Q."""
    from edgekit.backends.onnx import qdq

    specs = (TensorSpec("x", (1, 32)),)
    rng = np.random.default_rng(9)
    calib = calibration_feed(tmp_path / "c.npz", specs, x=(2 * rng.standard_normal((32, 32))).astype(np.float32))
    model = tmp_path / "m.onnx"
    _shared_reader_model(model)
    held_out = (2 * rng.standard_normal((16, 32))).astype(np.float32)

    def outputs(path: Path) -> list[np.ndarray]:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        runs = [sess.run(None, {"x": x[None]}) for x in held_out]
        return [np.concatenate(col) for col in zip(*runs)]

    ref = outputs(model)
    built = {}
    for rewire in (True, False):
        if not rewire:
            monkeypatch.setattr(qdq, "fp32_nodes_read_fp32", lambda *args: 0)
        out = tmp_path / f"rewire_{rewire}.onnx"
        notes = quantize_static_qdq(model, out, calib, specs, CalibrationSettings(samples=32), QdqSettings(),
                                    exclude_nodes=("tanh", "gate", "neg"))
        built[rewire] = (onnx.load(str(out)).graph, outputs(out), notes)

    graph, got, notes = built[True]
    gate = next(n for n in graph.node if n.name == "gate")
    assert gate.input[0] == "t" and "read the FP32 tensor" in notes["fp32_nodes"]
    assert "fp32_nodes" not in built[False][2]
    z_err = {k: float(np.abs(v[1][1] - ref[1]).max()) for k, v in built.items()}
    assert z_err[True] < 1e-6 < 1e-3 < z_err[False], z_err  # 'tanh' reads x, 'gate' t, exactly: FP32's output
    n = got[3]
    assert n.max() <= 0.0 and np.abs(n - ref[3]).max() < 0.05 * np.abs(ref[3]).max()  # -relu(h): the Relu was kept
    np.testing.assert_array_equal(got[2], built[False][1][2])  # 'third', as before: no FP32 node on its path


def _optimized_pool_reads(path: Path, tmp: Path) -> str:
    """The op type producing the MaxPool's input once ONNX Runtime has optimized the graph (its own session)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(str(tmp / "optimized.onnx")).graph
    producer = {o: n for n in graph.node for o in n.output}
    pool = next(n for n in graph.node if n.op_type.endswith("MaxPool"))
    return producer[pool.input[0]].op_type if pool.input[0] in producer else "(graph input)"


def test_a_pool_after_an_fp32_stem_pools_the_fp32_output_with_the_same_numbers(tmp_path, monkeypatch):
    """ONNX Runtime runs a MaxPool between the Q/DQ pair of an FP32 layer's output as a uint8 pool in NCHW (the
    ResNet-18 stem's: 2.75 ms where the FP32 one takes a fraction); the rewrite pools the FP32 output and quantizes
    after, bit for bit the same outputs."""
    from edgekit.backends.onnx import fp32_pools, qdq

    specs = (TensorSpec("image", (1, 3, 16, 16)),)
    rng = np.random.default_rng(8)
    calib = calibration_feed(tmp_path / "c.npz", specs, image=rng.standard_normal((16, 3, 16, 16)).astype(np.float32))
    model, out, plain = tmp_path / "m.onnx", tmp_path / "q.onnx", tmp_path / "plain.onnx"
    _cnn(model, pool=True)
    settings, keep_stem = CalibrationSettings(samples=16), QdqSettings(fp32_input_layers=True)
    notes = quantize_static_qdq(model, out, calib, specs, settings, keep_stem)
    assert "1 MaxPool(s) after an FP32 layer" in notes["fp32_pools"]
    with monkeypatch.context() as m:  # the same build without the rewrite
        m.setattr(qdq, "pool_fp32_outputs", lambda graph: 0)
        quantize_static_qdq(model, plain, calib, specs, settings, keep_stem)
    graph = onnx.load(str(out)).graph
    producer = {o: n for n in graph.node for o in n.output}
    pool = next(n for n in graph.node if n.op_type == "MaxPool")
    assert producer[pool.input[0]].op_type == "Relu"  # the stem's FP32 output, no Q/DQ pair
    relu = next(n for n in graph.node if pool.output[0] in n.input)  # between the pool and its Q: no propagation
    assert relu.op_type == "Relu" and [n.op_type for n in graph.node if relu.output[0] in n.input] == ["QuantizeLinear"]
    for x in rng.standard_normal((4, 3, 16, 16)).astype(np.float32):
        np.testing.assert_array_equal(_session_outputs(out, {"image": x[None]}), _session_outputs(plain, {"image": x[None]}))
    assert _optimized_pool_reads(plain, tmp_path) == "QuantizeLinear"  # ORT's uint8 pool
    assert _optimized_pool_reads(out, tmp_path) != "QuantizeLinear"  # an FP32 pool
    # a quantized stem is left alone: its pool runs fused with it (QLinearConv -> uint8 pool)
    quantize_static_qdq(model, plain, calib, specs, settings, QdqSettings(fp32_input_layers=False))
    assert fp32_pools.pool_fp32_outputs(onnx.load(str(plain)).graph) == 0


def test_keeping_a_quantized_stem_fp32_pools_its_fp32_output_with_the_same_numbers(tmp_path, monkeypatch):
    """`edgekit debug`'s keep-FP32 copy of an artifact whose stem is quantized: the pool after the stem sits between
    the stem output's Q/DQ pair; the copy pools the FP32 output instead (its cost is then what a build would pay)."""
    from edgekit.debug import keep
    from edgekit.debug.layers import Graphs, find_layers

    specs = (TensorSpec("image", (1, 3, 16, 16)),)
    rng = np.random.default_rng(8)
    calib = calibration_feed(tmp_path / "c.npz", specs, image=rng.standard_normal((16, 3, 16, 16)).astype(np.float32))
    model, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    _cnn(model, pool=True)
    quantize_static_qdq(model, out, calib, specs, CalibrationSettings(samples=16), QdqSettings(fp32_input_layers=False))
    graphs = Graphs(onnx.load(str(model)), onnx.load(str(out)))
    stem = [x for x in find_layers(graphs) if x.node == "stem"]
    (tmp_path / "kept.onnx").write_bytes(keep.keep_fp32(graphs, stem))
    with monkeypatch.context() as m:
        m.setattr(keep, "pool_fp32_outputs", lambda graph: 0)
        (tmp_path / "plain.onnx").write_bytes(keep.keep_fp32(graphs, stem))
    kept = onnx.load(str(tmp_path / "kept.onnx")).graph
    producer = {o: n for n in kept.node for o in n.output}
    pool = next(n for n in kept.node if n.op_type == "MaxPool")
    assert producer[pool.input[0]].name == "stem"  # past the Q/DQ pair
    for x in rng.standard_normal((4, 3, 16, 16)).astype(np.float32):
        np.testing.assert_array_equal(_session_outputs(tmp_path / "kept.onnx", {"image": x[None]}),
                                      _session_outputs(tmp_path / "plain.onnx", {"image": x[None]}))
    assert _optimized_pool_reads(tmp_path / "plain.onnx", tmp_path) == "QuantizeLinear"
    assert _optimized_pool_reads(tmp_path / "kept.onnx", tmp_path) != "QuantizeLinear"

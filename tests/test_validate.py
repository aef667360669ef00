"""The validator's parts: interleaved latency, the one status rule, the exit code, typed results round-tripping."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from edgekit.backends.base import Runner
from edgekit.console import Console, Progress, Silent
from edgekit.manifest import result_from_dict, result_to_dict
from edgekit.types import GateVerdict, Reference, TensorSpec
from edgekit.validate.latency import Timed, interleaved
from edgekit.validate.verdict import exit_code, target_status


class Sleepy(Runner):
    def __init__(self, seconds, fail_after=None):
        super().__init__((TensorSpec("x", (1,)),), ("y",))
        self.seconds, self.calls, self.fail_after = seconds, 0, fail_after

    def _run(self, feed):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("device lost")
        time.sleep(self.seconds)
        return [feed["x"]]


FEED = {"x": np.zeros(1, np.float32)}


def test_interleaved_times_every_runner_on_the_same_feed():
    slow, fast = Sleepy(0.004), Sleepy(0.001)
    t = interleaved({"slow": Timed(lambda: slow.run(FEED), 2, 10), "fast": Timed(lambda: fast.run(FEED), 2, 10)})
    assert slow.calls == fast.calls == 12
    assert t["slow"].runs == t["fast"].runs == 10
    assert t["slow"].p50_ms >= 4.0 and 1.0 <= t["fast"].p50_ms < t["slow"].p50_ms


def test_interleaved_keeps_each_runners_own_counts_and_reports_a_failure_as_text():
    a, b, bad = Sleepy(0.0), Sleepy(0.0), Sleepy(0.0, fail_after=3)
    t = interleaved({"a": Timed(lambda: a.run(FEED), 1, 5), "b": Timed(lambda: b.run(FEED), 0, 8),
                     "bad": Timed(lambda: bad.run(FEED), 1, 10)})
    assert (a.calls, b.calls) == (6, 8) and (t["a"].runs, t["b"].runs) == (5, 8)
    assert t["bad"] == "RuntimeError: device lost"


def _gate(passed):
    return GateVerdict("min_cosine", 0.99, 0.5, passed, f"t: cosine 0.5 {'meets' if passed else 'fails'} min_cosine")


def test_target_status_error_beats_failed_gate_beats_unavailable():
    assert target_status() == ("passed", "")
    assert target_status(unavailable="host proxy") == ("unavailable", "host proxy")
    assert target_status(gates=[_gate(True), _gate(None)], unavailable="host proxy") == ("unavailable", "host proxy")
    assert target_status(gates=[_gate(False), _gate(False)], unavailable="host proxy") == (
        "failed", "t: cosine 0.5 fails min_cosine; t: cosine 0.5 fails min_cosine")
    assert target_status("build failed: X", [_gate(False)], "host proxy") == ("error", "build failed: X")


def test_exit_code_rule():
    assert exit_code(["passed", "unavailable"], strict=False) == 0
    assert exit_code(["passed", "unavailable", "failed"], strict=True) == 3
    assert exit_code(["passed", "error"], strict=False) == 1
    assert exit_code(["failed"], strict=False) == 1


def test_a_golden_target_record_round_trips_through_the_typed_result():
    from pathlib import Path

    golden = json.loads((Path(__file__).parent / "data" / "golden" / "digits_manifest.json").read_text())
    for name, record in golden["targets"].items():
        again = result_to_dict(result_from_dict(name, record))
        assert json.dumps(again, sort_keys=True) == json.dumps(record, sort_keys=True), name


def test_reference_round_trips_through_its_manifest_entry(tmp_path):
    (tmp_path / "reference").mkdir()
    (tmp_path / "reference" / "model.onnx").write_bytes(b"onnx")
    ref = Reference(tmp_path / "reference" / "model.onnx", (TensorSpec("image", ("batch", 1, 8, 8)),), ("logits",),
                    "dynamo", 18, True, "verified")
    assert Reference.from_dict(json.loads(json.dumps(ref.to_dict(tmp_path))), tmp_path) == ref


@pytest.mark.parametrize("progress", [Console(progress=False), Silent()])
def test_console_and_silent_are_progress(progress):
    def use(p: Progress) -> None:
        p.step("s")
        p.advance("a", 1, 2)
        p.note("n")

    use(progress)
    assert all(callable(getattr(progress, m)) for m in ("step", "advance", "warn", "note"))


def test_ort_runners_the_validator_times_do_not_spin(tmp_path):
    """Runners take turns in one process: a spinning ORT session beside a torch.ao artifact made its calls hundreds
    of times slower (docs/recovery.md), so every ORT runner's idle workers sleep."""
    import onnx
    from onnx import TensorProto, helper

    from edgekit.backends.onnx.session import OrtRunner
    from edgekit.validate.run import reference_runner

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    specs = (TensorSpec("x", (1,)),)
    runners = [OrtRunner(tmp_path / "m.onnx", specs, ("y",), 2),
               reference_runner(Reference(tmp_path / "m.onnx", specs, ("y",), "test", 17, False, ""), 2)]
    for r in runners:
        assert r.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
        np.testing.assert_array_equal(r.run(FEED)["y"], FEED["x"])

"""The validator's arithmetic on hand-made numbers: MSE, max abs error, cosine, SQNR, agreement, accuracy, gates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgekit.types import Gates
from edgekit.validate.gates import evaluate
from edgekit.validate.latency import summarize
from edgekit.validate.metrics import Accuracy, Comparison, OutputError, cosine_rows, sqnr_db


def test_output_error_matches_closed_form_over_batches():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((10, 6))
    noise = 0.01 * rng.standard_normal((10, 6))
    acc = OutputError()
    acc.update(ref[:4], ref[:4] + noise[:4])
    acc.update(ref[4:], ref[4:] + noise[4:])
    s = acc.summary()
    assert s["mse"] == pytest.approx(np.mean(noise**2))
    assert s["max_abs_error"] == pytest.approx(np.max(np.abs(noise)))
    assert s["sqnr_db"] == pytest.approx(10 * np.log10(np.sum(ref**2) / np.sum(noise**2)))
    expected_cos = np.mean([np.dot(r, r + n) / np.linalg.norm(r) / np.linalg.norm(r + n) for r, n in zip(ref, noise)])
    assert s["cosine"] == pytest.approx(expected_cos)
    assert s["samples"] == 10


def test_sqnr_of_a_known_ratio():
    assert sqnr_db(100.0, 1.0) == pytest.approx(20.0)
    assert sqnr_db(1.0, 0.0) == math.inf


def test_cosine_of_opposite_orthogonal_and_zero_rows():
    a = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    b = np.array([[-1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    assert cosine_rows(a, b).tolist() == pytest.approx([-1.0, 0.0, 1.0])


def test_top1_agreement_and_accuracy():
    ref = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    out = np.array([[0.8, 0.2], [0.9, 0.1], [0.6, 0.4], [0.1, 0.9]])
    cmp = Comparison(("y",), classification=True)
    cmp.update({"y": ref}, {"y": out})
    assert cmp.summary()["top1_agreement"] == pytest.approx(0.75)
    acc = Accuracy()
    acc.update(out, np.array([0, 0, 1, 1]))
    assert acc.percent == pytest.approx(75.0)


def test_gates_name_value_bound_and_target():
    verdicts = evaluate("ort-int8", Gates(min_cosine=0.99, max_top1_drop=1.0, max_p50_ms=5.0),
                        {"cosine": 0.98, "top1_drop": 0.5, "p50_ms": None})
    by = {v["gate"]: v for v in verdicts}
    assert by["min_cosine"]["passed"] is False
    assert by["min_cosine"]["message"] == "ort-int8: cosine 0.98 fails min_cosine (>= 0.99)"
    assert by["max_top1_drop"]["passed"] is True
    assert by["max_p50_ms"]["passed"] is None


def test_latency_percentiles():
    s = summarize([0.001 * i for i in range(1, 101)])
    assert s["p50_ms"] == pytest.approx(50.5)
    assert s["p90_ms"] == pytest.approx(90.1)
    assert s["runs"] == 100

"""report.html: written by every build, validate and report; self-contained; its matplotlib plots drawn from the
manifest, metrics.json's per-sample error histogram, debug.json and the recovery record (hand-made in the shapes of
the issue-14 contract: tests/report_samples.py); the same inputs give the same bytes; headless Chromium renders it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from edgekit import strictjson
from edgekit.cli import main
from edgekit.report import ReportData, read_report_data, render_html
from edgekit.validate.metrics import HISTOGRAM_BINS, HISTOGRAM_EDGES, Comparison, cosine_histogram
from report_samples import debug_json, gate_with_resolution, recovery

REPO = Path(__file__).resolve().parent.parent


def plots_of(page: str) -> dict[str, str]:
    """data-plot key -> aria-label of every inline plot of the page."""
    return dict(re.findall(r'<svg class="plot" data-plot="([^"]+)" role="img" aria-label="([^"]+)"', page))


def plain(out: Path) -> dict:
    """manifest.json as render_html takes it (the build's own JSON, non-finite numbers restored)."""
    return json.loads(json.dumps(strictjson.restore(json.loads((out / "manifest.json").read_text())), default=str))


def with_analysis(out: Path) -> tuple[dict, ReportData]:
    """The build in ``out`` plus a debug.json of ort-int8 and a recovery record and a low-resolution gate verdict."""
    (out / "ort-int8" / "debug.json").write_text(strictjson.dumps(debug_json()))
    manifest = plain(out)
    manifest["targets"]["ort-int8"]["recovery"] = recovery()
    manifest["targets"]["ort-int8"]["gates"].append(gate_with_resolution())
    return manifest, read_report_data(out, manifest["targets"])


def test_the_per_sample_histogram_has_fixed_bins_and_counts_every_sample():
    assert len(HISTOGRAM_EDGES) == HISTOGRAM_BINS + 1 and HISTOGRAM_EDGES[0] == 0.0 and HISTOGRAM_EDGES[1] == 1e-9
    #                          exact   1e-6 gap  0.01 gap  orthogonal  opposite
    counts = cosine_histogram(np.array([1.0, 1 - 2e-6, 0.985, 0.0, -1.0]))
    assert counts.sum() == 5 and counts[0] == 1 and counts[7] == 1 and counts[15] == 1 and counts[19] == 2
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((12, 5)).astype(np.float32)
    c = Comparison(("y",), classification=True)
    c.update({"y": ref[:7]}, {"y": ref[:7] + 0.01})
    c.update({"y": ref[7:]}, {"y": ref[7:] * 2})  # the same direction: cosine 1 (first bin)
    h = c.histogram("torch-fp32")
    assert sum(h["outputs"]["y"]) == 12 and h["outputs"]["y"][0] >= 5 and h["against"] == "torch-fp32"
    assert set(c.summary()["outputs"]["y"]) == {"mse", "max_abs_error", "cosine", "min_cosine", "sqnr_db", "samples"}


def test_matplotlib_is_imported_only_when_a_report_is_drawn():
    code = ("import sys, edgekit, edgekit.cli, edgekit.pipeline, edgekit.report; "
            "assert 'matplotlib' not in sys.modules, 'imported at import time'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-1000:]


def test_build_writes_report_html_with_its_plots_and_keeps_the_histogram_out_of_the_manifest(good_build):
    out = good_build.root / "out"
    page = (out / "report.html").read_text()
    assert set(plots_of(page)) == {"targets", "histograms"}  # no debug.json, no recovery: those plots are left out
    assert "Targets: accuracy against p50 latency" in page and "<td>ort-int8</td>" in page and "min_cosine" in page
    metrics = json.loads((out / "ort-int8" / "metrics.json").read_text())
    hist = metrics["error_histogram"]
    assert sum(hist["outputs"]["logits"]) == good_build.manifest["validation"]["samples"] == 24
    assert hist["against"] == "torch-fp32" and len(hist["edges"]) == HISTOGRAM_BINS + 1
    assert "error_histogram" not in (out / "manifest.json").read_text()
    assert "histogram" not in good_build.manifest["targets"]["ort-int8"]["metrics"]
    # self-contained: nothing is loaded from anywhere (no script, link, src; the policy forbids it too)
    assert not re.search(r"<script|<link|<img|\bsrc=|@import|url\((?!#)", page)
    assert "default-src 'none'" in page and "None" not in page


def test_validate_and_report_rewrite_it_and_a_validation_record_gets_its_own(built_sandbox, capsys):
    out = built_sandbox / "out"
    (out / "report.html").unlink()
    assert main(["-q", "validate", str(out)]) == 0
    assert set(plots_of((out / "report.html").read_text())) == {"targets", "histograms"}
    assert main(["-q", "validate", str(out), "--data", str(built_sandbox / "val.npz")]) == 0
    record = next((out / "validations").iterdir())
    assert set(plots_of((record / "report.html").read_text())) == {"targets", "histograms"}
    (out / "report.html").unlink()
    assert main(["-q", "report", str(out)]) == 0  # --html no longer needed
    first = (out / "report.html").read_bytes()
    assert main(["-q", "report", str(out), "--html"]) == 0
    assert (out / "report.html").read_bytes() == first  # the same manifest, the same bytes


def test_analysis_plots_from_debug_json_and_recovery(good_build, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(good_build.root / "out", out)
    manifest, data = with_analysis(out)
    page = render_html(manifest, data)
    plots = plots_of(page)
    assert set(plots) == {"targets", "histograms", "sensitivity-ort-int8", "recovery-ort-int8"}
    assert plots["sensitivity-ort-int8"] == "ort-int8: per-layer sensitivity (top 15 of 20 quantized layers)"
    assert plots["recovery-ort-int8"] == "ort-int8: recovery attempts, cosine against p50 latency"
    assert "layer1.0.conv1 (node_Conv_31)" in page and ">node_Conv_37<" in page  # no torch module: the node alone
    assert "keep node_Conv_31 in FP32" in page and "<strong>(written)</strong>" in page and "min_cosine gate" in page
    assert "resolution: too few samples: one sample = 4.2 points" in page and "interval [-4.5, 12.8]" in page
    assert render_html(manifest, data) == page  # deterministic bytes
    assert len(re.findall(r'\bid="([^"]+)"', page)) == len(set(re.findall(r'\bid="([^"]+)"', page)))  # ids unique
    by_accuracy = {**manifest["targets"]["ort-int8"], "recovery": recovery(accuracy=True)}
    device = {"label": "pi5", "latency": {"p50_ms": 0.4, "meaningful": True}, "verdict": "pass"}  # a merged device report
    page = render_html({**manifest, "targets": {**manifest["targets"], "ort-int8": by_accuracy},
                        "devices": {"ort-int8": [device]}}, data)
    assert plots_of(page)["recovery-ort-int8"] == "ort-int8: recovery attempts, accuracy against p50 latency"
    assert "reference accuracy - max_top1_drop" in page and ">ort-int8 @ pi5<" in page


@pytest.mark.parametrize("debug", ["{not json", '{"layers": "all"}', '{"schema": 1, "layers": []}',
                                   '{"layers": [{"onnx_node": "n", "local_sqnr_db": null, "accumulated_sqnr_db": null}]}'])
def test_an_unusable_debug_json_or_recovery_leaves_its_plot_out(good_build, tmp_path, debug):
    out = tmp_path / "out"
    shutil.copytree(good_build.root / "out", out)
    (out / "ort-int8" / "debug.json").write_text(debug)
    manifest = plain(out)
    manifest["targets"]["ort-int8"]["recovery"] = {"attempts": [{"step": "original", "cosine": None, "p50_ms": None}]}
    page = render_html(manifest, read_report_data(out, manifest["targets"]))
    assert set(plots_of(page)) == {"targets", "histograms"} and "could not be drawn" not in page


# ------------------------------------------------------------------------------------------- Chromium


def chromium() -> str:
    """The chromium binary; installed with `make system-deps` when missing and this is root; else the test skips
    (CI runs as root, so there it always runs)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["make", "-s", "-C", str(REPO), "system-deps"], check=True, timeout=900)
        found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: .ci/run must run `make system-deps` before the tests")
        pytest.skip("chromium is not installed and this is not root (apt-get install chromium, or make system-deps as root)")
    return found


def run_chromium(binary: str, page: Path, *args: str) -> str:
    with tempfile.TemporaryDirectory(prefix="edgekit-chromium-") as profile:
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                 f"--user-data-dir={profile}"]
        done = subprocess.run([binary, *flags, *args, page.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_chromium_renders_every_plot(good_build, tmp_path):
    from PIL import Image

    binary = chromium()
    out = tmp_path / "out"
    shutil.copytree(good_build.root / "out", out)
    manifest, data = with_analysis(out)
    page = out / "report.html"
    page.write_text(render_html(manifest, data))

    shot = tmp_path / "report.png"
    dom = run_chromium(binary, page, "--dump-dom", f"--screenshot={shot}", "--window-size=1200,3000")  # one launch
    rendered = plots_of(dom)  # as the browser parsed it: each plot an <svg> with its accessible name
    assert set(rendered) == {"targets", "histograms", "sensitivity-ort-int8", "recovery-ort-int8"}, sorted(rendered)
    assert rendered["targets"] == "Targets: accuracy against p50 latency"
    assert dom.count("<figure>") == 4 and "<h2>Verdicts</h2>" in dom and "<h2>Plots</h2>" in dom

    image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert image.shape[:2] == (3000, 1200)
    inked = (image.sum(axis=2) < 600).mean()  # not white
    assert 0.02 < inked < 0.6, inked
    for rgb in ((0x2E, 0x7D, 0x32), (0x1E, 0x88, 0xE5), (0xFB, 0x8C, 0x00)):  # passed green, local and accumulated bars
        near = (np.abs(image - np.array(rgb)).sum(axis=2) < 30).sum()
        assert near > 200, (rgb, near)  # the plots were painted, not just laid out

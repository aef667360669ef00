"""Device bundles (issue 15): verify.py's preflight parsing and judging in process; every demo target bundled and
verified on this host; the ONNX bundles in a fresh venv holding only numpy + onnxruntime, the TorchScript ones with
torch but no edgekit (exit 0 / 2 on a flipped byte / 1 on an impossible tolerance); device reports merged back."""

from __future__ import annotations

import ast
import json
import re
import shutil
import struct
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

import pytest
from conftest import GOOD_CONFIG

from edgekit.bundle import verify
from edgekit.bundle.merge import read_device_report
from edgekit.cli import main
from edgekit.config import parse_config
from edgekit.errors import ConfigError, DataError

X86_NO_VNNI = """processor\t: 0
vendor_id\t: GenuineIntel
model\t\t: 79
model name\t: Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c avx2 fma bmi2
"""
RPI4 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU part\t: 0xd08

Hardware\t: BCM2835
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""
GRAVITON3 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng
CPU part\t: 0xd40
"""
INT8_U8S8 = {"runtime": {"name": "onnxruntime"}, "quantization": {"precision": "int8", "engine": "onnxruntime", "u8s8": True, "weight_bits": 8}}


def _auxv(hwcap: int, hwcap2: int) -> bytes:
    return struct.pack("<QQQQQQ", verify.AT_HWCAP, hwcap, verify.AT_HWCAP2, hwcap2, 0, 0)


# ------------------------------------------------------------------------------------------ in process


def test_cpuinfo_parsing_names_the_cpu_and_int8_features():
    x86 = verify.detect_device(X86_NO_VNNI, "x86_64", b"")
    assert x86["cpu"].startswith("Intel(R) Xeon(R) CPU E5-2686") and x86["features"] == ["avx2"] and not x86["emulated"]
    pi = verify.detect_device(RPI4, "aarch64", b"")  # no auxv: the Features line decides
    assert pi["cpu"] == "Raspberry Pi 4 Model B Rev 1.4" and pi["features"] == ["asimd"]
    g3 = verify.detect_device(GRAVITON3, "aarch64", b"")
    assert {"asimd", "asimddp", "i8mm", "sve", "bf16"} <= set(g3["features"])


def test_auxv_decides_on_arm_and_an_x86_cpuinfo_there_means_emulation():
    bits = verify.HWCAP_BITS["asimd"] | verify.HWCAP_BITS["asimddp"]
    dev = verify.detect_device(X86_NO_VNNI, "aarch64", _auxv(bits, verify.HWCAP2_BITS["i8mm"]))
    assert dev["emulated"] and dev["features"] == ["asimd", "asimddp", "i8mm"]
    assert any("emulated" in n and "meaningless" in n for n in verify.predict(dev, INT8_U8S8))


def test_preflight_predictions_in_plain_words():
    x86 = verify.detect_device(X86_NO_VNNI, "x86_64", b"")
    assert any(n.startswith("saturation risk") and "VNNI" in n for n in verify.predict(x86, INT8_U8S8))
    seven = {**INT8_U8S8, "quantization": {**INT8_U8S8["quantization"], "weight_bits": 7}}
    assert not any("saturation risk" in n for n in verify.predict(x86, seven))
    pi = verify.detect_device(RPI4, "aarch64", b"")
    assert any("rarely faster than FP32" in n for n in verify.predict(pi, INT8_U8S8))
    fbgemm = {"runtime": {"name": "torch"}, "quantization": {"precision": "int8", "engine": "fbgemm"}}
    assert any("x86-only" in n for n in verify.predict(pi, fbgemm))
    fp32 = {"runtime": {"name": "onnxruntime"}, "quantization": {"precision": "fp32"}}
    assert verify.predict(x86, fp32) == ["FP32: no INT8 kernel risk on this CPU"]


def test_judge_names_the_output_and_the_numbers():
    measured = {"outputs": {"logits": {"cosine": 0.9991, "min_cosine": 0.99, "max_abs_error": 0.25}}, "top1_agreement": 0.95}
    tol = {"min_cosine": 0.999, "max_abs_error": {"logits": 0.1}, "min_top1_agreement": 0.97}
    assert verify.judge(measured, tol) == ["logits: max abs error 0.25 > 0.1 allowed",
                                          "top-1 agreement 0.9500 < 0.9700 required"]
    assert verify.judge(measured, {"min_cosine": 0.99, "max_abs_error": {"logits": 0.3}}) == []


def test_verify_py_imports_only_stdlib_numpy_and_the_runtimes_lazily():
    tree = ast.parse(Path(verify.__file__).read_text(encoding="utf-8"))
    top = {a.name.split(".")[0] for n in tree.body for a in getattr(n, "names", []) if isinstance(n, ast.Import)}
    top |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    for n in tree.body:  # `try: import numpy` at module level
        if isinstance(n, ast.Try):
            top |= {a.name.split(".")[0] for s in n.body if isinstance(s, ast.Import) for a in s.names}
    everywhere = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    everywhere |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    assert top - stdlib == {"numpy"}, top - stdlib
    assert everywhere - stdlib - {"numpy"} == {"onnxruntime", "torch", "tensorrt", "cuda"}


def test_device_report_is_untrusted_input(tmp_path):
    good = {"kind": "edgekit-device-report", "target": "ort-int8", "verdict": "pass", "failures": [], "preflight": [],
            "vs_reference": {"outputs": {"logits": {"cosine": 0.99, "min_cosine": 0.98, "max_abs_error": 0.1}}},
            "bundle": {"artifact_files": {"model.onnx": "ab" * 32}}, "runtime": {"description": "onnxruntime"},
            "device": {"cpu": "Cortex-A72", "machine": "aarch64", "system": "Linux", "features": ["asimd"], "emulated": False},
            "latency": {"p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 3.0, "threads": 4, "runs": 10, "meaningful": True}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(good))
    assert read_device_report(path)["label"] == "Cortex-A72 (aarch64)"
    for key, bad in (("latency.p50_ms", "fast"), ("device.emulated", "no"), ("verdict", "maybe"), ("latency.runs", -1)):
        broken = json.loads(json.dumps(good))
        section, _, leaf = key.rpartition(".")
        (broken[section] if section else broken)[leaf] = bad
        path.write_text(json.dumps(broken))
        with pytest.raises(DataError, match=key.replace(".", r"\.")):
            read_device_report(path)
    path.write_text(json.dumps(good).replace("0.99", "NaN"))
    with pytest.raises(DataError, match="not strict JSON"):
        read_device_report(path)


def test_bundle_config_section():
    base = {"model": {"source": "example:digits"}, "targets": {"use": ["ort-fp32"]}}
    assert parse_config(base, Path("/")).bundle is None
    assert parse_config({**base, "bundle": {}}, Path("/")).bundle.samples == 32
    for table, message in (({"samples": 0}, "positive"), ({"sample": 8}, "did you mean 'samples'"),
                           ({"targets": ["ort-int8"]}, "not in \\[targets\\] use")):
        with pytest.raises(ConfigError, match=message):
            parse_config({**base, "bundle": table}, Path("/"))


@pytest.mark.slow
def test_a_build_with_a_bundle_section_writes_bundles(sandbox, tmp_path):
    config = GOOD_CONFIG.replace('use = ["ort-fp32", "ort-int8"]', 'use = ["ort-fp32"]') + "\n[bundle]\nsamples = 4\n"
    (sandbox / "cfg.toml").write_text(config)
    assert main(["-q", "build", str(sandbox / "cfg.toml"), "-o", str(sandbox / "out")]) == 0
    meta = _strict(sandbox / "out" / "bundles" / "ort-fp32" / "bundle.json")
    assert [s["kind"] for s in meta["golden"]["samples"]].count("validation") == 4
    assert verify.main([str(sandbox / "out" / "bundles" / "ort-fp32.tar.gz"), "--runs", "2", "--json", str(tmp_path / "r.json")]) == 0


# ---------------------------------------------------------------------------------- on the demo build


@pytest.fixture(scope="session")
def bundles(digits_build, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles")
    assert main(["-q", "bundle", str(digits_build.out), "-o", str(out)]) == 0
    return out


def _strict(path: Path) -> dict:
    return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{path} holds {c}"))


def test_every_target_is_bundled_self_contained(digits_build, bundles):
    built = [n for n, t in digits_build.manifest["targets"].items() if t["files"]]
    assert sorted(p.name for p in bundles.iterdir() if p.is_dir()) == sorted(built)
    for name in built:
        meta = _strict(bundles / name / "bundle.json")
        assert meta["target"] == name and meta["host"]["cpu"] and meta["host"]["versions"]["onnxruntime"]
        assert sorted(meta["files"]) == sorted(p.name for p in (bundles / name).iterdir() if p.name != "bundle.json")
        for rel, f in meta["files"].items():
            assert verify.sha256_file(bundles / name / rel) == f["sha256"]
        kinds = [s["kind"] for s in meta["golden"]["samples"]]
        assert kinds.count("validation") == 32 and len(kinds) >= 33  # + the smallest/largest-magnitude samples
        assert (bundles / name / "verify.py").read_bytes() == Path(verify.__file__).read_bytes()
        tol = meta["tolerances"]
        assert tol["min_cosine"] <= meta["profile"]["gates"]["min_cosine"] and tol["max_abs_error"]["logits"] > 0
        with tarfile.open(bundles / f"{name}.tar.gz") as tar:
            assert sorted(tar.getnames())[0] == name and f"{name}/bundle.json" in tar.getnames()


def test_bundle_refuses_a_tampered_build_and_writes_nothing(digits_build, tmp_path, capsys):
    dist = tmp_path / "dist"
    shutil.copytree(digits_build.out, dist)
    with open(dist / "ort-int8" / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    assert main(["bundle", str(dist), "-o", str(tmp_path / "b")]) == 2
    assert "ort-int8/model.onnx was modified after the build" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_verify_in_process_on_the_build_host(bundles, tmp_path, capsys):
    for name in ("ort-int8", "tensorrt-int8", "torch-qnnpack"):
        out = tmp_path / f"{name}.json"
        assert main(["verify", str(bundles / f"{name}.tar.gz"), "--runs", "3", "--json", str(out)]) == 0, capsys.readouterr()
        report = _strict(out)
        assert report["verdict"] == "pass" and report["latency"]["runs"] == 3 and report["latency"]["threads"] == 2
        assert report["vs_build_host"]["outputs"]["logits"]["max_abs_error"] < 0.05  # same CPU as the build


def test_device_report_merged_into_manifest_and_report(digits_build, bundles, tmp_path, capsys):
    dist = tmp_path / "dist"
    shutil.copytree(digits_build.out, dist)
    report = tmp_path / "device-report.json"
    assert verify.main([str(bundles / "ort-int8"), "--runs", "3", "--json", str(report)]) == 0
    assert main(["validate", str(dist), "--device-report", str(report)]) == 0
    manifest = json.loads((dist / "manifest.json").read_text())  # (the build's own sqnr_db can be Infinity)
    [entry] = manifest["devices"]["ort-int8"]
    assert entry["verdict"] == "pass" and entry["latency"]["runs"] == 3
    row = next(line for line in (dist / "report.md").read_text().splitlines() if line.startswith("| ort-int8 |"))
    assert f"measured on {entry['label']}: p50 " in row
    other = tmp_path / "other.json"  # a report of another build's artifact is refused
    data = _strict(report)
    data["bundle"]["artifact_files"]["model.onnx"] = "0" * 64
    other.write_text(json.dumps(data))
    assert main(["validate", str(dist), "--device-report", str(other)]) == 2
    assert "not this build's ort-int8 artifact" in capsys.readouterr().err


# ------------------------------------------------------------- runtimes only: no edgekit on the path


@pytest.fixture(scope="session")
def ort_venv(tmp_path_factory) -> Path:
    """A fresh venv holding only numpy and onnxruntime (pip's cache makes the second session fast)."""
    venv = tmp_path_factory.mktemp("ort_venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "numpy", "onnxruntime"], check=True, timeout=600)
    return python


@pytest.fixture(scope="session")
def torch_env(tmp_path_factory) -> Path:
    """A fresh venv that sees torch and its dependencies (symlinked from this environment) and nothing else."""
    root = tmp_path_factory.mktemp("torch_env")
    venv, lib = root / "venv", root / "lib"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    lib.mkdir()
    todo, seen = ["torch", "numpy"], set()
    while todo:
        dist = metadata.distribution(todo.pop())
        if dist.metadata["Name"].lower() in seen:
            continue
        seen.add(dist.metadata["Name"].lower())
        for req in dist.requires or []:
            name, _, marker = req.partition(";")
            name = name.split("[")[0].split("<")[0].split(">")[0].split("=")[0].split("!")[0].split("~")[0].strip()
            if "extra" not in marker:
                try:
                    metadata.distribution(name)
                    todo.append(name)
                except metadata.PackageNotFoundError:
                    pass
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops - {"__pycache__"}:
            src = Path(dist.locate_file(top))
            if src.exists() and not top.endswith((".dist-info", ".pth")) and not (lib / top).exists():
                (lib / top).symlink_to(src)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "torch_only.pth").write_text(str(lib) + "\n")
    return venv / "bin" / "python"


def _run(python: Path, bundle: Path, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-I", str(bundle / "verify.py"), str(bundle), "--runs", "3", *extra],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def _cannot_import(python: Path, module: str, cwd: Path) -> bool:
    return subprocess.run([str(python), "-I", "-c", f"import {module}"], cwd=cwd, capture_output=True).returncode != 0


def _three_verdicts(python: Path, bundles: Path, name: str, tmp_path: Path) -> None:
    """exit 0 as bundled; exit 2 naming the artifact after one byte is flipped; exit 1 naming the output and numbers
    with a tolerance no artifact can meet."""
    good = tmp_path / name
    shutil.copytree(bundles / name, good)
    ok = _run(python, good, tmp_path)
    assert ok.returncode == 0 and "verdict: PASS" in ok.stdout, ok.stdout + ok.stderr
    meta = _strict(good / "bundle.json")
    artifact = meta["runtime"]["artifact"]
    flipped = tmp_path / f"{name}-flipped"
    shutil.copytree(bundles / name, flipped)
    data = bytearray((flipped / artifact).read_bytes())
    data[len(data) // 2] ^= 0x01
    (flipped / artifact).write_bytes(bytes(data))
    bad = _run(python, flipped, tmp_path)
    assert bad.returncode == 2 and f"{artifact} was modified" in bad.stderr, bad.stderr
    meta["tolerances"]["max_abs_error"]["logits"] = 0.0
    meta["tolerances"]["min_cosine"] = 1.5
    (good / "bundle.json").write_text(json.dumps(meta))
    out = _run(python, good, tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "verdict: FAIL" in out.stdout and re.search(r"logits: cosine [01]\.\d{6} < 1\.500000 required", out.stdout)
    if meta["host_on_golden"]["outputs"]["logits"]["max_abs_error"] > 0:
        assert re.search(r"logits: max abs error \d\.\d+(e-\d+)? > 0 allowed", out.stdout), out.stdout


@pytest.mark.slow
def test_onnx_bundles_in_a_venv_with_only_numpy_and_onnxruntime(ort_venv, bundles, tmp_path):
    assert _cannot_import(ort_venv, "torch", tmp_path) and _cannot_import(ort_venv, "edgekit", tmp_path)
    onnx = [p.name for p in sorted(bundles.iterdir()) if p.is_dir() and _strict(p / "bundle.json")["runtime"]["name"] != "torch"]
    assert onnx == ["ort-fp32", "ort-int4", "ort-int8", "ort-int8-dynamic", "tensorrt-fp16", "tensorrt-int8"]
    for name in onnx:
        _three_verdicts(ort_venv, bundles, name, tmp_path)
    trt = _run(ort_venv, bundles / "tensorrt-int8", tmp_path, "--json", str(tmp_path / "trt.json"))
    assert "verified on ONNX Runtime CPU instead" in trt.stdout
    missing = _run(ort_venv, bundles / "torch-qnnpack", tmp_path)  # no torch here: exit 2 with the pip line
    assert missing.returncode == 2 and "pip install numpy torch" in missing.stderr


@pytest.mark.slow
def test_torchscript_bundles_with_torch_but_no_edgekit(torch_env, bundles, tmp_path):
    assert _cannot_import(torch_env, "edgekit", tmp_path)  # (torch is there: the first verdict runs it)
    _three_verdicts(torch_env, bundles, "torch-qnnpack", tmp_path)

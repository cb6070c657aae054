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

.PHONY: demo test test-gpu lint bench venv clean default-models browser-tools audit container-tools wheelhouse \
	wheelhouse-gpu wheelhouse-train

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

# Each script prints its numbers and keeps them in bench/results/ (the machine's shared cores: ratios, not absolutes)
BENCH_DAY := $(shell date +%Y%m%d)
bench: $(STAMP)
	$(PY) bench/decode_bench.py --json bench/results/$(BENCH_DAY)-decode-224.json
	$(PY) bench/serve_bench.py
	$(PY) bench/overload.py --json bench/results/$(BENCH_DAY)-overload-2x.json
	$(PY) bench/jobs_bench.py

# The browser tests' tools: Debian's chromium (apt, as root) and axe-core (npm); each bounded in time. Where either
# cannot be installed (no root, no npm) the tests that need it skip and say why.
AXE := .cache/axe/node_modules/axe-core/axe.min.js

browser-tools:
	@command -v chromium >/dev/null 2>&1 || timeout 600 sh -c 'apt-get update -qq && apt-get install -y -qq chromium >/dev/null' \
		|| echo "chromium could not be installed: the browser tests will skip"
	@test -f $(AXE) || timeout 300 npm install --silent --no-audit --no-fund --prefix .cache/axe axe-core@4 \
		|| echo "axe-core could not be installed: the accessibility test will skip"

# The deployment tests' tools (tests/deploy): podman, buildah, runc, debootstrap, haproxy and promtool from Debian (apt, as root), bounded
# in time. Where they cannot be installed the container tests skip and say why.
container-tools:
	@for tool in podman buildah runc debootstrap haproxy promtool; do command -v $$tool >/dev/null 2>&1 || missing=1; done; \
	test -z "$$missing" || timeout 600 sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq podman buildah runc debootstrap haproxy prometheus >/dev/null' \
		|| echo "podman/buildah/runc/debootstrap/haproxy/prometheus could not be installed: those tests will skip"

# Wheels for an offline image build: the Dockerfile installs only from wheelhouse/ (pip --no-index). Run these on a
# connected machine, then copy the checkout with its wheelhouse/ to the air-gapped one. The serve-cpu and train images
# run Python 3.11 (python:3.11-slim, Debian bookworm), so the wheels are built by a 3.11 interpreter; serve-gpu's
# Ubuntu 24.04 runs 3.12, whose wheels pip downloads for that platform. Each target replaces its folder.
WHEELHOUSE := wheelhouse
GLIBC_MINORS := 39 38 37 36 35 34 33 32 31 30 29 28 27 26 25 24 23 22 21 20 19 18 17  # Ubuntu 24.04: glibc 2.39
MANYLINUX := $(foreach v,$(GLIBC_MINORS),--platform manylinux_2_$(v)_x86_64) \
	--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64
CHECK_PY311 := $(SERVE_VENV)/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
	|| { echo "the images run Python 3.11: make the wheelhouse with a 3.11 interpreter (PYTHON=python3.11)"; exit 1; }

# EXTRAS: pyproject extras the image installs on top of the serving stack, as its build argument EXTRAS says
# (e.g. make wheelhouse EXTRAS=postgres,ray)
EXTRAS ?=
comma := ,
WHEELHOUSE_STAMP := $(WHEELHOUSE)/serve/.complete$(if $(EXTRAS),-$(subst $(comma),-,$(EXTRAS)))

# serve-cpu: the core dependencies (+ EXTRAS) and the build backend; the image builds the project from the context
$(WHEELHOUSE_STAMP): pyproject.toml $(SERVE_STAMP)
	@$(CHECK_PY311)
	rm -rf $(WHEELHOUSE)/serve
	$(SERVE_VENV)/bin/python -m pip wheel --quiet --wheel-dir $(WHEELHOUSE)/serve '.$(if $(EXTRAS),[$(EXTRAS)])' \
		'setuptools>=68' wheel
	rm -f $(WHEELHOUSE)/serve/xray_service-*.whl
	touch $@

wheelhouse: $(WHEELHOUSE_STAMP)

# serve-gpu: the core dependencies with onnxruntime replaced by the `gpu` extra (onnxruntime-gpu), + EXTRAS, for cp312
wheelhouse-gpu: $(SERVE_STAMP)
	rm -rf $(WHEELHOUSE)/gpu && mkdir -p $(WHEELHOUSE)/gpu
	$(SERVE_VENV)/bin/python -c "import re, sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
		extras = ['gpu', *filter(None, sys.argv[1].split(','))]; \
		core = [d for d in p['dependencies'] if re.match(r'[A-Za-z0-9._-]+', d).group() != 'onnxruntime']; \
		print(*core, *(d for e in extras for d in p['optional-dependencies'][e]), sep=chr(10))" '$(EXTRAS)' \
		> $(WHEELHOUSE)/gpu/requirements.txt
	$(SERVE_VENV)/bin/python -m pip download --quiet --dest $(WHEELHOUSE)/gpu --only-binary=:all: \
		--python-version 3.12 --implementation cp --abi cp312 $(MANYLINUX) \
		--requirement $(WHEELHOUSE)/gpu/requirements.txt 'setuptools>=68' wheel

# train: the core dependencies and the `train` extra (torch: several GB with its CUDA libraries)
wheelhouse-train: $(SERVE_STAMP)
	@$(CHECK_PY311)
	rm -rf $(WHEELHOUSE)/train
	$(SERVE_VENV)/bin/python -m pip wheel --quiet --wheel-dir $(WHEELHOUSE)/train '.[train]' 'setuptools>=68' wheel
	rm -f $(WHEELHOUSE)/train/xray_service-*.whl

# Known vulnerabilities in the installed dependencies (report only, bounded in time): pip-audit asks PyPI's JSON API;
# packages it cannot look up (an offline mirror) are counted as not audited, never as clean.
audit: $(STAMP)
	@mkdir -p .cache
	@timeout 180 $(VENV)/bin/pip-audit --progress-spinner off --skip-editable > .cache/pip-audit.txt 2>&1; \
		echo "pip-audit (report only, exit $$?): $$(grep -m1 -iE 'vulnerabilit|found' .cache/pip-audit.txt);" \
		"$$(grep -c 'could not be audited' .cache/pip-audit.txt) packages could not be audited; see .cache/pip-audit.txt"

test: $(STAMP) browser-tools container-tools audit
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

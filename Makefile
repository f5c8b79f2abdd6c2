# mocopipe — every target installs what it needs first (once: a stamp file makes re-runs
# fast and safe). `make demo` and `make test` are the two-command quickstart.

SHELL   := /bin/bash
PYTHON  ?= $(shell command -v python3.11 || command -v python3)
VENV    := .venv
PY      := $(VENV)/bin/python
MOCO    := $(VENV)/bin/mocopipe
STAMP   := $(VENV)/.mocopipe-installed
# torch is pinned on the same pip line as the package, so pip resolves the CPU build
# available here instead of fetching a CUDA one (pyproject keeps a range for GPU hosts);
# constraints.txt is the tested set of every other dependency.
TORCH   := torch==2.13.0
SYSDEPS := dataset-fashion-mnist chromium chromium-driver

.PHONY: all install sysdeps demo test up down bench gpu-check clean

all: test

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "mocopipe needs Python >= 3.11; run: make PYTHON=/path/to/python3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -c constraints.txt $(TORCH) -e '.[test,dev]'
	@touch $@

# Debian packages: Fashion-MNIST (demo data) and Chromium + driver (MLflow UI browser tests).
sysdeps:
	@missing=""; \
	for p in $(SYSDEPS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing system packages:$$missing"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing \
	    || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; }; \
	else \
	  echo "NOTE: missing system packages:$$missing"; \
	  echo "      install them with:  sudo apt-get install -y$$missing"; \
	fi

test: install sysdeps
	$(PY) -m pytest -q --durations=30

up: install
	$(MOCO) up

down: install
	$(MOCO) down

# `mocopipe demo` brings the stack up itself (idempotent), writes the Fashion-MNIST shards
# and runs a short 2-worker MoCo pretraining + kNN evaluation, all tracked in MLflow.
demo: install sysdeps
	@if $(MOCO) demo --help >/dev/null 2>&1; then \
	  $(MOCO) demo; \
	else \
	  $(MOCO) up && echo "the stack is up, but this checkout has no 'mocopipe demo' yet"; \
	  exit 1; \
	fi

# Benchmarks against the local stack: ingest reads synthetic JPEG shards (written on first
# use), train times MoCo steps of the demo encoder; both print ratios against a baseline
# measured in the same run. The ingest targets (>= 3x the pure-PIL reference per core, streaming >= 0.9x raw GET) are
# about ~110 KB ImageNet-like JPEGs at 224 px: generate 800 of them once, as 2 shards.
BENCH_JPEGS := .mocopipe/bench-jpegs
BENCH_DATA  := s3://corpus/bench/jpeg110k
bench: install sysdeps
	$(MOCO) up
	@eval "$$($(MOCO) env)" && set -e && \
	{ $(MOCO) shards ls $(BENCH_DATA) >/dev/null 2>&1 || { \
	  $(PY) -c 'from pipeline.shards.synthetic import write_jpeg_folder as w; w("$(BENCH_JPEGS)", 800)' && \
	  $(MOCO) shards write $(BENCH_JPEGS) $(BENCH_DATA) --samples-per-shard 400 --quiet; }; } && \
	$(MOCO) bench ingest $(BENCH_DATA) && \
	$(MOCO) bench train jobs/configs/demo.toml

# The GPU check (`mocopipe bench gpu`): one JSON line, under 8 minutes on one H100/H200.
# Uses this checkout's venv when it has torch, else the machine's python3 (a GPU image's own
# torch); what is missing besides torch comes from ./.whl (wheels carried to an offline node)
# or from the package index, into ./.gpu-site. `make gpu-check ARGS=--dry-run` runs it on CPU.
GPU_PY := $(shell test -x $(PY) && $(PY) -c 'import torch' 2>/dev/null && echo $(PY) || command -v python3)
gpu-check:
	@$(GPU_PY) -c 'import torch' || { echo "gpu-check: no torch for $(GPU_PY); run make install" >&2; exit 2; }
	@$(GPU_PY) -c 'import simplejpeg, webdataset, PIL, numpy' 2>/dev/null || { \
	  if [ -d .whl ]; then $(GPU_PY) -m pip install -q --no-index --no-deps --target .gpu-site .whl/*.whl; \
	  else $(GPU_PY) -m pip install -q --target .gpu-site simplejpeg==1.9.0 webdataset==1.0.2; fi; }
	PYTHONPATH="$(CURDIR):$(CURDIR)/.gpu-site" timeout 480 $(GPU_PY) -m pipeline.bench.gpu $(ARGS)

clean:
	-$(MOCO) down
	rm -rf $(VENV) .pytest_cache

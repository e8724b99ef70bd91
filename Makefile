# The README's two commands:
#   make run   - create .venv, install everything, run the default pipeline (dvc repro): every dataset in params.yaml's run
#   make test  - create/reuse .venv, install, run the whole test suite
# torch is pinned and installed first: an unpinned torch pulls a multi-GB CUDA build.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# Which packaged model `make serve` / `make serve-stop` run: any dataset of params.yaml's run (make serve DATASET=trec).
DATASET ?= mnist
# Serve a registered MLflow model instead of the packaged archive: make serve MODEL=models:/ngsll-mnist@champion
MODEL ?=
# Which server: torchserve (the archive's production config) or kserve (KServe's Python model server, v1 + v2)
SERVER ?= torchserve
SERVE_MODULE = $(if $(filter kserve,$(SERVER)),ngsll_plugins.kserve_server,$(if $(filter torchserve,$(SERVER)),ngsll_plugins.serve,$(error SERVER must be torchserve or kserve, got '$(SERVER)')))
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test install venv clean serve serve-stop

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

venv: $(BIN)/python

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e ".[pipeline,serve,kserve,benchmarks,ray,test]"
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/dvc repro
	@$(BIN)/python -c "import yaml; print('\\n'.join(open(f'reports/{d}/table.md').read() for d in yaml.safe_load(open('params.yaml'))['run']))"

# Two workers, one module each at a time (--dist loadscope): test_pipeline.py's shared repository stays on one,
# the other modules (servers, DDP, the failure-path repositories) run beside it on the second core.
test: install
	$(BIN)/python -m pytest -q -rs --durations=25 -n 2 --dist loadscope

serve: install
	$(BIN)/python -m $(SERVE_MODULE) start models/$(DATASET)/serve $(if $(MODEL),--model-uri $(MODEL))

serve-stop:
	$(BIN)/python -m $(SERVE_MODULE) stop models/$(DATASET)/serve

clean:
	rm -rf $(VENV) .pytest_cache

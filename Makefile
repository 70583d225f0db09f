# `make demo` and `make test` each set everything up from nothing (venv, pinned packages,
# Debian's chromium for the report's browser test) and then run.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup test demo bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml scripts/setup.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/setup.sh
	touch $@

# The numeric tests run a second time on PyTorch's portable CPU kernels (no AVX2/AVX512): a tolerance
# must hold for any accumulation order, not only this machine's.
test: setup
	$(BIN)/python -m pytest -n 2 --dist loadscope -q
	ATEN_CPU_CAPABILITY=default $(BIN)/python -m pytest -n 2 --dist loadscope -q -m numeric

demo: setup
	$(BIN)/vebi demo

bench: setup
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info

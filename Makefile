# The two commands of the README: `make demo` and `make test`. Both install everything first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.robustlab-installed

.PHONY: install demo test bench clean

# torch is pinned and installed first, so no unpinned requirement ever pulls a multi-GB CUDA build;
# torchvision is never installed.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/robustlab demo

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/train_step.py --model small_cnn --batch-size 128

clean:
	rm -rf $(VENV) runs .pytest_cache

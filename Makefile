# Two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch and torchvision come from the package index, together, so that they match.
# torch>=2.14 keeps pip from taking the CPU-only torch 2.13.0 file in the machine's
# local wheel folder (find-links), with which torchvision cannot import.
TORCH  := "torch>=2.14" "torchvision>=0.29"

.PHONY: demo test lint docs check-site data clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev]" $(TORCH)
	$(BIN)/python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/smoothsk demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The documentation site (API reference, gallery, the Markdown pages); warnings are errors.
# It installs only into a missing environment: an existing one (perhaps shared with
# another clone) is left as it is, and conf.py documents this checkout's sources.
docs:
	@test -f $(STAMP) || $(MAKE) $(STAMP)
	rm -rf docs/_build docs/api docs/auto_examples docs/sg_execution_times.rst
	$(BIN)/sphinx-build -q -W --keep-going -b html docs docs/_build/html
	@echo "site: docs/_build/html/site.html"

# The built site (make docs first) rendered page by page in headless Chromium: parameters
# on every API page, the gallery's outputs, no dead link (docs/check_site.py).
check-site:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	if [ "$$(id -u)" = "0" ]; then \
		apt-get update && apt-get install -y chromium; \
	else \
		echo "Run as root: apt-get update && apt-get install -y chromium"; exit 1; \
	fi
	$(BIN)/python docs/check_site.py

lint: $(STAMP)
	$(BIN)/ruff check smoothsk tests examples benchmarks

data:
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST is installed in /usr/share/datasets/fashion-mnist"; \
	elif [ "$$(id -u)" = "0" ]; then \
		apt-get update && apt-get install -y dataset-fashion-mnist; \
	else \
		echo "Run as root: apt-get update && apt-get install -y dataset-fashion-mnist"; exit 1; \
	fi

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache docs/_build docs/api docs/auto_examples

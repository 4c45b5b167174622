# dpnb: `make book` builds the book, `make test` runs the tests. Both set everything up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROFILE ?= book
MATHJAX_VERSION := 3.2.2
MATHJAX := $(VENV)/mathjax/node_modules/mathjax/es5/tex-chtml.js
STAMP := $(VENV)/.installed

.PHONY: setup book test test-tiny browser lab clean

setup: $(STAMP) $(MATHJAX)

# The virtual environment, the pinned packages, dpnb itself (editable) and a Jupyter kernel
# inside the venv, so that papermill runs the chapters with this interpreter.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (dpnb)" >/dev/null
	@touch $@

# A local MathJax, so that the HTML renders math offline (npm registry, no CDN).
$(MATHJAX):
	@if command -v npm >/dev/null; then \
	  npm install --silent --no-audit --no-fund --prefix $(VENV)/mathjax mathjax@$(MATHJAX_VERSION); \
	else echo "npm not found: the book will load MathJax from a CDN"; fi

# Headless Chromium for the browser tests (Debian package; needs root or sudo).
browser:
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "install Chromium (apt-get install chromium) to run the browser tests"; fi; fi

book: setup
	$(BIN)/dpnb book --profile $(PROFILE)

test: setup browser
	$(BIN)/ruff check
	$(BIN)/python -m pytest

# The gpu profile's code paths under its --tiny overlay, every chapter that differs from smoke (minutes).
test-tiny: setup
	$(BIN)/python -m pytest -m gpu_tiny tests/test_profiles.py

lab: setup
	$(BIN)/jupyter lab nbs/

clean:
	rm -rf book/_build

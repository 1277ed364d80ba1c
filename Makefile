# Everything a fresh machine needs: `make demo`, `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
# The [torch] extra's torch, asked for exactly first: this release's CPU build is what pip finds on
# this kind of machine; a bare range would pull a multi-GB CUDA build instead.
TORCH ?= 2.13.0

.PHONY: demo test lint setup bench clean contracts browser

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet 'torch==$(TORCH)'
	$(BIN)/python -m pip install --quiet -e '.[dev,flower,torch]'
	touch $(STAMP)

# The devnet L1 node (anvil) from the npm registry, at the version package-lock.json pins; the
# binary comes inside the registry package (--ignore-scripts: nothing else is downloaded).
$(NODE_STAMP): package.json package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund
	touch $(NODE_STAMP)

setup: $(STAMP) $(NODE_STAMP)

# Recompile the contracts into mpsnode/node/l1/contracts/artifacts.json (a test checks they match).
contracts: $(STAMP)
	$(BIN)/python -m mpsnode.node.l1.build

# The layers (import-linter), style (ruff) and types (mypy) first: each must report nothing.
lint: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy mpsnode sequencer verifier genesis

# Debian's chromium and chromedriver, for the explorer's browser tests (scripts/install-browser).
browser:
	scripts/install-browser

test: lint $(NODE_STAMP) browser
	$(BIN)/python -m pytest -q -n 2 tests

demo: setup
	$(BIN)/mpsnode demo

bench: setup
	for b in bench/*.py; do $(BIN)/python $$b; done

clean:
	rm -rf $(VENV) build *.egg-info node_modules

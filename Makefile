# The two commands of the README:
#   make serve   install what running Tollway needs into .venv (not the test extra) and
#                run the proxy (embedded Valkey unless REDIS_URL or store.redis_url is set);
#                prints its one start-up line, then only warnings and errors (JSON on
#                stderr; LOG_LEVEL=INFO for every log line); CONFIG=path picks the config;
#                SERVE_FLAGS='--port 9000' passes options to `tollway serve`
#   make test    install Tollway with its test extra, the tools some tests drive
#                (tests/install-tools.sh: into .tools/, never a system package or service),
#                and run the whole test suite
# Both are idempotent: an install step reruns only when pyproject.toml changes. Installs
# are editable (source edits apply at the next start) and quiet (pip speaks on failure).

PYTHON ?= python3
VENV ?= .venv
CONFIG ?= $(or $(TOLLWAY_CONFIG),config/examples/tollway.yaml)
LOG_LEVEL ?= WARNING
SERVE_FLAGS ?=
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --quiet --disable-pip-version-check

.PHONY: serve test install install-test tools lint bench

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -m venv $(VENV)
	@$(PIP) -e .
	@touch $@

$(BIN)/.installed-test: pyproject.toml
	@$(PYTHON) -m venv $(VENV)
	@$(PIP) -e '.[test]'
	@touch $@ $(BIN)/.installed

install: $(BIN)/.installed

install-test: $(BIN)/.installed-test

serve: install
	@$(BIN)/tollway serve --config $(CONFIG) --log-level $(LOG_LEVEL) $(SERVE_FLAGS)

tools:
	@bash tests/install-tools.sh

test: install-test tools
	$(BIN)/python -m pytest -q

# ruff; the layer contracts of pyproject.toml [tool.importlinter] (lint-imports); mypy on the
# product code. Static tools cannot follow setuptools package-dir, so they read the tree
# through a symlink farm, .lint/tollway/{proxy,limits,config} (gitignored, remade each run).
lint: install-test
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
	@rm -rf .lint && mkdir -p .lint/tollway
	@for p in proxy limits config; do ln -s ../../$$p .lint/tollway/$$p; done
	cd .lint && PYTHONPATH=. ../$(BIN)/lint-imports ../pyproject.toml
	MYPYPATH=.lint $(BIN)/mypy -p tollway.proxy -p tollway.limits -p tollway.config

bench: install-test
	$(BIN)/python -m bench.run

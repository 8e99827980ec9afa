# The two commands of the README:
#   make serve   install Tollway into .venv and run the proxy (embedded Valkey unless
#                REDIS_URL or store.redis_url is set); CONFIG=path picks the config file
#   make test    install Tollway with its test dependencies and run the whole test suite
# Both are idempotent: the install step reruns only when pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
CONFIG ?= $(or $(TOLLWAY_CONFIG),config/examples/tollway.yaml)
BIN := $(VENV)/bin

.PHONY: serve test install tools lint bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

serve: install
	$(BIN)/tollway serve --config $(CONFIG)

# System tools some tests drive (Debian packages); installed only when missing.
tools:
	@bash tests/install-tools.sh

test: install tools
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: install
	$(BIN)/python -m bench.run

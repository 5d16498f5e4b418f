VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
# the Dagster instance the CLI records its runs in and the UI reads (see `make ui`)
# (only `demo` and `ui` use it: the tests make their own instances)
DAGSTER_HOME ?= $(CURDIR)/.dagster

.PHONY: install demo ui chromium test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

demo: install $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/stealwatch simulate --out $(DEMO_DIR)/archive --seed 7 --days 3 --users 300 --faults
	DAGSTER_HOME=$(DAGSTER_HOME) $(VENV)/bin/stealwatch audit --logs $(DEMO_DIR)/archive/logs \
		--model $(DEMO_DIR)/archive/model.skops --reference $(DEMO_DIR)/archive/reference.parquet \
		--train $(DEMO_DIR)/archive/train.parquet --holdout $(DEMO_DIR)/archive/holdout.parquet \
		--canaries $(DEMO_DIR)/archive/canaries.toml \
		--out $(DEMO_DIR)/audit

# the Dagster UI (http://127.0.0.1:3000) on the instance `make demo` and the CLI write to
ui: install $(DAGSTER_HOME)/dagster.yaml
	DAGSTER_HOME=$(DAGSTER_HOME) STEALWATCH_OUT=$(DEMO_DIR)/audit \
		STEALWATCH_LOGS=$(DEMO_DIR)/archive/logs $(VENV)/bin/dagster dev -m pipelines.definitions

# headless Chromium for the browser tests (CI machines start without it)
chromium:
	command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .dagster

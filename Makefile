VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo

.PHONY: install demo test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/stealwatch simulate --out $(DEMO_DIR)/archive --seed 7 --days 3 --users 300 --faults
	$(VENV)/bin/stealwatch audit --logs $(DEMO_DIR)/archive/logs \
		--model $(DEMO_DIR)/archive/model.skops --reference $(DEMO_DIR)/archive/reference.parquet \
		--train $(DEMO_DIR)/archive/train.parquet --holdout $(DEMO_DIR)/archive/holdout.parquet \
		--canaries $(DEMO_DIR)/archive/canaries.toml \
		--out $(DEMO_DIR)/audit

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache

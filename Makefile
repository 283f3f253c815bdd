# bilstm-exp: `make help` lists the targets.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help install run test lint ui clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the pinned dependencies

run: $(STAMP) ## the default experiment on built-in data, tracked in ./mlflow.db
	$(PY) -m bilstm_exp $(ARGS)

test: $(STAMP) ## the whole test suite
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check src tests

ui: $(STAMP) ## the MLflow UI on the default store: http://127.0.0.1:5000
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

clean: ## remove runs, outputs and the environment
	rm -rf $(VENV) mlflow.db mlartifacts outputs multirun

# bilstm-exp: `make help` lists the targets.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# one pytest-xdist worker per core; tests sharing an expensive fixture on one worker (tests/conftest.py)
XDIST := -n auto --dist loadgroup

.PHONY: help install run test test-fast dist postgres lint ui clean browser screenshot plots-screenshot plots-template server

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the pinned dependencies

run: $(STAMP) ## the default experiment on built-in data, tracked in ./mlflow.db
	$(PY) -m bilstm_exp $(ARGS)

test: $(STAMP) browser postgres ## the whole test suite, one pytest-xdist worker per core (CI runs this)
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: $(STAMP) ## the inner loop: no training subprocesses, no servers (about two minutes)
	$(PY) -m pytest -m "not slow and not services" $(XDIST) $(PYTEST_ARGS)

browser: ## Debian's chromium for the UI test (apt-get install when /usr/bin/chromium is missing)
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
		|| echo "make browser: no /usr/bin/chromium and no apt-get as root: tests/test_ui.py will skip"

postgres: ## Debian's PostgreSQL for the team-server tests (scripts/install-postgres.sh: apt-get when initdb is missing)
	@scripts/install-postgres.sh >/dev/null || echo "make postgres: tests/test_team_server.py will skip"

screenshot: $(STAMP) browser ## re-record docs/mlflow-compare.png (the README's run comparison)
	UPDATE_SCREENSHOTS=1 $(PY) -m pytest tests/test_ui.py

plots-screenshot: $(STAMP) browser ## re-record docs/dvc-plots.png (the offline `dvc plots show` page)
	UPDATE_SCREENSHOTS=1 $(PY) -m pytest tests/test_dvc.py -k plots_page

plots-template: ## rebuild src/bilstm_exp/templates/dvc_plots/index.html from the pinned vega releases (needs npm)
	$(PY) scripts/build_plots_template.py

dist: $(STAMP) ## build the wheel and the sdist into dist/ (python -m build; pip install dist/*.whl in your project)
	$(PY) -m build --no-isolation --outdir dist .

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check src tests

server: $(STAMP) ## a local team tracking server: PostgreSQL + MLflow basic auth on http://127.0.0.1:5000 (Ctrl-C stops)
	@scripts/install-postgres.sh >/dev/null
	$(PY) -m bilstm_exp.team.cli start $(ARGS)

ui: $(STAMP) ## the MLflow UI on the default store: http://127.0.0.1:5000
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=$${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false} $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

clean: ## remove runs, outputs and the environment
	rm -rf $(VENV) mlflow.db mlartifacts outputs multirun dvc_plots dist build src/bilstm_exp.egg-info

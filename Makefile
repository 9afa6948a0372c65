# The targets the README uses. `make serve` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SECANTUS := .venv-secantus
# @asyncapi/parser for tests/e2e/test_asyncapi.py (npm; the test installs it too when missing).
NODE_DIR := .node

.PHONY: setup services browser serve test test-unit test-faults lint typecheck check bench screenshots clean

setup: $(VENV)/.installed $(SECANTUS)/.installed $(NODE_DIR)/.installed browser

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

# SecantusDB (GPL-2.0), the MongoDB-speaking test server, lives in its own virtualenv.
$(SECANTUS)/.installed: constraints-secantus.txt
	$(PYTHON) -m venv $(SECANTUS)
	$(SECANTUS)/bin/pip install -q -c constraints-secantus.txt 'secantusdb==0.7.0b3'
	touch $@

# @asyncapi/parser for the AsyncAPI document's test, every npm package pinned by the lock.
$(NODE_DIR)/.installed: tools/asyncapi/package.json tools/asyncapi/package-lock.json
	mkdir -p $(NODE_DIR)
	cp tools/asyncapi/package.json tools/asyncapi/package-lock.json $(NODE_DIR)/
	npm ci --prefix $(NODE_DIR) --no-audit --no-fund
	touch $@

services:
	./scripts/services.sh

# Debian's Chromium and ChromeDriver for the dashboard's browser test (root, apt).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)

serve: $(VENV)/.installed services
	$(BIN)/jobtrail serve

test: setup services
	$(BIN)/pytest --cov=app --cov-branch --cov-report=term:skip-covered -q
	$(BIN)/coverage report --include='app/domain/*' --fail-under=100 --show-missing

# The fault-injection and fuzzing suite in its full form (20 kills over 100,000 events, 30 s
# outages, 10,000 hostile inputs); `make test` runs its short form.
test-faults: setup services
	JOBTRAIL_FAULTS_SCALE=full $(BIN)/pytest -m faults tests/faults tests/fuzz -q -rxXs --durations=30

test-unit: $(VENV)/.installed
	$(BIN)/pytest tests/unit -q

lint: $(VENV)/.installed
	$(BIN)/ruff check app tests
	$(BIN)/lint-imports

typecheck: $(VENV)/.installed
	$(BIN)/mypy

check: lint typecheck test

# Measures, then appends this run's rows to docs/performance.md on purpose (`jobtrail bench`
# itself writes only var/bench-results.json and var/bench-rows.md).
bench: $(VENV)/.installed $(SECANTUS)/.installed services
	$(BIN)/jobtrail bench --markdown var/bench-rows.md
	cat var/bench-rows.md >> docs/performance.md

# Refreshes docs/dashboard.png (README, docs/operator.md) from the browser test's screenshot,
# which the test leaves in test-artifacts/ (it never writes into docs/).
screenshots: setup services
	$(BIN)/pytest -q -p no:randomly tests/e2e/test_dashboard_browser.py
	cp test-artifacts/dashboard.png docs/dashboard.png
	cp test-artifacts/dashboard-job.png docs/dashboard-job.png
	cp test-artifacts/dashboard-jobs.png docs/dashboard-jobs.png

clean:
	rm -rf $(VENV) $(SECANTUS) $(NODE_DIR) .pytest_cache .mypy_cache .ruff_cache .coverage var

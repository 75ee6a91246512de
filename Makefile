# The two commands of the README: `make run` and `make test`. Both create the virtual
# environment on first use, so a fresh machine needs nothing installed by hand.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-slow check format clean crds image

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/backup-repository --dev

# The suite runs on TEST_WORKERS processes (pytest-xdist): most tests wait on a server
# process, a database or gpg rather than on the CPU. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 3

# Azurite, the Azure Blob Storage emulator of the storage tests, pinned in tools/azurite and
# installed with the machine's npm; without npm those tests skip with a reason.
AZURITE := tools/azurite/node_modules/.bin/azurite-blob

$(AZURITE): tools/azurite/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		cd tools/azurite && npm ci --no-audit --no-fund --loglevel=error; \
	else \
		echo "npm not found: the Azure Blob Storage tests will skip"; \
	fi

test: $(STAMP) $(AZURITE)
	$(BIN)/python -m pytest -m "not slow" -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# The long suites (crash rounds, replicas, sustained load, slow clients, long schemathesis
# runs): about 6 minutes, serial (they measure timing and memory). Not part of CI, which
# runs `make test` (with the short variants of the same suites); run them before a release
# and after changes to uploads, locks, storage or the HTTP layer.
test-slow: $(STAMP) $(AZURITE)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

check: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

# The Helm chart carries copies of deploy/crds/ (tests/deploy checks they are identical).
crds:
	cp deploy/crds/backups.riotkit.org_*.yaml deploy/helm/backup-repository/crds/

# Needs a Docker engine (none runs on the development machines of this project).
image:
	docker build -t backup-repository:$$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml) .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache tools/azurite/node_modules

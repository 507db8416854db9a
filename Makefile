# One command to set up and run the loop, one to set up and run the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LINKED := $(VENV)/.linked
TEMPLATES := $(VENV)/.state-templates
# The folders that install as the driftloop package (core/ is driftloop itself, each stage driftloop.<stage>).
PACKAGES := core data_checks training registry serving monitoring flows stack dashboards
EDITABLE := --config-settings editable_mode=strict
# The docs site (mkdocs.yml; the reference pages are generated from the code): a broken link or anchor fails the build.
# NO_MKDOCS_2_WARNING: Material's banner about MkDocs 2.0, not a warning about these docs.
DOCS_BUILD := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

.PHONY: setup system-deps demo stack test test-quick lint clean

$(STAMP): pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The constraints file pins the CPU build of torch; GPU users install their own torch first.
	# Strict editable mode: a tree of links under build/ that type checkers and IDEs can follow (no import hook).
	$(BIN)/pip install --quiet -c constraints/cpu.txt -e '.[dev]' $(EDITABLE)
	touch $(STAMP) $(LINKED)

# A module added or removed changes its folder's time: link the tree again (the dependencies stay as they are).
# (Folders as "core/.": a bare "stack" would name the phony target below, and `make setup` would start the stack.)
$(LINKED): $(STAMP) $(addsuffix /.,$(PACKAGES)) $(filter-out %/__pycache__/,$(wildcard $(addsuffix /*/,$(PACKAGES))))
	$(BIN)/pip install --quiet --no-deps -e . $(EDITABLE)
	touch $(LINKED)

# Empty, already migrated MLflow and Prefect databases that a new state dir starts from (core/state_templates.py):
# under the venv, per library version; without them a state dir migrates its own (seconds), as before.
$(TEMPLATES): $(LINKED)
	$(BIN)/python -m driftloop.state_templates
	touch $(TEMPLATES)

setup: $(LINKED) $(TEMPLATES)

# Prometheus and Alertmanager (Debian packages) for `driftloop stack up`, the alert-rule and integration tests.
# Chromium and its driver: the browser tests open every page of the stack (tests/test_closed_loop.py).
# PostgreSQL's server (initdb, postgres under /usr/lib/postgresql/<major>/bin): `stack.database: postgres` and the
# prediction log's PostgreSQL tests.
system-deps:
	@{ command -v promtool && command -v prometheus && command -v prometheus-alertmanager \
	   && command -v chromium && command -v chromedriver \
	   && { command -v initdb || ls /usr/lib/postgresql/*/bin/initdb; }; } >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus prometheus-alertmanager \
	      chromium chromium-driver postgresql; \
	  else \
	    echo "Prometheus, Alertmanager, Chromium or PostgreSQL is missing: run 'sudo make system-deps' (Debian" \
	      "packages prometheus, prometheus-alertmanager, chromium, chromium-driver, postgresql)"; \
	    exit 1; \
	  fi; }

demo: $(LINKED) $(TEMPLATES)
	$(BIN)/driftloop demo

# The local stack (Prefect server, Prometheus, Alertmanager, model server, receiver, deployments) on 127.0.0.1.
stack: $(LINKED) system-deps
	$(BIN)/driftloop stack up

test: $(LINKED) $(TEMPLATES) system-deps
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(DOCS_BUILD)
	$(BIN)/pytest -q

test-quick: $(LINKED)
	$(BIN)/pytest -q -m "not slow"

lint: $(LINKED)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(DOCS_BUILD)

clean:
	rm -rf .driftloop

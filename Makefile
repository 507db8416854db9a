# One command to set up and run the loop, one to set up and run the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export GX_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export MLFLOW_ENABLE_TELEMETRY := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: setup system-deps demo stack test test-quick lint clean

$(STAMP): pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The constraints file pins the CPU build of torch; GPU users install their own torch first.
	$(BIN)/pip install --quiet -c constraints/cpu.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Prometheus and Alertmanager (Debian packages) for `driftloop stack up`, the alert-rule and integration tests.
system-deps:
	@{ command -v promtool && command -v prometheus && command -v prometheus-alertmanager; } >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus prometheus-alertmanager; \
	  else \
	    echo "Prometheus or Alertmanager is missing: run 'sudo make system-deps' (Debian packages prometheus, prometheus-alertmanager)"; \
	    exit 1; \
	  fi; }

demo: $(STAMP)
	$(BIN)/driftloop demo

# The local stack (Prefect server, Prometheus, Alertmanager, model server, receiver, deployments) on 127.0.0.1.
stack: $(STAMP) system-deps
	$(BIN)/driftloop stack up

test: $(STAMP) system-deps
	$(BIN)/ruff check .
	$(BIN)/pytest -q

test-quick: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf .driftloop

# radlake — the two commands a newcomer runs: `make demo` and `make test`.
# Prerequisites: Python 3.11+, Java 17+, make. Everything else is installed by `make setup`
# into .venv (pinned by constraints.txt) and, once, the Delta Lake jars beside it.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_DIR ?= .radlake/demo-archive
DEMO_STUDIES ?= 24
# The demo's archive: Schmorl's nodes in 70 % of vertebrae (synth default 20 %), an enriched training
# archive as a site would label for a rare finding: 24 studies give the second stage about 250 node
# views to learn from on a CPU (end-to-end sensitivity at 1 FP per frame, 35 % and batches of 16: 0.36;
# 70 % and batches of 8: 0.60).
DEMO_NODE_FRACTION ?= 0.7
# Extra options of `radlake demo`, e.g. DEMO_ARGS=--verbose: the libraries' and Spark's output on the terminal
# instead of in .radlake/logs/.
DEMO_ARGS ?=
PYTEST_ARGS ?=
# make test and make test-fast run the test files on this many pytest-xdist workers (each file on one
# worker, the files over the session's pipeline run together: tests/conftest.py); TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2

.PHONY: setup check-prereqs demo test test-fast cluster-test connect-test bench ui-screenshots lint clean clean-all

# The last step compiles radlake's own bytecode (only what changed): with PYTHONDONTWRITEBYTECODE set, as on
# some CI images, every process (each command, each Spark Python worker) would compile lib/'s modules again.
setup: check-prereqs $(VENV)/.radlake-installed $(VENV)/share/radlake/jars/COORDINATE
	@$(BIN)/python -m compileall -q lib >/dev/null

check-prereqs:
	@$(PYTHON) -c 'import sys; v = sys.version_info; sys.exit(0 if v >= (3, 11) else "radlake needs Python 3.11+, found %d.%d (set PYTHON=python3.x)" % v[:2])'
	@command -v java >/dev/null 2>&1 || { echo "radlake needs Java 17+ (java not found on PATH)"; exit 1; }
	@java -version 2>&1 | awk -F'"' '/version/ { split($$2, v, "."); if (v[1] < 17) { print "radlake needs Java 17+, found " $$2; exit 1 } }'

# The venv is rebuilt when the pins or the project metadata change. pip installs without compiling
# bytecode, then compileall compiles it on every core (pip compiles on one: from a warm cache, 213 s ->
# 119 + 54 s on 2 cores). As pip does, a file this Python cannot compile is skipped (torch ships one for 3.12).
$(VENV)/.radlake-installed: constraints.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24" -c constraints.txt
	$(BIN)/python -m pip install --quiet --no-compile -c constraints.txt -e '.[local,test]'
	@$(BIN)/python -m compileall -qq -j 0 $(VENV)/lib || true
	@touch $@

# Delta Lake jars for the installed pyspark/delta-spark, from ~/.m2 or Maven Central (once).
$(VENV)/share/radlake/jars/COORDINATE: $(VENV)/.radlake-installed
	$(BIN)/radlake setup-jars

demo: setup
	$(BIN)/radlake demo --out $(DEMO_DIR) --studies $(DEMO_STUDIES) --set synth.node_fraction=$(DEMO_NODE_FRACTION) $(DEMO_ARGS)

# --durations: the 15 slowest tests, printed at the end of every run.
test: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --durations=15 $(PYTEST_ARGS)

# Everything but the tests marked slow (the whole pipeline, trainings, sweeps, stops).
test-fast: setup
	$(BIN)/python -m pytest -m 'not slow and not cluster and not connect' -n $(TEST_WORKERS) --durations=15 $(PYTEST_ARGS)

# A standalone Spark master and worker on 127.0.0.1 (pyspark's spark-class), and radlake's commands on it
# with local_mode: false: ingest, labels, both trainings (DDP on the executor), crops, score (9 to 13 min on 2 cores).
cluster-test: setup
	$(BIN)/python -m pytest -m cluster tests/cluster $(PYTEST_ARGS)

# A Spark Connect server on 127.0.0.1 (pyspark's spark-submit, the Delta jars), and radlake's commands as its
# clients (--set spark.remote=sc://...): ingest, labels import, crops and score, each table compared row for row
# with a classic local run of the same inputs.
connect-test: setup
	$(BIN)/python -m pytest -m connect tests/connect $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m bench

# The MLflow UI in a real browser (headless Chromium: apt-get install -y chromium): screenshots of a score run,
# its review PNG, the model version it scored with and the experiment, each page checked, in bench/results/ui/.
# UI_STORE=.radlake shows the demo's runs; by default a small store is built once in .radlake/ui-store.
UI_STORE ?=
ui-screenshots: setup
	$(BIN)/python -m bench.ui_screenshots $(if $(UI_STORE),--store $(UI_STORE))

lint: setup
	$(BIN)/python -m ruff check lib tests jobs bench notebooks

clean:
	rm -rf .radlake .pytest_cache

clean-all: clean
	rm -rf $(VENV)

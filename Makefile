# prefork: `make demo` runs the main job, `make test` the whole suite, `make bench` the benchmarks.
# Each target builds .venv first (from Debian's /usr/bin/python3 when present, so that the venv can be
# run by other users such as `nobody`) and reinstalls the project when pyproject.toml changes.

PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-tcpserver bench-supervision bench-readiness bench-multilog bench-scrape lint clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python -m prefork.demo

test: $(STAMP)
	$(VENV)/bin/ruff check prefork control metrics tests loadtest
	$(VENV)/bin/mypy -p prefork
	$(VENV)/bin/python -m pytest -n auto -q

# Each bench writes its JSON, report and chart to loadtest/results/NAME-TIMESTAMP/ (or --out DIR in *_ARGS);
# add --publish to *_ARGS to rewrite the committed report and chart (loadtest/*.md, *.png).
bench: bench-tcpserver bench-supervision bench-readiness bench-multilog bench-scrape

bench-tcpserver: $(STAMP)
	$(VENV)/bin/python -m pip install -q -e '.[test,bench]'
	$(VENV)/bin/python -m loadtest.runner $(BENCH_ARGS)

bench-supervision: $(STAMP)
	$(VENV)/bin/python -m pip install -q -e '.[test,bench]'
	$(VENV)/bin/python -m loadtest.supervision $(SUPERVISION_ARGS)

bench-readiness: $(STAMP)
	$(VENV)/bin/python -m pip install -q -e '.[test,bench]'
	$(VENV)/bin/python -m loadtest.readiness $(READINESS_ARGS)

bench-multilog: $(STAMP)
	$(VENV)/bin/python -m pip install -q -e '.[test,bench]'
	$(VENV)/bin/python -m loadtest.multilog_bench $(MULTILOG_ARGS)

bench-scrape: $(STAMP)
	$(VENV)/bin/python -m pip install -q -e '.[test,bench]'
	$(VENV)/bin/python -m loadtest.scrape_bench $(SCRAPE_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check prefork control metrics tests loadtest
	$(VENV)/bin/mypy -p prefork

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

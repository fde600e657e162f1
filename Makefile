# Two commands on a fresh machine (see README):
#   make course   install, execute every chapter with its defaults (papermill), build the book
#   make test     install, then run the tests (unit, chapters, book build, browser)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: course test install browser go

$(VENV)/installed: requirements.txt constraints.txt tools/install.sh
	bash tools/install.sh $(VENV)
	touch $@

install: $(VENV)/installed

# Headless Chromium for the browser test: Debian's package (playwright drives it, no download).
browser:
	@command -v chromium >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

# Go's text/template for the Ollama Modelfile test: Debian's package, Ollama's own template engine.
go:
	@command -v go >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q golang-go; }

course: install browser
	$(PY) -m tools.course all

# Two pytest-xdist workers (2 cores here), whole files each, the longest first (tests/conftest.py).
TEST_WORKERS ?= 2

test: install browser go
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# Two commands do everything on a fresh Debian machine (as root): `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: demo test lint matrix bench docs venv system-deps clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[demo]'
	touch $@

venv: $(VENV)/.installed

$(VENV)/.test-installed: $(VENV)/.installed pyproject.toml
	$(PIP) install -q -e '.[demo,test]'
	touch $@

# wrk and nginx drive the real-load tests, systemd-analyze verifies the shipped unit, promtool
# (Debian's prometheus) checks the example alert rules; installed from Debian's packages when missing.
system-deps:
	@command -v wrk >/dev/null 2>&1 && command -v systemd-analyze >/dev/null 2>&1 \
		&& command -v promtool >/dev/null 2>&1 \
		&& { command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx; } || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light systemd prometheus >/dev/null \
		|| DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx systemd prometheus >/dev/null; }

# ruff (lint and format) and mypy, as CI runs them.
lint: $(VENV)/.test-installed
	$(PIP) install -q -e '.[lint]'
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy hardened_worker

demo: venv
	@echo "serving examples/demo_app.py on http://$(HOST):$(PORT) (Ctrl+C stops)"
	$(VENV)/bin/gunicorn demo_app:app --chdir examples -k hardened_worker.Worker -w 2 \
		-b $(HOST):$(PORT) --graceful-timeout 20

test: $(VENV)/.test-installed system-deps
	$(PY) -m pytest -q -p no:cacheprovider --durations=20

# The version matrix (noxfile.py): the pure tests and the real-process set on Python 3.10 (lowest
# gunicorn/uvicorn), 3.12 and 3.13 (highest), each in its own virtualenv outside the checkout.
# Interpreters from PATH or pyenv (~/.pyenv/versions); a missing one fails the run.
matrix: $(VENV)/.test-installed system-deps
	$(PIP) install -q -e '.[matrix]'
	$(VENV)/bin/nox -s matrix

bench: $(VENV)/.test-installed system-deps
	$(PIP) install -q -e '.[bench]'
	$(PY) -m bench all

# The documentation site (mkdocs.yml, docs/) on http://127.0.0.1:8000, rebuilt as you edit.
# Screenshots of the built pages: $(PY) docs/screenshots.py (needs chromium).
docs: $(VENV)/.test-installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

clean:
	rm -rf $(VENV) build *.egg-info

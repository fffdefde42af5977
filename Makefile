# Two commands do all the set-up on a fresh Debian/Ubuntu machine:
#   make demo   installs everything and runs the demo
#   make test   installs everything and runs the tests
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := redis-server orthanc orthanc-dicomweb dcmtk dicom3tools chromium postgresql iproute2
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench-ingest system-deps install lock

demo: install
	$(VENV)/bin/dicom-node demo

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/ruff format --check .

# Debian packages: the broker, the archive, the sender, the validator, and the
# browser of the dashboard's test (Playwright drives Debian's chromium).
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

# Development and CI install the tested set of versions (requirements/dev.txt, made by
# make lock) with the CPU build of torch that constraints.txt pins.
$(STAMP): pyproject.toml constraints.txt requirements/dev.txt | system-deps
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -c requirements/dev.txt -e '.[worker,dev]'
	touch $(STAMP)

# The lock files: the node's install (no torch, MONAI, SciPy, highdicom), the worker's
# (torch itself left to the machine: CPU or the CUDA build its driver needs), and the
# development set CI installs. Hashes let an image build refuse a changed file.
LOCK := $(VENV)/bin/pip-compile -q --no-emit-index-url --no-emit-find-links --strip-extras \
	-c constraints.txt
lock: install
	$(LOCK) --generate-hashes -o requirements/node.txt pyproject.toml
	$(LOCK) --generate-hashes --unsafe-package torch --extra worker -o requirements/worker.txt pyproject.toml
	$(LOCK) --extra worker --extra dev -o requirements/dev.txt pyproject.toml

install: system-deps $(STAMP)

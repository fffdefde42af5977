# Two commands do all the set-up on a fresh Debian/Ubuntu machine:
#   make demo   installs everything and runs the demo
#   make test   installs everything and runs the tests
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := redis-server orthanc orthanc-dicomweb dcmtk dicom3tools chromium plastimatch \
	poppler-utils
STAMP := $(VENV)/.installed
# The OHIF viewer of the viewer test: the built app (dist/) of the npm package, unpacked
# into an ignored folder; npm pack fetches the one tarball, none of its build dependencies.
OHIF_VERSION := 3.13.2
OHIF_DIR := .ohif
OHIF_STAMP := $(OHIF_DIR)/.installed-$(OHIF_VERSION)

.PHONY: demo test lint bench-ingest system-deps install

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

# Debian packages: the broker, the archive, the sender, the validator, the browser of
# the dashboard's and viewer's tests (Playwright drives Debian's chromium), and the
# readers that check the results: plastimatch (RTSTRUCT), pdftotext (the PDF report).
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

# constraints.txt pins the CPU build of torch for development and CI.
$(STAMP): pyproject.toml constraints.txt | system-deps
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

$(OHIF_STAMP): | system-deps
	@command -v npm >/dev/null || { echo "npm (Node.js) is needed to fetch the OHIF viewer"; exit 1; }
	rm -rf $(OHIF_DIR) && mkdir -p $(OHIF_DIR)
	cd $(OHIF_DIR) && npm pack --silent @ohif/app@$(OHIF_VERSION) >/dev/null \
	  && tar xzf ohif-app-$(OHIF_VERSION).tgz && rm ohif-app-$(OHIF_VERSION).tgz
	test -f $(OHIF_DIR)/package/dist/index.html
	touch $@

install: system-deps $(STAMP) $(OHIF_STAMP)

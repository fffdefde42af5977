# Two commands do all the set-up on a fresh Debian/Ubuntu machine:
#   make demo   installs everything and runs the demo
#   make test   installs everything and runs the tests
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := redis-server orthanc orthanc-dicomweb dcmtk dicom3tools chromium postgresql iproute2 \
	prometheus systemd podman runc debootstrap uidmap plastimatch poppler-utils
STAMP := $(VENV)/.installed
# The OHIF viewer of the viewer test: the built app (dist/) of the npm package, unpacked
# into an ignored folder; npm pack fetches the one tarball, none of its build dependencies.
OHIF_VERSION := 3.13.2
OHIF_DIR := .ohif
OHIF_STAMP := $(OHIF_DIR)/.installed-$(OHIF_VERSION)

.PHONY: demo test lint bench-ingest system-deps install lock container-base container-images container-test

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
# the dashboard's and viewer's tests (Playwright drives Debian's chromium), the readers
# that check the results: plastimatch (RTSTRUCT), pdftotext (the PDF report), PostgreSQL
# (the state DB's tests), and for the deployment's tests promtool (prometheus),
# systemd-analyze, and podman with runc and debootstrap (the images, built without a registry).
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
# development set CI installs. Resolved for the images' interpreter (Debian 12's Python
# 3.11.2, x86_64); hashes let an image build refuse a changed file. uv reaches PyPI with
# the system's CA bundle, and takes the CPU torch from this machine's wheel folder.
LOCK := SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt $(VENV)/bin/uv pip compile -q \
	pyproject.toml -c constraints.txt --find-links /opt/wheels \
	--python-version 3.11.2 --python-platform x86_64-manylinux_2_28
lock: install
	$(LOCK) --generate-hashes -o requirements/node.txt
	$(LOCK) --generate-hashes --extra worker --no-emit-package torch -o requirements/worker.txt
	$(LOCK) --extra worker --extra dev -o requirements/dev.txt

# Containers, with podman (no Docker daemon needed). No registry is needed either: the
# base image is made by debootstrap from the Debian mirror apt already uses, the
# companions (Redis, PostgreSQL, Orthanc, OHIF) from Debian's and npm's packages
# (deploy/compose.offline.yaml), the CPU build of torch from this machine's wheel folder.
export CONTAINERS_CONF := $(CURDIR)/deploy/podman/containers.conf
BASE_IMAGE ?= localhost/dicom-node-base:bookworm
DEBIAN_MIRROR ?= $(shell sed -n 's/^URIs: *//p;s/^deb  *\(http[^ ]*\).*/\1/p' \
	/etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -1)
COMPOSE := $(VENV)/bin/podman-compose -f deploy/compose.yaml -f deploy/compose.offline.yaml

container-base: system-deps
	podman image exists $(BASE_IMAGE) || { \
	  rootfs=$$(mktemp -d) && \
	  debootstrap --variant=minbase bookworm $$rootfs/root $(DEBIAN_MIRROR) >/dev/null && \
	  rm -rf $$rootfs/root/usr/share/doc/* $$rootfs/root/usr/share/man/* \
	    $$rootfs/root/var/cache/apt/*.bin $$rootfs/root/var/lib/apt/lists/* && \
	  tar -C $$rootfs/root -c . | podman import - $(BASE_IMAGE) && rm -rf $$rootfs; }

container-images: install container-base
	cp /opt/wheels/torch-2.13.0+cpu-*.whl deploy/wheels/ 2>/dev/null || true
	cp /etc/ssl/certs/ca-certificates.crt deploy/ca/build-host.crt
	test -s deploy/ohif/ohif-app.tgz || { \
	  tmp=$$(mktemp -d) && (cd $$tmp && npm pack -q @ohif/app@$(OHIF_VERSION)) && \
	  mv $$tmp/ohif-app-$(OHIF_VERSION).tgz deploy/ohif/ohif-app.tgz && rm -rf $$tmp; }
	podman build -q --format docker -f deploy/Containerfile --target node --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	  -t localhost/dicom-node:node .
	podman build -q --format docker -f deploy/Containerfile --target worker --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	  --build-arg TORCH_INDEX_URL= -t localhost/dicom-node:worker .
	for target in redis postgres orthanc ohif; do \
	  podman build -q --format docker -f deploy/services/Containerfile --target $$target \
	    --build-arg BASE_IMAGE=$(BASE_IMAGE) -t localhost/dicom-node-$$target:debian deploy || exit 1; \
	done

# Builds the images, brings the compose stack up, sends a study from this machine and
# waits for its SEG and SR in the stack's Orthanc, then takes the stack down.
container-test: container-images
	$(VENV)/bin/python -m pytest -q tests/deploy/test_compose.py

$(OHIF_STAMP): | system-deps
	@command -v npm >/dev/null || { echo "npm (Node.js) is needed to fetch the OHIF viewer"; exit 1; }
	rm -rf $(OHIF_DIR) && mkdir -p $(OHIF_DIR)
	cd $(OHIF_DIR) && npm pack --silent @ohif/app@$(OHIF_VERSION) >/dev/null \
	  && tar xzf ohif-app-$(OHIF_VERSION).tgz && rm ohif-app-$(OHIF_VERSION).tgz
	test -f $(OHIF_DIR)/package/dist/index.html
	touch $@

install: system-deps $(STAMP) $(OHIF_STAMP)

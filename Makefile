# Set-up and entry points. `make demo` and `make test` create everything they need on a fresh
# Debian/Ubuntu machine: system packages (where apt-get may be used), uv, the locked environment.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DAGSTER_HOME ?= $(CURDIR)/.demo/dagster_home


.PHONY: help setup system-deps demo demo-cluster test typecheck dev validate bench clean

help:
	@echo "make demo   run the whole pipeline offline on a generated crawl (then: make dev)"
	@echo "make demo-cluster  the same as a fleet on this machine: Postgres, TLS scheduler, 2 workers, S3 peer"
	@echo "make test   the whole test suite"
	@echo "make dev    the UI on \$$DAGSTER_HOME ($(DAGSTER_HOME)), with the demo's image web if it is the demo's"
	@echo "make bench  the benchmarks in benchmarks/ (slow; prints one figure per contender)"

# gcld3 compiles against protobuf: it needs protoc and the protobuf headers to build.
system-deps:
	@if command -v protoc >/dev/null && [ -e /usr/include/google/protobuf/message.h ]; then exit 0; fi; \
	if command -v apt-get >/dev/null; then \
	  echo "installing protobuf-compiler and libprotobuf-dev (needed to build gcld3)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq protobuf-compiler libprotobuf-dev; \
	else \
	  echo "gcld3 needs protoc and the protobuf headers: install them with your package manager (e.g. 'brew install protobuf')"; exit 1; \
	fi

$(VENV)/.synced: pyproject.toml uv.lock
	@command -v uv >/dev/null || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen
	@touch $@

setup: system-deps $(VENV)/.synced

demo: setup
	env -u DAGSTER_HOME $(VENV)/bin/cah demo --workdir .demo

# Needs PostgreSQL on 127.0.0.1:5432 (trust auth for postgres) and the dev group's moto: `make test`'s set-up.
demo-cluster: setup
	env -u DAGSTER_HOME $(VENV)/bin/cah demo --cluster --workdir .demo-cluster

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q --durations=15

# mypy alone, on cah_resources and cah_assets (config in pyproject.toml); `make test` runs it too.
typecheck: setup
	$(VENV)/bin/mypy

dev: setup
	@mkdir -p "$(DAGSTER_HOME)" && [ -e "$(DAGSTER_HOME)/dagster.yaml" ] || cp dagster.yaml "$(DAGSTER_HOME)/dagster.yaml"
	DAGSTER_HOME="$(DAGSTER_HOME)" $(VENV)/bin/cah dev

validate: setup
	$(VENV)/bin/dagster definitions validate -w workspace.yaml

bench: setup
	@for script in benchmarks/*_bench.py; do echo "== $$script"; $(VENV)/bin/python $$script || exit 1; done

clean:
	rm -rf .demo .demo-cluster data .pytest_cache

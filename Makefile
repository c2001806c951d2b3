# The README's front door. `make run` and `make test` install what is missing first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
AETHER := $(VENV)/bin/aether
PYTEST_ARGS ?=
# `make up PROFILE=production`: the production profile (TLS, Kafka SASL_SSL, auth on; docs/deploy.md).
PROFILE ?=
STACK_PROFILE := $(if $(PROFILE),--profile $(PROFILE))
# The production profile also runs the local OpenID Provider, which bootstrap installs with --oidc.
BOOTSTRAP_PROFILE := $(if $(filter production,$(PROFILE)),--oidc)

.PHONY: help bootstrap run up down status env test bench dashboards settings-doc lock clean

help:
	@echo "make run    - install what is missing, start the whole platform in the foreground (Ctrl-C stops it)"
	@echo "make up     - the same in the background; returns when everything is ready (PROFILE=production: TLS, SASL, auth)"
	@echo "make down   - stop everything the stack started"
	@echo "make env    - print export lines for the running stack"
	@echo "make test   - install and start what the tests need, run the whole suite"
	@echo "make bench  - run every benchmark and rewrite BENCHMARKS.md"
	@echo "make lock   - re-pin the whole dependency tree (requirements*.lock) after changing pyproject.toml"
	@echo "make settings-doc - regenerate docs/settings.md from the settings models"

bootstrap:
	@devstack/bootstrap.sh $(BOOTSTRAP_PROFILE)

run: bootstrap
	@$(AETHER) stack up --foreground $(STACK_PROFILE)

up: bootstrap
	@$(AETHER) stack up $(STACK_PROFILE)

down:
	@if [ -x $(AETHER) ]; then $(AETHER) stack down $(STACK_PROFILE); else echo "nothing to stop (no .venv)"; fi

status: bootstrap
	@$(AETHER) stack status $(STACK_PROFILE)

env: bootstrap
	@$(AETHER) stack env $(STACK_PROFILE)

# The suite starts its own API processes; the stack gives it Postgres, Kafka and Prometheus.
test:
	@devstack/bootstrap.sh --browser
	@$(AETHER) stack up --services infra
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc = 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench:
	@devstack/bootstrap.sh --bench
	@$(AETHER) stack up --services infra
	@$(PY) -m bench

dashboards: bootstrap
	@$(PY) -m dashboards_py

# The whole dependency tree, pinned with hashes, from pyproject.toml: requirements.lock (with the
# test extra; bootstrap installs .venv from it) and requirements-image.lock (runtime only, the same
# versions; the Dockerfile installs from it). Run it after changing a dependency; the suite fails
# while the locks and pyproject.toml disagree. uv keeps every version already locked unless
# pyproject.toml needs another, so re-running it changes only what changed.
UV_VERSION := 0.13.8
LOCK_ARGS := --universal --python-version 3.11 --generate-hashes --custom-compile-command "make lock" --quiet
lock:
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	@$(PY) -m pip install -q "uv==$(UV_VERSION)"
	$(VENV)/bin/uv pip compile pyproject.toml --extra test $(LOCK_ARGS) -o requirements.lock
	$(VENV)/bin/uv pip compile pyproject.toml -c requirements.lock $(LOCK_ARGS) -o requirements-image.lock

# docs/settings.md from the settings models; the suite fails when it is stale.
settings-doc: bootstrap
	@$(PY) -m aether_platform.settings_doc

clean: down
	rm -rf .stack

# Sekha gateway. `make run` serves both services; `make test` runs the whole suite.
# Every target creates/updates .venv first, so a fresh clone needs nothing else.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch. On a machine without a local wheel, point pip at the CPU index:
#   make TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" test
TORCH_VERSION ?= 2.13.0
TORCH_PIP_ARGS ?=
STAMP := $(VENV)/.installed
PROTO_OUT := clients/python
# Go code: Debian's protoc-gen-go and protoc-gen-go-grpc (see clients/go/README.md).
GO_PROTO_OUT := clients/go
GO_MODULE := sekha.dev/gateway/clients/go
PROTOS := $(shell find protos -name '*.proto')
PYTEST_ARGS ?=

.PHONY: install run test test-fast proto proto-baseline proto-check lint bench bench-quick clean

install: $(STAMP)

# Three distributions, one venv, each installed editable in one pip call (so pip resolves the
# gateway's `sekha-client` requirement to the checkout): the client (clients/python), the CLI
# (clients/cli) and the services with their runtime (this directory).
$(STAMP): pyproject.toml clients/python/pyproject.toml clients/cli/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "torch==$(TORCH_VERSION)" $(TORCH_PIP_ARGS)
	$(PIP) install -q -e clients/python -e clients/cli -e ".[local,dev]"
	@touch $(STAMP)

run: $(STAMP)
	$(PY) -m sekha_runtime.devserver

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The unit tier: domain tests, no service process, toolchain or model load (the tiers: conftest.py).
# Hypothesis's pytest plugin imports all of Hypothesis (about 1 s) at the end of every run, and no
# unit test uses it.
test-fast: $(STAMP)
	$(PY) -m pytest tests/unit -m "not slow and not subprocess" -p no:hypothesispytest -q $(PYTEST_ARGS)

proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$(PROTO_OUT) --grpc_python_out=$(PROTO_OUT) \
		--pyi_out=$(PROTO_OUT) $(PROTOS)
	$(PY) -m grpc_tools.protoc -Iprotos --plugin=protoc-gen-go=$$(command -v protoc-gen-go) \
		--plugin=protoc-gen-go-grpc=$$(command -v protoc-gen-go-grpc) \
		--go_out=$(GO_PROTO_OUT) --go_opt=module=$(GO_MODULE) \
		--go-grpc_out=$(GO_PROTO_OUT) --go-grpc_opt=module=$(GO_MODULE) $(PROTOS)

# The released contract `buf breaking` holds the protos to (tests/unit/test_proto_breaking.py):
# refresh it when a contract version is released, and only while that test passes.
proto-baseline: $(STAMP)
	$(VENV)/bin/buf build protos --exclude-source-info -o protos/baseline/contract.binpb

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy router_service embedding_service sekha_runtime clients/python/sekha clients/cli/sekha_cli

bench: $(STAMP)
	$(PY) -m bench.run

bench-quick: $(STAMP)
	$(PY) -m bench.run --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

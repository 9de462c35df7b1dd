SHELL := /bin/bash
# The README's two commands are `make demo` and `make test`; .ci/run calls `make test`.
# Every target installs what it needs first (scripts/install-deps.sh is idempotent).

SWIFT ?= swift
RELEASE_BIN := .build/release
PYTEST := python3 -m pytest
FUZZ_SECONDS ?= 30

.PHONY: deps build release demo test unit integration integration-fast fuzz fuzz-build tsan bench clean

deps:
	./scripts/install-deps.sh

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release

demo: release
	./scripts/demo.sh

## Everything CI runs: unit tests, integration tests against the release binaries,
## bounded fuzzing (PROXY protocol and ClientHello, config loader, HTTP/1.1 request and
## response parsers), and the
## integration suite (fast subset) and unit tests again under ThreadSanitizer.
test: deps unit integration fuzz tsan

unit: deps
	$(SWIFT) test --parallel 2>&1 | tail -n 40; exit $${PIPESTATUS[0]}

integration: release
	PROXY_BIN_DIR=$(RELEASE_BIN) $(PYTEST) -q Tests/IntegrationTests

integration-fast: release
	PROXY_BIN_DIR=$(RELEASE_BIN) $(PYTEST) -q -m "not heavy" Tests/IntegrationTests

fuzz-build: deps
	./scripts/fuzz.sh build

fuzz: deps
	./scripts/fuzz.sh run $(FUZZ_SECONDS)

tsan: deps
	$(SWIFT) build --sanitize=thread --scratch-path .build-tsan --product tcp-proxy
	$(SWIFT) build --sanitize=thread --scratch-path .build-tsan --product health-checker
	$(SWIFT) build --sanitize=thread --scratch-path .build-tsan --product lbtool
	$(SWIFT) build --sanitize=thread --scratch-path .build-tsan --product udp-proxy
	$(SWIFT) build --sanitize=thread --scratch-path .build-tsan --product http-proxy
	$(SWIFT) build --sanitize=thread --scratch-path .build-tsan --product redis-proxy
	PROXY_BIN_DIR=.build-tsan/debug PROXY_TSAN=1 $(PYTEST) -q -m "not heavy" Tests/IntegrationTests

bench: release
	./benchmarks/run.sh

clean:
	rm -rf .build .build-tsan .build-fuzz

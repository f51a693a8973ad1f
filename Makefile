GO      ?= go
BIN     := bin/l4lb
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
# Debian packages the integration tests and benchmarks drive.
DEB_PKGS := haproxy unbound dnsperf nginx-light libnginx-mod-stream iproute2 ca-certificates

.PHONY: all build run test deps lint bench fuzz clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/l4lb

## run: build and start the demo (l4lb on 127.0.0.1:8080 before three demo targets)
run: build
	./$(BIN) demo

## deps: install the Debian packages tests and benchmarks use, when missing
deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

## test: every test, with the race detector, plus a short run of each fuzz target
## (fuzz runs are bounded by count: a -fuzztime duration can end in a spurious
## "context deadline exceeded" from Go's fuzz coordinator, golang/go#75804)
test: deps lint
	$(GO) test -race -count=1 -timeout 10m ./...
	$(GO) test -run '^$$' -fuzz FuzzConfig -fuzztime 150000x ./pkg/config
	$(GO) test -run '^$$' -fuzz FuzzFlags -fuzztime 200000x ./pkg/config
	$(GO) test -run '^$$' -fuzz FuzzReadHeader -fuzztime 500000x ./pkg/proxyproto
	$(GO) test -run '^$$' -fuzz FuzzProgram -fuzztime 300000x ./lb/fastpath
	$(GO) test -run '^$$' -fuzz FuzzServerName -fuzztime 500000x ./pkg/tlshello
	$(GO) test -run '^$$' -fuzz FuzzAdminAPI -fuzztime 100000x ./lb

lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

## bench: the bundled benchmark: l4lb against HAProxy and a direct connection
bench: deps build
	$(GO) run ./benchmarks/cmd/l4lb-bench -l4lb $(BIN)

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzConfig -fuzztime 900000x ./pkg/config
	$(GO) test -run '^$$' -fuzz FuzzFlags -fuzztime 1200000x ./pkg/config
	$(GO) test -run '^$$' -fuzz FuzzReadHeader -fuzztime 3000000x ./pkg/proxyproto
	$(GO) test -run '^$$' -fuzz FuzzProgram -fuzztime 1800000x ./lb/fastpath
	$(GO) test -run '^$$' -fuzz FuzzServerName -fuzztime 3000000x ./pkg/tlshello
	$(GO) test -run '^$$' -fuzz FuzzAdminAPI -fuzztime 600000x ./lb

clean:
	rm -rf bin

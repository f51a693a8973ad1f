GO      ?= go
BIN     := bin/l4lb
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# -s -w: no symbol table or DWARF (34 MB to 24 MB); panics still print
# their stacks.
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)

.PHONY: all build run test test-unit deps lint bench bench-compare fuzz clean generate check-generated deb release

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/l4lb

## run: build and start the demo (l4lb on 127.0.0.1:8080 before three demo targets)
run: build
	./$(BIN) demo

## deps: install what the integration tests, benchmarks and `make generate`
## use (Debian packages), when this machine lacks it; says what and why
deps:
	@bash scripts/deps.sh

## generate: rebuild the kernel programs (lb/fastpath/bpf, lb/dsr/bpf) into the
## committed objects and Go bindings (bpf2go; clang and llvm, with the headers in
## lb/bpf-headers)
generate:
	$(GO) generate ./lb/fastpath ./lb/dsr

## check-generated: the committed kernel objects are what the C sources give
check-generated: generate
	@git diff --exit-code --stat -- lb/fastpath lb/dsr || { echo "the committed kernel objects differ from lb/fastpath/bpf or lb/dsr/bpf: run make generate and commit them"; exit 1; }

# Fuzz targets as NAME:INPUTS:PACKAGE. Runs are bounded by a count of inputs,
# not a duration: a -fuzztime duration can end in a spurious "context deadline
# exceeded" from Go's fuzz coordinator (golang/go#75804). fuzz-each runs each
# target for INPUTS times its argument.
FUZZ_TARGETS = FuzzConfig:150000:./pkg/config FuzzFlags:200000:./pkg/config \
	FuzzReadHeader:500000:./pkg/proxyproto FuzzProgram:300000:./lb/fastpath \
	FuzzTCPProgram:200000:./lb/fastpath FuzzDecap:200000:./lb/dsr \
	FuzzServerName:500000:./pkg/tlshello FuzzAdminAPI:100000:./lb \
	FuzzParse:500000:./lb/bfd FuzzAuth:100000:./lb/bfd \
	FuzzApply:5000:./lb/cluster FuzzClassify:300000:./pkg/quiclb \
	FuzzQUICProgram:100000:./lb/fastpath
fuzz-each = for t in $(FUZZ_TARGETS); do \
	name=$${t%%:*}; rest=$${t\#*:}; n=$${rest%%:*}; pkg=$${rest\#*:}; \
	echo "$(GO) test -run '^$$' -fuzz $$name -fuzztime $$((n * $(1)))x $$pkg"; \
	$(GO) test -run '^$$' -fuzz $$name -fuzztime $$((n * $(1)))x $$pkg || exit 1; \
	done

## test: every test, integration ones included (real daemons, network
## namespaces, kernel programs), with the race detector, plus a short run of
## each fuzz target
test: deps lint check-generated build
	$(GO) test -race -count=1 -timeout 10m -tags integration ./...
	@$(call fuzz-each,1)

## test-unit: the tests that need no root, no packages, no daemon and no
## namespace, in about a minute (make test runs them all, with -race and
## the long ones)
test-unit:
	$(GO) test -short -count=1 ./...

lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags integration ./...
	@# Linux-only code sits in _linux.go files: the client commands build for
	@# other systems, and everything builds for arm64 and 32-bit 386.
	GOOS=darwin $(GO) build -o /dev/null ./cmd/l4lb
	GOOS=darwin $(GO) vet -tags integration ./...
	GOARCH=arm64 $(GO) build ./...
	GOARCH=386 $(GO) vet -tags integration ./...

## bench: the bundled benchmark: l4lb against HAProxy and a direct connection
bench: deps build
	$(GO) run ./benchmarks/cmd/l4lb-bench -l4lb $(BIN)

## bench-compare: l4lb bench's scenarios against direct, HAProxy, nginx,
## nftables and l4lb's socket and kernel paths; table, JSON and plots in
## benchmarks/results (see benchmarks/README.md)
bench-compare: deps build
	$(GO) run ./benchmarks/cmd/l4lb-bench -l4lb $(BIN) -compare benchmarks/results
	$(GO) run ./benchmarks/cmd/l4lb-bench -l4lb $(BIN) -agreement

fuzz:
	@$(call fuzz-each,6)

## deb: dist/l4lb_VERSION_ARCH.deb (static binary, /etc/l4lb/l4lb.yaml as a
## conffile, systemd units, sysctl file, man pages, completions); it starts
## nothing on install
deb:
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o bin/l4lb-static ./cmd/l4lb
	BIN=bin/l4lb-static VERSION=$(VERSION) scripts/deb.sh

## release: static linux/amd64 and linux/arm64 tarballs and SHA256SUMS in
## dist/, stamped with the version git describe gives
release:
	@rm -rf dist/release && mkdir -p dist/release
	@for arch in amd64 arm64; do \
		d=dist/release/l4lb-$(VERSION)-linux-$$arch; mkdir -p $$d; \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -ldflags "$(LDFLAGS)" -o $$d/l4lb ./cmd/l4lb || exit 1; \
		cp -r LICENSE README.md CHANGELOG.md deploy $$d/; \
		tar -C dist/release -czf dist/release/l4lb-$(VERSION)-linux-$$arch.tar.gz l4lb-$(VERSION)-linux-$$arch; \
		rm -rf $$d; \
	done
	cd dist/release && sha256sum *.tar.gz > SHA256SUMS && cat SHA256SUMS

clean:
	rm -rf bin dist

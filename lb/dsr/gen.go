package dsr

// The decapsulation program is restricted C in bpf/, compiled by bpf2go
// into the committed decapbpf_bpfel.{go,o} and decapbpf_bpfeb.{go,o}; `make
// generate` rebuilds them (clang, llvm and libbpf-dev from Debian).
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -tags linux -target bpfel,bpfeb -go-package dsr decapBPF bpf/decap.c -- -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu -O2 -g -Wall -Werror

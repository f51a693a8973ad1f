package dsr

// The decapsulation program is restricted C in bpf/, compiled by bpf2go
// into the committed decapbpf_bpfel.{go,o} and decapbpf_bpfeb.{go,o}; `make
// generate` rebuilds them (clang and llvm from Debian, the headers in
// lb/bpf-headers).
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -tags linux -target bpfel,bpfeb -go-package dsr decapBPF bpf/decap.c -- -nostdlibinc -I../bpf-headers -O2 -g -Wall -Werror

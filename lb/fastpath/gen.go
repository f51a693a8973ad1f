package fastpath

// The kernel programs are restricted C in bpf/, compiled by bpf2go into the
// committed fastpathbpf_bpfel.{go,o} and fastpathbpf_bpfeb.{go,o}, so that
// building l4lb needs no C toolchain. `make generate` runs this (clang and
// llvm from Debian; the headers are lb/bpf-headers, none of the host's), and
// CI checks the committed output is what the sources give.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -tags linux -target bpfel,bpfeb -go-package fastpath fastpathBPF bpf/fastpath.c -- -nostdlibinc -I../bpf-headers -O2 -g -Wall -Werror

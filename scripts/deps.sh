#!/usr/bin/env bash
# Installs, from Debian, what l4lb's integration tests, benchmarks and
# kernel-program build need, when this machine lacks it. It checks for each
# capability (a program, a module, a header), not for a package name, so a
# machine that has it another way installs nothing.
set -euo pipefail

pkgs=()
need() { # need PACKAGE WHY: when the check before it failed
	pkgs+=("$1")
	echo "deps: will install $1: $2"
}
have() { command -v "$1" >/dev/null 2>&1; }

have haproxy || need haproxy "HAProxy, a PROXY protocol peer and a benchmark contender"
have unbound || need unbound "a real DNS target for the UDP tests"
have dnsperf || need dnsperf "DNS load for the UDP benchmark"
have ip || need iproute2 "network namespaces for the client-IP and port tests"
have nft || need nftables "the kernel's own NAT, the benchmark peer of the TCP kernel fast path"
have iperf3 || need iperf3 "the throughput reference for l4lb bench (make bench-compare)"
have wrk || need wrk "the HTTP rate reference for l4lb bench (make bench-compare)"
have redis-server || need redis-server "a ping-pong target for the l4lb bench agreement check"
have redis-benchmark || need redis-tools "the ping-pong reference for l4lb bench (make bench-compare)"
have bird && have birdc || need bird2 "BIRD 2, the router of the BGP/ECMP namespace test"
have prlimit || need util-linux "prlimit, for the descriptor-limit test"
have openssl || need openssl "openssl s_client, a real TLS client for the TLS listener tests"
have curl || need curl "the README's examples, which a test runs against the demo"
have etcd || need etcd-server "a real etcd cluster for the etcd registry backend's test"
have promtool || need prometheus "promtool, which checks and unit-tests the shipped alerting rules"
have lintian || need lintian "lintian, which checks the Debian package make deb builds"
have man || need man-db "man, which the package test reads the installed pages with"
have chromium || need chromium "a real browser (headless) for the console's test"
if ! have nginx; then
	need nginx-light "nginx, a PROXY protocol peer"
	need libnginx-mod-stream "nginx's stream module, a benchmark contender"
elif ! nginx -V 2>&1 | grep -q -- '--with-stream\b' && [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ]; then
	need libnginx-mod-stream "nginx is here, but without its stream module"
fi
have clang || need clang "to build the kernel programs (make generate, and the check that the committed objects match)"
have llvm-strip || need llvm "llvm-strip, which bpf2go runs on the kernel objects"
[ -e /etc/ssl/certs/ca-certificates.crt ] || need ca-certificates "CA roots for HTTPS health checks"

if [ ${#pkgs[@]} -eq 0 ]; then
	exit 0
fi
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}"

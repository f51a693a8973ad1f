#!/usr/bin/env bash
# Load-test l4lb on this machine in a minute: starts its own echo and sink
# targets and its own l4lb, on ports apart from the demo's (18080, 18081,
# admin 19900), runs l4lb bench's scenarios against it, and stops what it
# started. Usage: scripts/bench-demo.sh [path/to/l4lb]
set -euo pipefail
l4lb=${1:-bin/l4lb}
dir=$(mktemp -d)
pids=()
l4lb_group=
cleanup() {
	# l4lb runs in a session of its own, so its upgraded successor (the
	# --during upgrade run starts one) stops with it.
	[ -n "$l4lb_group" ] && kill -TERM -- "-$l4lb_group" 2>/dev/null || true
	kill "${pids[@]}" 2>/dev/null || true
	wait 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT

"$l4lb" bench target echo --listen tcp://127.0.0.1:19001 & pids+=($!)
"$l4lb" bench target sink --listen tcp://127.0.0.1:19002 & pids+=($!)
cat >"$dir/bench.yaml" <<YAML
admin: {listen: "127.0.0.1:19900"}
listeners:
  - {name: echo, protocol: TCP, port: 18080, bind: [127.0.0.1], target_group: echo}
  - {name: sink, protocol: TCP, port: 18081, bind: [127.0.0.1], target_group: sink}
target_groups:
  - {name: echo, protocol: TCP, targets: [{address: "127.0.0.1:19001"}]}
  - {name: sink, protocol: TCP, targets: [{address: "127.0.0.1:19002"}]}
YAML
setsid "$l4lb" serve --config "$dir/bench.yaml" --log-level warn & l4lb_group=$!
for _ in $(seq 100); do # ready within 10 s
	"$l4lb" targets describe-health --admin 127.0.0.1:19900 --target-group echo >/dev/null 2>&1 && break
	sleep 0.1
done

echo "== requests on 32 keep-alive connections"
"$l4lb" bench tcp-rr 127.0.0.1:18080 --duration 3s --connections 32
echo "== new connections, open loop at 2000/s"
"$l4lb" bench tcp-connect 127.0.0.1:18080 --rate 2000 --duration 3s
echo "== throughput to a sink"
"$l4lb" bench tcp-throughput 127.0.0.1:18081 --duration 3s
echo "== memory per idle connection of l4lb (PID $l4lb_group)"
"$l4lb" bench idle-conns 127.0.0.1:18080 --connections 2000 --pid "$l4lb_group" --duration 5s --settle 2s
echo "== new connections while l4lb upgrades its binary"
"$l4lb" bench tcp-connect 127.0.0.1:18080 --during upgrade --admin 127.0.0.1:19900 --duration 4s
echo "== a protocol's own request (here 4 bytes the echo target returns), drawn as SVG"
printf 'PING' >"$dir/ping.txt"
"$l4lb" bench tcp-rr 127.0.0.1:18080 --request-file "$dir/ping.txt" --response-size 4 --duration 2s --plot "$dir/run.svg"
echo "(the plot was $dir/run.svg, removed with the rest)"

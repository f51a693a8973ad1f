package main

import "github.com/spf13/cobra"

// examples are each command's Examples section, by its command path. A
// test checks that every command has one and that each line of every
// example names a flag the command has.
var examples = map[string]string{
	"l4lb": `  l4lb demo                                  # a listener before three demo targets
  l4lb serve --config /etc/l4lb/l4lb.yaml
  l4lb targets describe-health --target-group default`,
	"l4lb serve": `  l4lb serve --config /etc/l4lb/l4lb.yaml
  l4lb serve --listen tcp://127.0.0.1:18080 --admin 127.0.0.1:19900 \
    --target 127.0.0.1:9001 --target 127.0.0.1:9002,weight=2 --health-interval 2s
  l4lb serve --zone a=10.0.1.5 --zone b=10.0.2.5 --listen tcp://:80 \
    --target 10.0.1.10:8080,zone=a --target 10.0.2.10:8080,zone=b`,
	"l4lb validate": `  l4lb validate --config /etc/l4lb/l4lb.yaml        # the config with every default, or its problems (exit 2)`,
	"l4lb version":  `  l4lb version`,
	"l4lb demo": `  l4lb demo
  l4lb demo --listen 127.0.0.1:28080 --admin 127.0.0.1:29900 --log-format json`,
	"l4lb targets":                 `  l4lb targets describe-health --target-group default`,
	"l4lb targets describe-health": `  l4lb targets describe-health --target-group web -o json`,
	"l4lb targets register": `  l4lb targets register --target-group web --target 10.0.1.12:8080,zone=a,weight=2
  l4lb targets register --admin https://lb1:9900 --token-file /etc/l4lb/token --target-group web --target 10.0.1.12`,
	"l4lb targets agent":      `  l4lb targets agent --admin 10.0.0.5:9900 --target-group web --target 10.0.1.12:8080 --lease 30s   # in the target's systemd unit`,
	"l4lb targets deregister": `  l4lb targets deregister --target-group web --target 10.0.1.12:8080`,
	"l4lb route": `  l4lb route --listener web --src 198.18.0.2:5555
  l4lb route --listener web --src 198.18.0.2:20000-20009 --protocol udp
  l4lb route --listener https --src 198.18.0.2:5555 --sni api.example.com
  l4lb route --listener h3 --quic-dcid 0x000123456789abcdef5f2c11a0b3e4d7`,
	"l4lb reload": `  l4lb reload --admin 127.0.0.1:9900             # as SIGHUP: read the config file again
  l4lb reload --admin 10.0.0.11:9900 --wait      # one node of a rolling reload: back once it announces`,
	"l4lb upgrade": `  l4lb upgrade --admin 127.0.0.1:9900 -o json     # as SIGUSR2: hand over to the binary on disk
  for n in 10.0.0.11 10.0.0.12 10.0.0.13; do l4lb upgrade --admin $n:9900 --wait || break; done`,
	"l4lb bench": `  l4lb bench tcp-rr 127.0.0.1:18080 --duration 10s --connections 32
  l4lb bench tcp-connect 127.0.0.1:18080 --rate 2000 --during upgrade --admin 127.0.0.1:19900
  l4lb bench udp-rr 127.0.0.1:5353 --no-verify`,
	"l4lb bench tcp-throughput": `  l4lb bench tcp-throughput 127.0.0.1:18081 --duration 10s --connections 4   # to a sink target`,
	"l4lb bench tcp-connect": `  l4lb bench tcp-connect 127.0.0.1:18080 --rate 2000
  l4lb bench tcp-connect 127.0.0.1:18080 --during upgrade --admin 127.0.0.1:19900`,
	"l4lb bench tcp-rr": `  l4lb bench tcp-rr 127.0.0.1:18080 --connections 64 --duration 30s
  l4lb bench tcp-rr 127.0.0.1:6379 --request-file ping.txt --response-size 7 --plot run.svg`,
	"l4lb bench udp-rr":     `  l4lb bench udp-rr 127.0.0.1:5353 --rate 10000 --no-verify   # a resolver answers, it does not echo`,
	"l4lb bench udp-pps":    `  l4lb bench udp-pps 127.0.0.1:19003 --size 64 --connections 8`,
	"l4lb bench idle-conns": `  l4lb bench idle-conns 127.0.0.1:18080 --connections 10000 --pid 1234 --duration 30s`,
	"l4lb bench target": `  l4lb bench target echo --listen tcp://127.0.0.1:19001
  l4lb bench target sink --listen tcp://127.0.0.1:19002`,
	"l4lb bgp":        `  l4lb bgp status`,
	"l4lb bgp status": `  l4lb bgp status --admin 127.0.0.1:9900 -o json`,
	"l4lb dsr-target": `  l4lb dsr-target --interface eth0 --vip 198.18.10.1 --gue-port 6080`,
	"l4lb cluster":    `  l4lb cluster status`,
	"l4lb flows": `  l4lb flows --listener web --limit 20          # which node carries a flow, and on which path
  l4lb flows -o json | jq '.[] | select(.path == "dsr")'`,
	"l4lb gen-docs": `  l4lb gen-docs --dir build/docs                # man1/*.1 and completions/, as make deb packs them`,
	"l4lb events": `  l4lb events --follow                         # what happens, as it happens
  l4lb events --since 2026-12-06T10:00:00Z -o json`,
	"l4lb zones":          `  l4lb zones list`,
	"l4lb zones list":     `  l4lb zones list --admin 10.0.0.11:9900 -o json`,
	"l4lb zones shift":    `  l4lb zones shift --away-from a --expires-in 1h   # zone a out of service for an hour`,
	"l4lb zones cancel":   `  l4lb zones cancel a`,
	"l4lb cluster status": `  l4lb cluster status --admin 10.0.0.5:9900 --token-file /etc/l4lb/token -o json`,
	"l4lb kernel":         `  l4lb kernel status`,
	"l4lb kernel status":  `  l4lb kernel status -o json`,
	"l4lb kernel detach":  `  l4lb kernel detach l4lb-1a2b3c4d             # an instance from kernel status`,
}

// addExamples gives each command of the tree its Examples section.
func addExamples(c *cobra.Command) {
	if e, ok := examples[c.CommandPath()]; ok && c.Example == "" {
		c.Example = e
	}
	for _, sub := range c.Commands() {
		addExamples(sub)
	}
}

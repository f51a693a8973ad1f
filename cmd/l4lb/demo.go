package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/l4lb/l4lb/pkg/config"
)

const demoListen = "127.0.0.1:8080"

func newDemo() *cobra.Command {
	var listen, adminAddr, logLevel, logFormat string
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run l4lb on 127.0.0.1:8080 in front of three built-in demo targets",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			var targets []string
			var servers []*http.Server
			for i := 1; i <= 3; i++ {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					return err
				}
				addr := ln.Addr().String()
				name := fmt.Sprintf("demo-target-%d", i)
				hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					fmt.Fprintf(w, "hello from %s (%s); you are %s\n", name, addr, r.RemoteAddr)
				})}
				go hs.Serve(ln)
				servers = append(servers, hs)
				targets = append(targets, addr)
			}
			defer func() {
				for _, s := range servers {
					s.Close()
				}
			}()
			interval, timeout := "1s", "500ms"
			check, rise := "http:///", 2
			o := serveOpts{flags: config.Flags{Listen: []string{"tcp://" + listen}, Targets: targets, Admin: &adminAddr,
				HealthFlags: config.HealthFlags{HealthCheck: &check, HealthInterval: &interval, HealthTimeout: &timeout, HealthyThreshold: &rise}}}
			cfg, hash, err := loadServeConfig(&o)
			if err != nil {
				return err
			}
			log, err := newLogger(logLevel, logFormat, cmd.ErrOrStderr())
			if err != nil {
				return usageError{err}
			}
			// The demo's targets live in this process, and make run waits
			// for it: a new process would orphan both.
			noUpgrade := "the demo does not upgrade: its targets run inside it, and make run waits for this process. Stop it (Ctrl-C) and start it again"
			return runServe(ctx, loaded{cfg: cfg, hash: hash, noUpgrade: noUpgrade}, log, config.DefaultConnectTimeout, func(net.Addr) {
				fmt.Fprintf(out, `
l4lb demo is up: listener %s -> targets %v
Try:
  curl http://%s/                         # answered by one of the three demo targets
  for i in $(seq 6); do curl -s http://%s/; done   # new connections spread over the targets
  curl http://%s/metrics | grep l4lb_      # Prometheus metrics
  open http://%s/ in a browser             # the live console (read-only: the demo's API has no token)
  bin/l4lb targets describe-health --target-group default   # state, reason, flows
  bin/l4lb route --listener tcp-8080 --src 127.0.0.9:5555     # which target, and why
  bin/l4lb targets deregister --target-group default --target %s   # drain one
A dead target never fails a client: a refused connect is retried on the next
target of the flow's Maglev preference list, and health checks (HTTP every 1s)
take it out of rotation.
Press Ctrl-C to stop (in-flight requests finish first).
`, listen, targets, listen, listen, adminAddr, adminAddr, targets[0])
			})
		},
	}
	cmd.Flags().StringVar(&listen, "listen", demoListen, "address of the demo listener")
	cmd.Flags().StringVar(&adminAddr, "admin", config.DefaultAdminListen, "admin API address, or off")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "debug|info|warn|error")
	cmd.Flags().StringVar(&logFormat, "log-format", "console", "json|console")
	return cmd
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/l4lb/l4lb/pkg/api"
	"github.com/l4lb/l4lb/pkg/config"
)

// adminClient talks to a running l4lb's admin API.
type adminClient struct {
	base   string
	token  string
	output string
	http   *http.Client
}

func addClientFlags(cmd *cobra.Command, c *adminClient) {
	cmd.Flags().StringVar(&c.base, "admin", config.DefaultAdminListen, "admin API host:port or URL")
	tokenFile := cmd.Flags().String("token-file", "", "file holding the admin API bearer token")
	cmd.Flags().StringVar(tokenFile, "admin-token-file", "", "serve's name of --token-file")
	cmd.Flags().MarkHidden("admin-token-file")
	cmd.Flags().StringVarP(&c.output, "output", "o", "table", "table|json")
	cmd.PreRunE = func(*cobra.Command, []string) error {
		if c.output != "table" && c.output != "json" {
			return usageError{fmt.Errorf("--output: %q is not table or json", c.output)}
		}
		return c.init(*tokenFile)
	}
}

// init readies the client: the base URL's scheme, the token, and an HTTP
// client.
func (c *adminClient) init(tokenFile string) error {
	if !strings.Contains(c.base, "://") {
		c.base = "http://" + c.base
	}
	c.base = strings.TrimRight(c.base, "/")
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return usageError{fmt.Errorf("--token-file: %w", err)}
		}
		c.token = strings.TrimSpace(string(b))
	}
	// One request per command, on a connection of its own: an idle one
	// kept from before could belong to a process that an upgrade has just
	// retired, and a POST on it would fail.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DisableKeepAlives = true
	c.http = &http.Client{Timeout: 10 * time.Second, Transport: tr}
	return nil
}

// do sends a request and decodes a 2xx JSON answer into out; other answers
// become errors carrying the server's reason.
// request is a request to the API, with the token; a body is JSON.
func (c *adminClient) request(ctx context.Context, method, path string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, usageError{fmt.Errorf("--admin: %w", err)}
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return req, nil
}

func (c *adminClient) do(method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := c.request(context.Background(), method, path, rd)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("admin API: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("admin API: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var e api.Error
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			err = fmt.Errorf("admin API: %s: %s", resp.Status, e.Error)
			if len(e.Errors) > 0 { // one "path: problem" line each
				err = fmt.Errorf("%w\n%s", err, strings.Join(e.Errors, "\n"))
			}
		} else {
			err = fmt.Errorf("admin API: %s", resp.Status)
		}
		if resp.StatusCode == http.StatusBadRequest || resp.StatusCode == http.StatusNotFound {
			return usageError{err}
		}
		return err
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(data, out)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newReload() *cobra.Command {
	var c adminClient
	var w announceWait
	cmd := &cobra.Command{
		Use:   "reload",
		Short: "Reload the config file of a running l4lb (POST /v1/reload); a bad file changes nothing, exit 2",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var cfg api.Config
			if err := c.do(http.MethodPost, "/v1/reload", nil, &cfg); err != nil {
				return err
			}
			if c.output == "json" {
				if err := printJSON(cmd.OutOrStdout(), cfg); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "reloaded %s (sha256 %s) at %s\n", cfg.Path, cfg.SHA256, cfg.LoadedAt.Format(time.RFC3339))
			}
			return w.report(cmd, &c, 0)
		},
	}
	addClientFlags(cmd, &c)
	addWaitFlags(cmd, &w)
	return cmd
}

func newUpgrade() *cobra.Command {
	var c adminClient
	var w announceWait
	cmd := &cobra.Command{
		Use:   "upgrade",
		Short: "Start the l4lb binary again with the listeners of the running one, which then drains (as SIGUSR2)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c.http.Timeout = 2 * time.Minute // the new process has a minute to get ready
			var u api.Upgrade
			if err := c.do(http.MethodPost, "/v1/upgrade", nil, &u); err != nil {
				return err
			}
			c.http.Timeout = 10 * time.Second
			if c.output == "json" {
				if err := printJSON(cmd.OutOrStdout(), u); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "upgraded: pid %d serves, pid %d drains\n", u.NewPID, u.OldPID)
			}
			return w.report(cmd, &c, u.NewPID)
		},
	}
	addClientFlags(cmd, &c)
	addWaitFlags(cmd, &w)
	return cmd
}

func newTargets() *cobra.Command {
	cmd := &cobra.Command{Use: "targets", Short: "Describe, register and deregister targets", Args: cobra.NoArgs}
	cmd.AddCommand(newDescribeHealth(), newRegister(), newDeregister(), newAgent())
	return cmd
}

func newDescribeHealth() *cobra.Command {
	var c adminClient
	var group string
	cmd := &cobra.Command{
		Use:   "describe-health --target-group NAME",
		Short: "Show each target's state, reason and active flows",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var ths []api.TargetHealth
			if err := c.do(http.MethodGet, "/v1/target-groups/"+url.PathEscape(group)+"/targets", nil, &ths); err != nil {
				return err
			}
			if c.output == "json" {
				return printJSON(cmd.OutOrStdout(), ths)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TARGET\tZONE\tWEIGHT\tSTATE\tREASON\tFLOWS\tDESCRIPTION")
			for _, t := range ths {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%d\t%s\n", t.Address, dash(t.Zone), t.Weight, t.State, dash(t.Reason), t.ActiveFlows, t.Description)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&group, "target-group", "", "target group name (required)")
	cmd.MarkFlagRequired("target-group")
	addClientFlags(cmd, &c)
	return cmd
}

func newRegister() *cobra.Command {
	var c adminClient
	var tf targetFlags
	var lease time.Duration
	cmd := &cobra.Command{
		Use:   "register --target-group NAME --target ADDR[,zone=Z][,weight=W]",
		Short: "Register a target",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req, err := tf.request()
			if err != nil {
				return err
			}
			group := tf.group
			if lease > 0 {
				req.LeaseSeconds = max(int(lease.Seconds()), 1)
			}
			var th api.TargetHealth
			if err := c.do(http.MethodPost, "/v1/target-groups/"+url.PathEscape(group)+"/targets", req, &th); err != nil {
				return err
			}
			if c.output == "json" {
				return printJSON(cmd.OutOrStdout(), th)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "registered %s in %s: %s (%s)\n", th.Address, group, th.State, dash(th.Reason))
			if th.LeaseID != 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "on etcd lease %d of %v: register again within it, or l4lb targets agent keeps it\n", th.LeaseID, lease)
			}
			return nil
		},
	}
	tf.add(cmd, &c)
	cmd.Flags().DurationVar(&lease, "lease", 0, "registry backend etcd: tie the registration to an etcd lease of this length; it is deregistered on every node when not renewed")
	return cmd
}

// newAgent is a target's own keeper: it registers the target with a lease,
// renews it every third of the lease, and deregisters on SIGTERM or
// SIGINT. If the target's host dies, the lease lapses and every node
// drains the target.
func newAgent() *cobra.Command {
	var c adminClient
	var tf targetFlags
	var lease time.Duration
	cmd := &cobra.Command{
		Use:   "agent --target-group G --target ADDR [--lease 30s]",
		Short: "Keep a target registered while it runs (registry backend etcd), and deregister it on stop",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req, err := tf.request()
			if err != nil {
				return err
			}
			group := tf.group
			if lease < 3*time.Second {
				return usageError{fmt.Errorf("--lease %v: at least 3s (it is renewed every third)", lease)}
			}
			req.LeaseSeconds = int(lease.Seconds())
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			path := "/v1/target-groups/" + url.PathEscape(group) + "/targets"
			out := cmd.OutOrStdout()
			registered := false
			for {
				var th api.TargetHealth
				if err := c.do(http.MethodPost, path, req, &th); err != nil {
					// The node may be restarting: try again, and let the
					// lease decide, not one failed call.
					fmt.Fprintf(cmd.ErrOrStderr(), "l4lb targets agent: registering %s: %v\n", req.Address, err)
				} else {
					if !registered || th.LeaseID != req.LeaseID {
						fmt.Fprintf(out, "registered %s in %s on etcd lease %d (%v)\n", th.Address, group, th.LeaseID, lease)
					}
					registered, req.LeaseID = true, th.LeaseID
				}
				select {
				case <-ctx.Done():
					if !registered {
						return nil
					}
					if err := c.do(http.MethodDelete, path+"/"+url.PathEscape(req.Address), nil, nil); err != nil {
						return fmt.Errorf("deregistering %s on stop: %w (the lease lapses within %v)", req.Address, err, lease)
					}
					fmt.Fprintf(out, "deregistered %s from %s: draining\n", req.Address, group)
					return nil
				case <-time.After(lease / 3):
				}
			}
		},
	}
	tf.add(cmd, &c)
	cmd.Flags().DurationVar(&lease, "lease", 30*time.Second, "the etcd lease the registration lives on; renewed every third of it")
	return cmd
}

// targetFlags name a target to register: register and agent share them.
type targetFlags struct{ group, spec, quicID string }

// add adds the flags, and the admin client's.
func (f *targetFlags) add(cmd *cobra.Command, c *adminClient) {
	cmd.Flags().StringVar(&f.group, "target-group", "", "target group name (required)")
	cmd.Flags().StringVar(&f.spec, "target", "", "ADDR[,zone=Z][,weight=W] (required)")
	cmd.Flags().StringVar(&f.quicID, "quic-server-id", "", "QUIC and TCP_QUIC groups (required there): the server ID the target's connection IDs carry, 0x and 16 lowercase hex digits")
	cmd.MarkFlagRequired("target-group")
	cmd.MarkFlagRequired("target")
	addClientFlags(cmd, c)
}

// request is the registration the flags describe.
func (f *targetFlags) request() (api.RegisterRequest, error) {
	req, err := parseTargetSpec(f.spec)
	if err != nil {
		return req, usageError{fmt.Errorf("--target: %w", err)}
	}
	req.QUICServerID = f.quicID
	return req, nil
}

func newDeregister() *cobra.Command {
	var c adminClient
	var group, target string
	cmd := &cobra.Command{
		Use:   "deregister --target-group NAME --target ADDR",
		Short: "Deregister a target: no new flows at once, existing ones drain",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := c.do(http.MethodDelete, "/v1/target-groups/"+url.PathEscape(group)+"/targets/"+url.PathEscape(target), nil, nil); err != nil {
				return err
			}
			if c.output == "json" {
				return printJSON(cmd.OutOrStdout(), map[string]string{"target": target, "state": api.StateDraining})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deregistered %s from %s: draining\n", target, group)
			return nil
		},
	}
	cmd.Flags().StringVar(&group, "target-group", "", "target group name (required)")
	cmd.Flags().StringVar(&target, "target", "", "target address (required)")
	cmd.MarkFlagRequired("target-group")
	cmd.MarkFlagRequired("target")
	addClientFlags(cmd, &c)
	return cmd
}

func newRoute() *cobra.Command {
	var c adminClient
	var listener, src, dst, proto, sni, dcid string
	cmd := &cobra.Command{
		Use:   "route --listener NAME --src IP:PORT[-PORT] [--dst IP:PORT] [--protocol tcp|udp] [--sni HOST] | --listener NAME --quic-dcid 0x...",
		Short: "Show which target a flow would get, and why",
		Long: `Show which target a flow would get, and why. With a range of client ports
(--src 198.18.0.2:20000-29999) it shows the target of each flow, one per line.
On a QUIC or TCP_QUIC listener, --quic-dcid shows which target a packet with
that destination connection ID reaches, whatever its source.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dcid != "" {
				var rt api.Route
				if err := c.do(http.MethodGet, "/v1/route?"+url.Values{"listener": {listener}, "quic_dcid": {dcid}}.Encode(), nil, &rt); err != nil {
					return err
				}
				if c.output == "json" {
					return printJSON(cmd.OutOrStdout(), rt)
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintf(tw, "packet	QUIC, destination connection ID %s (listener %s)\n", dcid, rt.Listener)
				fmt.Fprintf(tw, "server ID	%s\n", dash(rt.Hash))
				fmt.Fprintf(tw, "target	%s\n", dash(rt.Target))
				fmt.Fprintf(tw, "target group	%s\n", rt.TargetGroup)
				fmt.Fprintf(tw, "why	%s\n", rt.Why)
				return tw.Flush()
			}
			if src == "" {
				return usageError{fmt.Errorf("--src is required (or --quic-dcid)")}
			}
			ip, lo, hi, isRange, err := parseSourceRange(src)
			if err != nil {
				return usageError{fmt.Errorf("--src: %w", err)}
			}
			q := url.Values{"listener": {listener}, "protocol": {proto}}
			if dst != "" {
				q.Set("dst", dst)
			}
			if sni != "" {
				q.Set("sni", sni)
			}
			routes, err := c.routes(q, ip, lo, hi)
			if err != nil {
				return err
			}
			if isRange {
				return printRoutes(cmd.OutOrStdout(), c.output, routes)
			}
			rt := routes[0]
			if c.output == "json" {
				return printJSON(cmd.OutOrStdout(), rt)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "flow\t%s %s -> %s (listener %s, zone %s)\n", rt.Protocol, rt.Source, rt.Destination, rt.Listener, dash(rt.Zone))
			fmt.Fprintf(tw, "target\t%s\n", dash(rt.Target))
			fmt.Fprintf(tw, "target group\t%s\n", rt.TargetGroup)
			fmt.Fprintf(tw, "retry order\t%s\n", strings.Join(rt.Preference, ", "))
			fmt.Fprintf(tw, "why\t%s\n", rt.Why)
			if rt.AppliedRevision != 0 {
				fmt.Fprintf(tw, "registrations\tetcd revision %d\n", rt.AppliedRevision)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&listener, "listener", "", "listener name (required)")
	cmd.Flags().StringVar(&src, "src", "", "client IP:PORT, or IP:PORT-PORT for each port of a range (required)")
	cmd.Flags().StringVar(&dst, "dst", "", "listener IP:PORT the client reaches (default: the listener's address)")
	cmd.Flags().StringVar(&proto, "protocol", "tcp", "tcp|udp")
	cmd.Flags().StringVar(&sni, "sni", "", "the server name a TLS client asks for, on a listener with SNI rules")
	cmd.Flags().StringVar(&dcid, "quic-dcid", "", "QUIC and TCP_QUIC listeners: a destination connection ID, 0x and hex; shows the target its server ID names")
	cmd.MarkFlagRequired("listener")
	addClientFlags(cmd, &c)
	return cmd
}

// routes asks for the route of each flow from ip's ports lo to hi, a few
// requests at a time, and returns them in port order.
func (c *adminClient) routes(q url.Values, ip netip.Addr, lo, hi int) ([]api.Route, error) {
	// These are GETs, safe to send again on a fresh connection if a kept
	// one has closed: keep connections for the run of them.
	tr := c.http.Transport.(*http.Transport).Clone()
	tr.DisableKeepAlives, tr.MaxIdleConnsPerHost = false, 8
	kc := *c
	kc.http = &http.Client{Timeout: c.http.Timeout, Transport: tr}
	defer tr.CloseIdleConnections()
	routes := make([]api.Route, hi-lo+1)
	errs := make([]error, len(routes))
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(8, len(routes)) {
		wg.Go(func() {
			for i := range next {
				q := maps.Clone(q)
				q.Set("src", netip.AddrPortFrom(ip, uint16(lo+i)).String())
				errs[i] = kc.do(http.MethodGet, "/v1/route?"+q.Encode(), nil, &routes[i])
			}
		})
	}
	for i := range routes {
		next <- i
	}
	close(next)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err // the first: the rest likely say the same
		}
	}
	return routes, nil
}

// parseSourceRange reads IP:PORT, or IP:PORT-PORT (isRange, even when the
// two ports are the same: a range prints as a list).
func parseSourceRange(s string) (ip netip.Addr, lo, hi int, isRange bool, err error) {
	host, ports, err := net.SplitHostPort(s)
	if err != nil {
		return ip, 0, 0, false, fmt.Errorf("want IP:PORT or IP:PORT-PORT, got %q", s)
	}
	if ip, err = netip.ParseAddr(host); err != nil {
		return ip, 0, 0, false, fmt.Errorf("%q is not an IP address", host)
	}
	first, last, isRange := strings.Cut(ports, "-")
	if lo, err = strconv.Atoi(first); err != nil || lo < 0 || lo > 65535 {
		return ip, 0, 0, false, fmt.Errorf("%q is not a port", first)
	}
	hi = lo
	if isRange {
		if hi, err = strconv.Atoi(last); err != nil || hi < lo || hi > 65535 {
			return ip, 0, 0, false, fmt.Errorf("%q is not a port from %d to 65535", last, lo)
		}
	}
	return ip, lo, hi, isRange, nil
}

// printRoutes shows the routes of a range of flows, one per line.
func printRoutes(w io.Writer, output string, routes []api.Route) error {
	if output == "json" {
		return printJSON(w, routes)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SOURCE\tTARGET\tTARGET GROUP\tWHY")
	for _, rt := range routes {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", rt.Source, dash(rt.Target), rt.TargetGroup, rt.Why)
	}
	return tw.Flush()
}

func parseTargetSpec(s string) (api.RegisterRequest, error) {
	var f config.Flags
	f.Targets = []string{s}
	raw := &config.Raw{}
	if err := f.Apply(raw); err != nil {
		return api.RegisterRequest{}, fmt.Errorf("want ADDR[,zone=Z][,weight=W], got %q", s)
	}
	t := raw.TargetGroups[0].Targets[0]
	req := api.RegisterRequest{Address: t.Address, Zone: t.Zone}
	if t.Weight != nil {
		req.Weight = *t.Weight
	}
	return req, nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

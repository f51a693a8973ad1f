// Package admin serves l4lb's admin API over HTTP/JSON: liveness and
// readiness, target groups and their health, register and deregister, route
// explanations, flows, zone health, config reload and binary upgrade, the
// BGP speaker's status, Prometheus metrics and pprof.
//
//	h := admin.Handler(admin.Options{Registry: srv, Gatherer: reg, Token: token})
//	http.Serve(ln, h)
package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/l4lb/l4lb/pkg/api"
)

// Options configure the handler. Nil Gatherer serves no /metrics; nil Ready
// means always ready; an empty Token means no authentication (loopback only,
// which the config enforces). With a Token, everything but /healthz and
// /readyz needs it.
type Options struct {
	Registry Registry // nil serves no /v1 endpoints
	Control  Control  // nil serves no /v1/config, /v1/reload, /v1/upgrade
	Gatherer prometheus.Gatherer
	Ready    func() bool
	// BGP reports the BGP speaker's sessions and routes; false when the
	// config has no bgp section (GET /v1/bgp is then 404).
	BGP func() (api.BGPStatus, bool)
	// Cluster reports where registrations live (GET /v1/cluster).
	Cluster func() api.Cluster
	// Events serves GET /v1/events; nil serves none.
	Events Events
	// Listeners lists the listeners and their addresses, for the console.
	Listeners func() []api.ListenerInfo
	// Context ends the console's sampling of the metrics when it is done
	// (the server's shutdown; a test's end); nil: the sampling ends only
	// two minutes after the last console closed.
	Context context.Context
	// ReadyDetail adds to /readyz's body what a ready node still wants
	// said (etcd away: it serves the state it applied last).
	ReadyDetail func() map[string]string
	Token       string
}

// Handler returns the admin API. Serve it with the bounds of Server.
func Handler(o Options) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		body := map[string]string{"status": "ready"}
		if o.ReadyDetail != nil {
			for k, v := range o.ReadyDetail() {
				body[k] = v
			}
		}
		if o.Ready != nil && !o.Ready() {
			body["status"] = "not ready"
			writeJSON(w, http.StatusServiceUnavailable, body)
			return
		}
		writeJSON(w, http.StatusOK, body)
	})
	if o.Registry != nil {
		registryRoutes(mux, o.Registry)
		consoleRoutes(mux, &o)
	}
	if o.Control != nil {
		controlRoutes(mux, o.Control)
	}
	if o.Events != nil {
		eventsRoute(mux, o.Events)
	}
	if o.Cluster != nil {
		mux.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, _ *http.Request) {
			writeJSON(w, http.StatusOK, o.Cluster())
		})
	}
	if o.BGP != nil {
		mux.HandleFunc("GET /v1/bgp", func(w http.ResponseWriter, _ *http.Request) {
			st, ok := o.BGP()
			if !ok {
				writeError(w, http.StatusNotFound, "BGP is not configured (the config has no bgp section)")
				return
			}
			writeJSON(w, http.StatusOK, st)
		})
	}
	if o.Gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(o.Gatherer, promhttp.HandlerOpts{}))
	}
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		probe := r.URL.Path == "/healthz" || r.URL.Path == "/readyz"
		if probeOnly(r) {
			// A connection past the API's limit: probes only, and
			// closed after one answer.
			w.Header().Set("Connection", "close")
			if !probe || r.Method != http.MethodGet {
				refuse(w, http.StatusServiceUnavailable, "the admin API is at its connection limit; only /healthz and /readyz are served")
				return
			}
		}
		if probe {
			// Probes carry no credentials (kubelet, systemd, a load
			// balancer's health check), and these say nothing secret.
			mux.ServeHTTP(w, r)
			return
		}
		if msg := crossSite(r); msg != "" {
			refuse(w, http.StatusForbidden, msg)
			return
		}
		if isConsolePage(r) {
			// The console's page says nothing secret either: it asks
			// for the token before it reads anything.
			mux.ServeHTTP(w, r)
			return
		}
		if o.Token != "" {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(o.Token)) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="l4lb"`)
				refuse(w, http.StatusUnauthorized, "missing or wrong bearer token")
				return
			}
		}
		if r.ContentLength > maxBody {
			refuse(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("the body is %d bytes; the admin API takes %d at most", r.ContentLength, maxBody))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		mux.ServeHTTP(w, r)
	})
}

// refuse answers a request without reading its body, and closes the
// connection. net/http would otherwise read up to 256 KiB of an unread body
// after the handler returns, at whatever pace the client sends it.
func refuse(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Connection", "close")
	writeError(w, code, msg)
	// The answer is written before the body would be drained; a read
	// deadline in the past makes that drain end at once.
	http.NewResponseController(w).SetReadDeadline(time.Now())
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// crossSite says why a request that a web page in an operator's browser
// may have made for another site is refused, or "" when it is not one:
//   - a change (POST, DELETE) whose Origin is not the admin address's own:
//     the console sends its own origin; the CLI and scripts send none;
//   - a request to a loopback address whose Host is a dotted DNS name
//     (other than *.localhost): a site's name rebound to 127.0.0.1 that
//     would otherwise reach a token-less API from that site's pages. A
//     name without a dot (localhost, the host's own name, which Debian
//     maps to 127.0.1.1) names no site and passes.
func crossSite(r *http.Request) string {
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		name := strings.ToLower(strings.TrimSuffix(host, "."))
		if ta, ok := la.(*net.TCPAddr); ok && ta.IP.IsLoopback() && strings.Contains(name, ".") && !strings.HasSuffix(name, ".localhost") {
			if _, err := netip.ParseAddr(strings.Trim(host, "[]")); err != nil {
				return fmt.Sprintf("Host %q is refused: a loopback admin address answers to IP addresses and names without a dot (localhost), not to a site's name that may have been rebound to it", r.Host)
			}
		}
	}
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return ""
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return ""
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host != r.Host {
		return fmt.Sprintf("cross-origin change refused: Origin %q is not this admin address", origin)
	}
	return ""
}

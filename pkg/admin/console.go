package admin

import (
	"embed"
	"io/fs"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/l4lb/l4lb/pkg/api"
)

// The console's page, styles and script: no other file, and no request
// outside the admin address (its Content-Security-Policy says so to the
// browser too).
//
//go:embed ui
var uiFiles embed.FS

// consoleEvents is how many of the newest events a snapshot carries.
const consoleEvents = 200

// uiCSP lets the page load its own script and styles and call its own
// origin, and nothing else.
const uiCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// isConsolePage reports whether r asks for the console's static files,
// which hold nothing secret and are served without the token: the page
// asks for it before it reads anything.
func isConsolePage(r *http.Request) bool {
	return (r.Method == http.MethodGet || r.Method == http.MethodHead) &&
		(r.URL.Path == "/" || r.URL.Path == "/ui" || strings.HasPrefix(r.URL.Path, "/ui/"))
}

// consoleRoutes serves the live console: GET / redirects to /ui/, which
// polls GET /v1/console once a second.
func consoleRoutes(mux *http.ServeMux, o *Options) {
	sub, err := fs.Sub(uiFiles, "ui")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.StripPrefix("/ui/", http.FileServerFS(sub))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/ui/", http.StatusFound)
	})
	mux.HandleFunc("GET /ui", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/ui/", http.StatusMovedPermanently)
	})
	mux.HandleFunc("GET /ui/", func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", uiCSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache") // an upgrade brings its own page
		files.ServeHTTP(w, r)
	})
	// What the page needs before it reads anything: whether to ask for
	// the token.
	mux.HandleFunc("GET /ui/auth", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		writeJSON(w, http.StatusOK, map[string]string{"auth": authMode(o.Token)})
	})
	smp := newSampler(o.Context, o.Gatherer)
	mux.HandleFunc("GET /v1/console", func(w http.ResponseWriter, _ *http.Request) {
		smp.view()
		writeJSON(w, http.StatusOK, o.snapshot(smp))
	})
}

// snapshot is GET /v1/console's body: the registry's, the control's and
// the BGP speaker's views, with the sampler's rates.
func (o *Options) snapshot(smp *sampler) api.Console {
	c := api.Console{Time: time.Now().UTC(), Auth: authMode(o.Token), SparkStep: sampleStep.Seconds(),
		Listeners: []api.ListenerState{}, TargetGroups: []api.TargetGroupRate{}, Zones: []api.Zone{},
		Kernel: []api.KernelCounter{}, Events: []api.Event{}}
	if o.Control != nil {
		c.Config = o.Control.Config()
	}
	if o.Cluster != nil {
		cl := o.Cluster()
		c.Cluster = &cl
	}
	if o.BGP != nil {
		if st, ok := o.BGP(); ok {
			c.BGP = &st
		}
	}
	if o.Events != nil {
		ev := o.Events.EventsSince(0, time.Time{})
		c.Events = ev[max(0, len(ev)-consoleEvents):]
	}
	var infos []api.ListenerInfo
	if o.Listeners != nil {
		infos = o.Listeners()
	}
	var groups []api.TargetGroup
	if o.Registry != nil {
		groups = o.Registry.TargetGroups()
		c.Zones = o.Registry.Zones()
	}
	smp.read(func(cur, rate map[string]series, spark map[string][]float64) {
		for _, li := range infos {
			c.Listeners = append(c.Listeners, listenerState(li, cur[listenerKey(li.Name)], rate[listenerKey(li.Name)]))
			c.Kernel = append(c.Kernel, kernelCounters(li, cur[listenerKey(li.Name)], rate[listenerKey(li.Name)])...)
		}
		for _, g := range groups {
			gr := api.TargetGroupRate{TargetGroupInfo: g.TargetGroupInfo, Targets: make([]api.TargetRate, 0, len(g.Targets))}
			for _, t := range g.Targets {
				k := targetKey(g.Name, t.Address)
				v, r := cur[k], rate[k]
				sp := spark[k]
				if sp == nil {
					sp = []float64{}
				}
				gr.Targets = append(gr.Targets, api.TargetRate{TargetHealth: t,
					NewFlowsRate: r["target_new_flows_total"], BytesRate: r["target_processed_bytes_total"],
					Resets: v["tcp_target_resets_total"], ConnectErrors: v["target_connect_errors_total"],
					CheckSeconds: v["health_check_last_duration_seconds"], Spark: slices.Clone(sp)})
			}
			c.TargetGroups = append(c.TargetGroups, gr)
		}
	})
	return c
}

func listenerState(li api.ListenerInfo, v, r series) api.ListenerState {
	return api.ListenerState{ListenerInfo: li,
		ActiveFlows:  v["active_flows"],
		NewFlowsRate: r["new_flows_total"],
		BytesRate:    r.sum("processed_bytes_total"),
		Rejects:      v.by("rejected_flows_total", "reason"),
		RejectsRate:  r.sum("rejected_flows_total"),
		Resets:       resets(v),
		TLSErrors:    v["client_tls_negotiation_errors_total"],
	}
}

func resets(v series) map[string]float64 {
	out := map[string]float64{}
	if x := v["tcp_client_resets_total"]; x > 0 {
		out["client"] = x
	}
	if x := v["tcp_lb_resets_total"]; x > 0 {
		out["lb"] = x
	}
	return out
}

// kernelCounters are the counters of a listener with an address on the
// kernel path: the kernel's packet and byte counts feed its metrics.
func kernelCounters(li api.ListenerInfo, v, r series) []api.KernelCounter {
	if !slices.ContainsFunc(li.Addresses, func(a api.ListenerAddress) bool { return a.Path != "socket" }) {
		return nil
	}
	out := []api.KernelCounter{}
	add := func(name, key string) {
		out = append(out, api.KernelCounter{Listener: li.Name, Name: name, Value: v.sum(key), Rate: r.sum(key)})
	}
	add("packets in", "processed_packets_total/direction=in")
	add("packets out", "processed_packets_total/direction=out")
	add("bytes in", "processed_bytes_total/direction=in")
	add("bytes out", "processed_bytes_total/direction=out")
	add("passed up to l4lb", "udp_socket_datagrams_total")
	add("flows evicted", "flow_evictions_total")
	return out
}

// authMode is what changes need: "token", or "none" when the API has no
// token (the console then makes none).
func authMode(token string) string {
	if token != "" {
		return "token"
	}
	return "none"
}

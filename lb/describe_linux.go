package lb

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/l4lb/l4lb/lb/balance"
	"github.com/l4lb/l4lb/lb/cluster"
	"github.com/l4lb/l4lb/lb/kernelpath"
	"github.com/l4lb/l4lb/lb/listen"
	"github.com/l4lb/l4lb/lb/registry"
	"github.com/l4lb/l4lb/lb/tcpproxy"
	"github.com/l4lb/l4lb/lb/udpproxy"
	"github.com/l4lb/l4lb/lb/zoneshift"
	"github.com/l4lb/l4lb/pkg/api"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/flowhash"
	"github.com/l4lb/l4lb/pkg/maglev"
	"github.com/l4lb/l4lb/pkg/quiclb"
)

// view answers the admin API's questions about routes, flows, zones and
// target groups, from the registry and the two data planes.
type view struct {
	reg    *registry.Registry
	store  *cluster.Store // registry.backend etcd: registrations go through it
	tcp    *tcpproxy.Server
	udp    *udpproxy.Server
	shifts *zoneshift.Shifts
}

// findEndpoint finds the named listener's TCP or UDP side, preferring the one
// bound to dst.
func (v *view) findEndpoint(name, protocol string, dst netip.Addr, sni string) (listen.Endpoint, bool) {
	if protocol == "tcp" {
		return v.tcp.Endpoint(name, dst, sni)
	}
	return v.udp.Endpoint(name, dst)
}

// Route answers which target a new flow from src to dst would get, and why,
// by the same computation as a real connection. sni is the name a TLS
// client's hello asks for, on a listener with SNI rules ("": none).
func (v *view) Route(listenerName, src, dst, protocol, sni string) (api.Route, error) {
	if protocol == "" {
		protocol = "tcp"
	}
	if protocol != "tcp" && protocol != "udp" {
		return api.Route{}, fmt.Errorf("%w: protocol: want tcp or udp, got %q", api.ErrInvalid, protocol)
	}
	srcAP, err := netip.ParseAddrPort(src)
	if err != nil {
		return api.Route{}, fmt.Errorf("%w: src: want IP:PORT, got %q", api.ErrInvalid, src)
	}
	var dstAP netip.AddrPort
	if dst != "" {
		if dstAP, err = netip.ParseAddrPort(dst); err != nil {
			return api.Route{}, fmt.Errorf("%w: dst: want IP:PORT, got %q", api.ErrInvalid, dst)
		}
	}
	if sni != "" && protocol != "tcp" {
		return api.Route{}, fmt.Errorf("%w: sni: SNI rules route TCP flows only", api.ErrInvalid)
	}
	sni = strings.TrimSuffix(strings.ToLower(sni), ".")
	l, found := v.findEndpoint(listenerName, protocol, dstAP.Addr(), sni)
	proto := uint8(flowhash.ProtoTCP)
	if protocol == "udp" {
		proto = flowhash.ProtoUDP
	}
	if !found {
		return api.Route{}, fmt.Errorf("%w: no %s listener %q", api.ErrNotFound, protocol, listenerName)
	}
	if sni != "" && !l.HasRules {
		return api.Route{}, fmt.Errorf("%w: sni: listener %q has no SNI rules", api.ErrInvalid, listenerName)
	}
	if !dstAP.IsValid() {
		dstAP = netip.AddrPortFrom(l.IP, l.Port)
		if l.IP.IsUnspecified() {
			return api.Route{}, fmt.Errorf("%w: dst: listener %q binds every address; say which one the client reaches", api.ErrInvalid, listenerName)
		}
	}
	srcAP = netip.AddrPortFrom(srcAP.Addr().Unmap(), srcAP.Port())
	dstAP = netip.AddrPortFrom(dstAP.Addr().Unmap(), dstAP.Port())
	g, snap, key := l.Route.Lookup(proto, l.Zone, srcAP, dstAP)
	out := api.Route{Listener: listenerName, Protocol: protocol, Source: srcAP.String(), Destination: dstAP.String(),
		Zone: l.Zone, TargetGroup: g.Name(), Key: "5-tuple", Hash: fmt.Sprintf("%#016x", key), FailOpen: snap.FailOpen}
	if v.store != nil {
		out.AppliedRevision = v.store.Status().Applied
	}
	if snap.Balance.Stickiness {
		out.Key = "source_ip"
	}
	var buf [1 + balance.Retries]int
	for _, i := range snap.Balance.Pick(key, buf[:]) {
		out.Preference = append(out.Preference, snap.Targets[i].Name)
	}
	if len(out.Preference) == 0 {
		out.Why = "no target can take new flows: the client would be reset"
		return out, nil
	}
	out.Target = out.Preference[0]
	var why []string
	if l.HasRules {
		if sni == "" {
			why = append(why, "a ClientHello without a server name takes the listener's own group")
		} else {
			why = append(why, fmt.Sprintf("SNI %q routes to target group %s", sni, g.Name()))
		}
	}
	why = append(why, fmt.Sprintf("%s hash %s owns slot %d of the Maglev table", out.Key, out.Hash, key%maglev.DefaultSize))
	if len(v.reg.Config().Zones) > 0 && l.Zone != "" && !g.CrossZone() {
		why = append(why, fmt.Sprintf("built from zone %s's targets (cross-zone off)", l.Zone))
	}
	if snap.FailOpen {
		why = append(why, "too few healthy targets: routing fails open to every registered target")
	} else {
		why = append(why, "built from the healthy targets")
	}
	if len(out.Preference) > 1 && protocol == "tcp" {
		why = append(why, "a refused connect retries "+strings.Join(out.Preference[1:], ", "))
	}
	if protocol == "udp" {
		out.Preference = out.Preference[:1] // a datagram has no connect to retry
		why = append(why, "an existing flow of this 5-tuple stays on its own target")
	}
	out.Why = strings.Join(why, "; ")
	return out, nil
}

// RouteQUIC says which target a QUIC listener sends a short-header packet
// whose destination connection ID is dcid to: the target whose server ID
// it carries, or, for an ID of no target or an unroutable one (codepoint
// 7), the 5-tuple flow's (which l4lb route --src answers).
func (v *view) RouteQUIC(listenerName, dcid string) (api.Route, error) {
	i := slices.IndexFunc(v.reg.Config().Listeners, func(l config.Listener) bool { return l.Name == listenerName })
	if i < 0 {
		return api.Route{}, fmt.Errorf("%w: no listener %q", api.ErrNotFound, listenerName)
	}
	l := v.reg.Config().Listeners[i]
	if l.QUIC == nil {
		return api.Route{}, fmt.Errorf("%w: quic_dcid: listener %q is %s, not QUIC or TCP_QUIC", api.ErrInvalid, listenerName, l.Protocol)
	}
	hexID, ok := strings.CutPrefix(strings.ToLower(dcid), "0x")
	cid, err := hex.DecodeString(hexID)
	if !ok || err != nil || len(cid) == 0 || len(cid) > quiclb.MaxConnIDLen {
		return api.Route{}, fmt.Errorf("%w: quic_dcid: want 0x and up to %d bytes of hex, got %q", api.ErrInvalid, quiclb.MaxConnIDLen, dcid)
	}
	if len(cid) != l.QUIC.ConnIDLen {
		return api.Route{}, fmt.Errorf("%w: quic_dcid: %d bytes; listener %q's targets issue connection IDs of %d (quic.connection_id_length)", api.ErrInvalid, len(cid), listenerName, l.QUIC.ConnIDLen)
	}
	g, err := v.reg.TargetGroup(l.TargetGroup)
	if err != nil {
		return api.Route{}, wireErr(err)
	}
	out := api.Route{Listener: listenerName, Protocol: "quic", TargetGroup: g.Name, Key: "quic_server_id", Preference: []string{}}
	id, ok := quiclb.ServerID(cid)
	if !ok {
		out.Why = "the connection ID is unroutable (config-rotation codepoint 7): the packet goes by its 5-tuple flow (l4lb route --src)"
		return out, nil
	}
	out.Hash = quiclb.FormatServerID(id)
	grp := v.reg.Group(l.TargetGroup)
	if t := grp.Snapshot().ServerIDs[id]; t != nil {
		out.Target, out.Preference = t.Name, []string{t.Name}
		out.Why = fmt.Sprintf("server ID %s, at octets 1-8 of the connection ID, is target %s's; it goes there whatever the client's address", out.Hash, t.Name)
		return out, nil
	}
	out.Why = fmt.Sprintf("server ID %s names no target that takes packets (none has it, or its target is unhealthy or gone): the packet goes by its 5-tuple flow (l4lb route --src)", out.Hash)
	return out, nil
}

// Flows lists up to limit open flows (of one listener when named): TCP on
// the socket path, then TCP in the kernel (NAT or DSR), then UDP, each with
// the path that carries it.
func (v *view) Flows(listenerName string, limit int) ([]api.Flow, error) {
	if listenerName != "" && !slices.ContainsFunc(v.reg.Config().Listeners, func(l config.Listener) bool { return l.Name == listenerName }) {
		return nil, fmt.Errorf("%w: no listener %q", api.ErrNotFound, listenerName)
	}
	if limit <= 0 {
		limit = 100
	}
	out := v.tcp.Flows(listenerName, limit)
	if len(out) < limit {
		k, err := kernelpath.Describe(v.tcp.Kernel(), "TCP", listenerName, limit-len(out))
		if err != nil {
			return nil, err
		}
		out = append(out, k...)
	}
	if len(out) < limit {
		u, err := v.udp.FlowList(listenerName, limit-len(out))
		if err != nil {
			return nil, err
		}
		out = append(out, u...)
	}
	return out, nil
}

// ZoneUnsettled names a target of the groups that zone's listeners route to
// whose first health checks have not finished, or is "" when there is none.
// Until they have, this process's tables may differ from those of other
// l4lb nodes whose checks have.
func (v *view) ZoneUnsettled(zone string) string {
	why := ""
	v.zoneGroups(zone, func(_ string, g *registry.Group) {
		if g.Settling(zone) {
			return // a group a reload added, which has not served: no gate
		}
		if t := g.Unsettled(); t != "" && why == "" {
			why = "target " + t + " of target group " + g.Name()
		}
	})
	return why
}

// zoneGroups calls fn with each listener bound in zone (by name) and each
// target group it routes to, TCP and UDP alike.
func (v *view) zoneGroups(zone string, fn func(listener string, g *registry.Group)) {
	for _, plane := range []map[string][]*listen.Route{v.tcp.Listeners().ZoneRoutes(zone), v.udp.Listeners().ZoneRoutes(zone)} {
		for name, routes := range plane {
			for _, r := range routes {
				for _, g := range r.Groups {
					fn(name, g)
				}
			}
		}
	}
}

// ZoneHealth reports whether every listener bound in zone can reach a healthy
// target there, counting against the dns_failover minimum when one is set.
func (v *view) ZoneHealth(zone string) (api.ZoneHealth, error) {
	if !slices.ContainsFunc(v.reg.Config().Zones, func(z config.Zone) bool { return z.Name == zone }) {
		return api.ZoneHealth{}, fmt.Errorf("%w: no zone %q", api.ErrNotFound, zone)
	}
	out := api.ZoneHealth{Zone: zone, Healthy: true, Listeners: map[string]string{}}
	if sh, ok := v.shifts.Active(zone); ok {
		out.Healthy, out.ZonalShift = false, wireShift(sh)
	}
	v.zoneGroups(zone, func(name string, g *registry.Group) {
		if out.Listeners[name] == "" { // a TCP_UDP listener is checked on both
			out.Listeners[name] = "ok"
		}
		if why := g.ZoneProblem(zone); why != "" {
			out.Listeners[name] = why
			out.Healthy = false
		}
	})
	return out, nil
}

// The admin API's view of the registry (admin.Registry), by name rather
// than by embedding: the registry's other methods stay its own.

// TargetGroups describes every target group and its targets.
func (v *view) TargetGroups() []api.TargetGroup {
	groups := v.reg.TargetGroups()
	out := make([]api.TargetGroup, len(groups))
	for i, g := range groups {
		out[i] = wireGroup(g)
	}
	return out
}

// TargetGroup describes one target group.
func (v *view) TargetGroup(name string) (api.TargetGroup, error) {
	g, err := v.reg.TargetGroup(name)
	if err != nil {
		return api.TargetGroup{}, wireErr(err)
	}
	return wireGroup(g), nil
}

// Register adds a target to a group, or updates its weight or zone: on
// every node, through etcd, with the etcd backend.
func (v *view) Register(group string, req api.RegisterRequest) (api.TargetHealth, error) {
	r := registry.Registration{Address: req.Address, Zone: req.Zone, Weight: req.Weight, QUICServerID: req.QUICServerID}
	var h registry.Health
	var leaseID int64
	var err error
	switch {
	case v.store != nil:
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		h, leaseID, err = v.store.Register(ctx, group, r, cluster.Lease{TTL: req.LeaseSeconds, ID: req.LeaseID})
		cancel()
	case req.LeaseSeconds > 0:
		return api.TargetHealth{}, fmt.Errorf("%w: lease_seconds: a registration with a lease needs registry.backend etcd", api.ErrInvalid)
	default:
		h, err = v.reg.Register(group, r)
	}
	if err != nil {
		return api.TargetHealth{}, wireErr(err)
	}
	th := wireTarget(h)
	th.LeaseID = leaseID
	return th, nil
}

// Deregister starts a target's draining: on every node, through etcd, with
// the etcd backend.
func (v *view) Deregister(group, address string) error {
	if v.store != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return wireErr(v.store.Deregister(ctx, group, address))
	}
	return wireErr(v.reg.Deregister(group, address))
}

// Cluster is this node's view of where registrations live: the backend,
// the etcd revision applied, and a hash of its routing tables (nodes with
// the same hash pick the same targets).
func (v *view) Cluster() api.Cluster {
	out := api.Cluster{Backend: v.reg.Config().Registry.Backend, Prefix: v.reg.Config().Registry.Prefix, TableHash: v.tableHash()}
	for _, g := range v.reg.TargetGroups() {
		for _, t := range g.Targets {
			out.Targets++
			if t.State == registry.Healthy {
				out.Healthy++
			}
		}
	}
	if v.store != nil {
		st := v.store.Status()
		out.AppliedRevision, out.Connected = st.Applied, st.Connected
		if !st.Connected {
			out.UnreachableSince = &st.LostAt
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		out.Nodes, _ = v.store.Nodes(ctx)
		cancel()
	}
	return out
}

// ReadyDetail is what /readyz adds while this node is ready: with the etcd
// backend and etcd away, that it serves the registrations it applied last.
func (v *view) ReadyDetail() map[string]string {
	if v.store == nil {
		return nil
	}
	st := v.store.Status()
	if st.Connected {
		return map[string]string{"registry": fmt.Sprintf("etcd, revision %d applied", st.Applied)}
	}
	return map[string]string{"registry": fmt.Sprintf("etcd unreachable since %s: serving the registrations of revision %d", st.LostAt.UTC().Format(time.RFC3339), st.Applied)}
}

// tableHash digests what the Maglev tables are built from: every group's
// targets with their weights, zones and states.
func (v *view) tableHash() string {
	h := sha256.New()
	for _, g := range v.reg.TargetGroups() {
		fmt.Fprintf(h, "%s\n", g.Name)
		ts := slices.Clone(g.Targets)
		slices.SortFunc(ts, func(a, b registry.Health) int { return a.Address.Compare(b.Address) })
		for _, t := range ts {
			fmt.Fprintf(h, "%s %d %s %s\n", t.Address, t.Weight, t.Zone, t.State)
		}
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

func wireGroup(g registry.GroupHealth) api.TargetGroup {
	out := api.TargetGroup{TargetGroupInfo: api.TargetGroupInfo{Name: g.Name, Protocol: g.Protocol.String(), Port: int(g.Port),
		FailOpen: g.FailOpen, Listeners: g.Listeners}, Targets: make([]api.TargetHealth, len(g.Targets))}
	for i, t := range g.Targets {
		out.Targets[i] = wireTarget(t)
	}
	return out
}

func wireTarget(t registry.Health) api.TargetHealth {
	return api.TargetHealth{Address: t.Address.String(), Zone: t.Zone, Weight: t.Weight, State: t.State.String(),
		Reason: t.Reason, Description: t.Description, ActiveFlows: t.ActiveFlows, QUICServerID: t.QUICServerID}
}

// wireErr gives a registry error the admin API's kind of error (404, 400),
// keeping its text.
func wireErr(err error) error {
	switch {
	case errors.Is(err, registry.ErrNotFound):
		return kindError{err, api.ErrNotFound}
	case errors.Is(err, registry.ErrInvalid):
		return kindError{err, api.ErrInvalid}
	}
	return err
}

type kindError struct{ err, kind error }

func (e kindError) Error() string   { return e.err.Error() }
func (e kindError) Unwrap() []error { return []error{e.err, e.kind} }

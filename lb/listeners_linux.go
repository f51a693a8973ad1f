package lb

import (
	"net/netip"
	"slices"

	"github.com/l4lb/l4lb/lb/kernelpath"
	"github.com/l4lb/l4lb/lb/listen"
	"github.com/l4lb/l4lb/pkg/api"
)

// Listeners lists the configured listeners, each with its bound addresses
// (TCP's, then UDP's) and what carries their flows: l4lb's sockets, or the
// kernel path.
func (v *view) Listeners() []api.ListenerInfo {
	cfg := v.reg.Config()
	out := make([]api.ListenerInfo, 0, len(cfg.Listeners))
	at := map[string]int{}
	for _, lc := range cfg.Listeners {
		li := api.ListenerInfo{Name: lc.Name, Protocol: lc.Protocol.String(), Port: int(lc.Port), Addresses: []api.ListenerAddress{}}
		if lc.TargetGroup != "" {
			li.TargetGroups = append(li.TargetGroups, lc.TargetGroup)
		}
		for _, f := range lc.Forward {
			li.TargetGroups = append(li.TargetGroups, f.TargetGroup)
		}
		for _, r := range lc.Rules {
			if !slices.Contains(li.TargetGroups, r.TargetGroup) {
				li.TargetGroups = append(li.TargetGroups, r.TargetGroup)
			}
		}
		at[lc.Name] = len(out)
		out = append(out, li)
	}
	add := func(set listen.Listeners, k *kernelpath.Slot, proto string) {
		set.Each(func(key listen.Key, zone string, addr netip.AddrPort) {
			i, ok := at[key.Name]
			if !ok {
				return // a listener a reload is removing
			}
			path := k.Path(key.Name, addr)
			if path == "" {
				path = "socket"
			}
			out[i].Addresses = append(out[i].Addresses, api.ListenerAddress{Zone: zone, Address: proto + "://" + addr.String(), Path: path})
		})
	}
	add(v.tcp.Listeners(), v.tcp.Kernel(), "tcp")
	add(v.udp.Listeners(), v.udp.Kernel(), "udp")
	return out
}

package listen

import (
	"net/netip"

	"github.com/l4lb/l4lb/pkg/config"
)

// Key names a bound listener address across configurations: a listener
// whose name, bind IP or port changed is a removal plus an addition.
type Key struct {
	Name string
	IP   netip.Addr
	Port uint16
}

// KeyOf is the key of lc's address b.
func KeyOf(lc *config.Listener, b config.BindAddr) Key { return Key{lc.Name, b.IP, lc.Port} }

// Diff is the first step of a reload for one data plane: it opens (builds
// and binds) each address of cfg's listeners that serve proto and are not in
// cur, and lists those of cur that cfg no longer has. If any open fails,
// the ones opened are closed and the error returned: nothing has changed.
func Diff[L any](cfg *config.Config, serves func(config.Protocol) bool, cur map[Key]L,
	open func(*config.Listener, config.BindAddr) (L, error), close func(L)) (add map[Key]L, remove []L, err error) {
	add = map[Key]L{}
	seen := map[Key]bool{}
	for i := range cfg.Listeners {
		lc := &cfg.Listeners[i]
		if !serves(lc.Protocol) {
			continue
		}
		for _, b := range lc.Bind {
			k := KeyOf(lc, b)
			seen[k] = true
			if _, ok := cur[k]; ok {
				continue
			}
			l, err := open(lc, b)
			if err != nil {
				for _, l := range add {
					close(l)
				}
				return nil, nil, err
			}
			add[k] = l
		}
	}
	for k, l := range cur {
		if !seen[k] {
			remove = append(remove, l)
		}
	}
	return add, remove, nil
}

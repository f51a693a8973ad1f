package kernelpath

import "github.com/l4lb/l4lb/lb/fastpath"

// The flows the kernel pins, as GET /v1/flows lists them.

// Listed is one flow the kernel pins, as GET /v1/flows shows it.
type Listed struct {
	Listener string
	Group    string
	DSR      bool // forwarded by direct server return (else NAT)
	fastpath.Flow
}

// List calls fn with each flow the kernel pins now (read from its maps),
// of the listener named (every one when ""), until fn returns false.
func (k *Forwarder) List(listener string, fn func(Listed) bool) error {
	return k.p.List(func(fl fastpath.Flow) bool {
		if fl.Service >= len(k.fronts) {
			return true
		}
		f := k.fronts[fl.Service]
		if listener != "" && f.Name != listener {
			return true
		}
		return fn(Listed{Listener: f.Name, Group: f.Group().Name(), DSR: f.DSR, Flow: fl})
	})
}

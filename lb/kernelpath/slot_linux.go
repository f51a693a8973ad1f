package kernelpath

import (
	"fmt"
	"net/netip"
	"os"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb/registry"
	"github.com/l4lb/l4lb/pkg/api"
)

// Slot holds a data plane's kernel path while one runs. Every method does
// nothing (or answers zero) when none does.
type Slot struct{ k atomic.Pointer[Forwarder] }

// Set puts k in the slot.
func (s *Slot) Set(k *Forwarder) { s.k.Store(k) }

// Load is the kernel path, or nil.
func (s *Slot) Load() *Forwarder { return s.k.Load() }

// Running reports whether a kernel path runs.
func (s *Slot) Running() bool { return s.k.Load() != nil }

// Changed has the kernel path write its tables again.
func (s *Slot) Changed() {
	if k := s.k.Load(); k != nil {
		k.Changed()
	}
}

// EndFlows ends the kernel's flows pinned to t; it never blocks.
func (s *Slot) EndFlows(t *registry.Target, why string) {
	if k := s.k.Load(); k != nil {
		k.EndFlows(t, why)
	}
}

// Path is Forwarder.Path, or "" while no forwarder runs.
func (s *Slot) Path(name string, vip netip.AddrPort) string {
	if k := s.k.Load(); k != nil {
		return k.Path(name, vip)
	}
	return ""
}

// Flows is the number of flows the kernel pins, as of its last sweep.
func (s *Slot) Flows() int {
	if k := s.k.Load(); k != nil {
		return k.Flows()
	}
	return 0
}

// List calls fn with each flow the kernel pins (Forwarder.List).
func (s *Slot) List(listener string, fn func(Listed) bool) error {
	if k := s.k.Load(); k != nil {
		return k.List(listener, fn)
	}
	return nil
}

// Describe lists up to limit flows the kernel path in slot pins now, of
// the listener named (every one when ""), as GET /v1/flows shows them.
func Describe(slot *Slot, proto, listener string, limit int) ([]api.Flow, error) {
	var out []api.Flow
	err := slot.List(listener, func(l Listed) bool {
		if len(out) >= limit {
			return false
		}
		path := "kernel"
		if l.DSR {
			path = "dsr"
		}
		out = append(out, api.Flow{Listener: l.Listener, Protocol: proto, Client: l.Client.String(), Target: l.Target.String(),
			TargetGroup: l.Group, Path: path, IdleSeconds: l.Idle.Seconds()})
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("listing the %s kernel path's flows: %w", proto, err)
	}
	return out, nil
}

// Sync writes the tables now.
func (s *Slot) Sync() error {
	if k := s.k.Load(); k != nil {
		return k.Sync()
	}
	return nil
}

// FlowFiles hands the flow maps over to a new process.
func (s *Slot) FlowFiles(add func(name string, f *os.File)) error {
	if k := s.k.Load(); k != nil {
		return k.FlowFiles(add)
	}
	return nil
}

// Close stops the kernel path and empties the slot. Its flows end with its
// programs, unless a new process took their maps over (an upgrade).
func (s *Slot) Close() {
	if k := s.k.Swap(nil); k != nil {
		k.Close()
	}
}

// Release detaches this process's programs after a binary upgrade: the new
// process runs its own on the same flow maps, and two programs in a row
// would have this one, with tables no longer kept, serve new flows. The
// flows stay pinned in the maps the new process took.
func (s *Slot) Release(log *zap.Logger, proto string) {
	if k := s.k.Swap(nil); k != nil {
		k.Close()
		log.Info(proto + " kernel path handed to the new process")
	}
}

package balance

import (
	"fmt"
	"net/netip"

	"github.com/l4lb/l4lb/pkg/maglev"
)

// Retries is how many further targets a refused connect tries, in Maglev
// preference order, before the client is reset.
const Retries = 2

// Target is one usable backend in a snapshot.
type Target struct {
	Addr   netip.AddrPort
	Zone   string
	Weight int
}

// GroupSpec describes a set of targets to build a table for. Zones are the
// caller's business: it builds one Group per zone's view.
type GroupSpec struct {
	Name       string
	Targets    []Target
	Stickiness bool // key on source IP alone
	TableSize  int  // 0 means maglev.DefaultSize
}

// Group is an immutable, built set of targets with its Maglev table.
type Group struct {
	Name       string
	Targets    []Target
	Stickiness bool
	table      *maglev.Table
}

// NewGroup builds the table of a group. A group with no targets is valid and
// picks nothing.
func NewGroup(spec GroupSpec) (*Group, error) {
	size := spec.TableSize
	if size == 0 {
		size = maglev.DefaultSize
	}
	g := &Group{Name: spec.Name, Targets: spec.Targets, Stickiness: spec.Stickiness}
	if len(spec.Targets) == 0 {
		return g, nil
	}
	bs := make([]maglev.Backend, len(spec.Targets))
	for i, t := range spec.Targets {
		bs[i] = maglev.Backend{Name: t.Addr.String(), Weight: t.Weight}
	}
	t, err := maglev.New(bs, size)
	if err != nil {
		return nil, fmt.Errorf("target group %s: %w", spec.Name, err)
	}
	g.table = t
	return g, nil
}

// Pick fills dst with up to len(dst) distinct targets for a flow with key
// hash: the Maglev owner first, then the retry order. It returns indexes into
// g.Targets and does not allocate.
func (g *Group) Pick(hash uint64, dst []int) []int {
	return g.table.Preference(hash, dst)
}

package balance

import (
	"fmt"
	"net/netip"
	"sort"

	"github.com/l4lb/l4lb/pkg/maglev"
)

// Retries is how many further targets a refused connect tries, in Maglev
// preference order, before the client is reset.
const Retries = 2

// Target is one usable backend in a snapshot.
type Target struct {
	Addr   netip.AddrPort
	Zone   string // "" serves every zone
	Weight int
}

// GroupSpec describes a target group to build tables for.
type GroupSpec struct {
	Name       string
	Targets    []Target
	CrossZone  bool
	Stickiness bool // key on source IP alone
	TableSize  int  // 0 means maglev.DefaultSize
}

// Group is an immutable, built target group: its targets and one Maglev table
// per zone (and one over all targets for cross-zone and zone-less listeners).
type Group struct {
	Name       string
	Targets    []Target
	Stickiness bool
	all        *maglev.Table
	zones      map[string]zoneTable
}

type zoneTable struct {
	table   *maglev.Table
	targets []int // table index -> index into Group.Targets
}

// NewGroup builds the tables of a group. A group with no targets is valid and
// picks nothing.
func NewGroup(spec GroupSpec) (*Group, error) {
	size := spec.TableSize
	if size == 0 {
		size = maglev.DefaultSize
	}
	g := &Group{Name: spec.Name, Targets: spec.Targets, Stickiness: spec.Stickiness, zones: map[string]zoneTable{}}
	if len(spec.Targets) == 0 {
		return g, nil
	}
	all, err := maglev.New(backends(spec.Targets, nil), size)
	if err != nil {
		return nil, fmt.Errorf("target group %s: %w", spec.Name, err)
	}
	g.all = all
	if spec.CrossZone {
		return g, nil
	}
	zoneSet := map[string]bool{}
	for _, t := range spec.Targets {
		if t.Zone != "" {
			zoneSet[t.Zone] = true
		}
	}
	names := make([]string, 0, len(zoneSet))
	for z := range zoneSet {
		names = append(names, z)
	}
	sort.Strings(names)
	for _, z := range names {
		var idx []int
		for i, t := range spec.Targets {
			if t.Zone == z || t.Zone == "" {
				idx = append(idx, i)
			}
		}
		tb, err := maglev.New(backends(spec.Targets, idx), size)
		if err != nil {
			return nil, fmt.Errorf("target group %s, zone %s: %w", spec.Name, z, err)
		}
		g.zones[z] = zoneTable{table: tb, targets: idx}
	}
	return g, nil
}

func backends(ts []Target, idx []int) []maglev.Backend {
	if idx == nil {
		idx = make([]int, len(ts))
		for i := range idx {
			idx[i] = i
		}
	}
	bs := make([]maglev.Backend, len(idx))
	for i, j := range idx {
		bs[i] = maglev.Backend{Name: ts[j].Addr.String(), Weight: ts[j].Weight}
	}
	return bs
}

// Pick fills dst with up to len(dst) distinct targets for a flow with key hash
// arriving in zone: the Maglev owner first, then the retry order. Without
// cross-zone a zone uses its own targets (and zone-less ones); a zone with none
// of its own, or the "" zone, uses every target rather than refusing the flow.
// It returns indexes into g.Targets and does not allocate.
func (g *Group) Pick(zone string, hash uint64, dst []int) []int {
	if zt, ok := g.zones[zone]; ok && zone != "" {
		out := zt.table.Preference(hash, dst)
		for i, j := range out {
			out[i] = zt.targets[j]
		}
		return out
	}
	return g.all.Preference(hash, dst)
}

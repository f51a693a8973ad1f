package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb/zoneshift"
)

// Zonal shifts live under PREFIX/shifts/ZONE, each on an etcd lease of its
// length: a shift started through any node takes the zone out of service
// on every node, and a cancel through any node ends it everywhere. Each
// node also ends a shift at its expiry by its own clock.

// Shifts are the cluster's zonal shifts, as one node writes and applies
// them.
type Shifts struct {
	st    *Store
	local *zoneshift.Shifts // this node's; nil: shifts are not shared
}

// applyKey applies one key under the cluster's prefix: a registration, a
// zonal shift, or (a node record) nothing.
func (s *Store) applyKey(key, value []byte, deleted bool) {
	switch k := string(key); {
	case strings.HasPrefix(k, s.prefix):
		s.apply(key, value, deleted)
	case strings.HasPrefix(k, s.root+"/shifts/"):
		s.Shifts.apply(strings.TrimPrefix(k, s.root+"/shifts/"), value, deleted)
	}
}

// apply puts a zone's shift in force on this node, or ends it.
func (z *Shifts) apply(zone string, value []byte, deleted bool) {
	if z.local == nil {
		return
	}
	s := z.st
	if deleted { // cancelled, or its lease lapsed at its expiry
		if err := z.local.Cancel(zone); err != nil && !errors.Is(err, zoneshift.ErrNotFound) {
			s.log.Warn("registry: ending a zonal shift", zap.String("zone", zone), zap.Error(err))
		}
		return
	}
	var sh zoneshift.Shift
	if err := json.Unmarshal(value, &sh); err != nil || sh.Zone != zone {
		s.log.Warn("registry: a zonal shift record that is not one; ignored", zap.String("zone", zone), zap.Error(err))
		return
	}
	z.local.Apply(sh)
}

func (z *Shifts) key(zone string) string { return z.st.root + "/shifts/" + zone }

// Start starts a zonal shift away from zone for d on every node, and
// returns once this node has it in force.
func (z *Shifts) Start(ctx context.Context, zone string, d time.Duration) (zoneshift.Shift, error) {
	s := z.st
	if err := zoneshift.CheckExpiry(d); err != nil {
		return zoneshift.Shift{}, err
	}
	now := time.Now().UTC()
	sh := zoneshift.Shift{Zone: zone, Started: now, Expires: now.Add(d)}
	lease, err := s.cli.Grant(ctx, int64(math.Ceil(d.Seconds()))+1)
	if err != nil {
		return zoneshift.Shift{}, fmt.Errorf("registry: an etcd lease for the shift: %w", err)
	}
	b, _ := json.Marshal(sh)
	resp, err := s.cli.Put(ctx, z.key(zone), string(b), clientv3.WithLease(lease.ID))
	if err != nil {
		return zoneshift.Shift{}, fmt.Errorf("registry: writing to etcd: %w", err)
	}
	s.waitApplied(ctx, resp.Header.Revision)
	return sh, nil
}

// Cancel ends zone's shift on every node.
func (z *Shifts) Cancel(ctx context.Context, zone string) error {
	s := z.st
	resp, err := s.cli.Delete(ctx, z.key(zone))
	if err != nil {
		return fmt.Errorf("registry: writing to etcd: %w", err)
	}
	if resp.Deleted == 0 {
		return fmt.Errorf("%w: no zonal shift away from zone %q", zoneshift.ErrNotFound, zone)
	}
	s.waitApplied(ctx, resp.Header.Revision)
	return nil
}

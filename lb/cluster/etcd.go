// Package cluster keeps the target registrations of many l4lb nodes in one
// etcd cluster (registry.backend: etcd). A registration or deregistration
// through any node's admin API is written under the cluster's prefix; every
// node watches the prefix and applies each change to its own registry, as
// a reload applies a config: as a difference, with NLB's states. A
// deregistration carries the time it was asked for, and every node counts
// the deregistration delay from it, so all nodes drain together.
//
// Keys, under PREFIX/targets/GROUP/ADDRESS, hold a Record in JSON. When
// etcd is away, the nodes serve the state they applied last and resume the
// watch from the next revision when it returns.
package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb/registry"
	"github.com/l4lb/l4lb/lb/zoneshift"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
)

// gauges are the store's metrics (nil-safe: a nil Metrics counts nothing).
type gauges struct{ revision, up prometheus.Gauge }

// Record is one registration as etcd holds it.
type Record struct {
	Group        string    `json:"group"`
	Address      string    `json:"address"`
	Zone         string    `json:"zone,omitempty"`
	Weight       int       `json:"weight"`
	QUICServerID string    `json:"quic_server_id,omitempty"`
	RegisteredAt time.Time `json:"registered_at"`
	// DeregisteredAt is when its deregistration was asked for; the
	// deregistration delay counts from it on every node.
	DeregisteredAt *time.Time `json:"deregistered_at,omitempty"`
}

// Store is a node's link to the cluster's registrations.
type Store struct {
	cli    *clientv3.Client
	root   string // the cluster's prefix
	prefix string
	reg    *registry.Registry
	// Shifts are the zonal shifts every node shares.
	Shifts *Shifts
	log    *zap.Logger
	m      gauges

	applied   atomic.Int64 // the etcd revision this node has applied
	connected atomic.Bool  // the watch runs
	since     atomic.Int64 // when the watch last broke, Unix nanoseconds

	mu       sync.Mutex
	appliedC *sync.Cond // broadcast when applied moves

	cancel    context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
}

// Open connects to etcd and applies every registration under the prefix to
// reg, then follows changes until Close. It fails when etcd cannot be
// reached at start: a node that never saw the cluster's state would serve
// a different table from the others.
func Open(ctx context.Context, c config.Registry, admin string, reg *registry.Registry, shifts *zoneshift.Shifts, m *metrics.Metrics, log *zap.Logger) (*Store, error) {
	cc := clientv3.Config{Endpoints: c.Endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()}
	if c.TLS != (config.RegistryTLS{}) {
		t, err := tlsConfig(c.TLS)
		if err != nil {
			return nil, err
		}
		cc.TLS = t
	}
	cli, err := clientv3.New(cc)
	if err != nil {
		return nil, fmt.Errorf("registry: etcd %v: %w", c.Endpoints, err)
	}
	s := &Store{cli: cli, root: c.Prefix, prefix: c.Prefix + "/targets/", reg: reg, log: log, done: make(chan struct{}),
		m: gauges{revision: m.Gauge(metrics.RegistryAppliedRevision), up: m.Gauge(metrics.RegistryEtcdUp)}}
	s.appliedC = sync.NewCond(&s.mu)
	s.Shifts = &Shifts{st: s, local: shifts}
	get, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := cli.Get(get, s.root+"/", clientv3.WithPrefix())
	if err != nil {
		cli.Close()
		return nil, fmt.Errorf("registry: reading %s from etcd %v: %w", s.prefix, c.Endpoints, err)
	}
	for _, kv := range resp.Kvs {
		s.applyKey(kv.Key, kv.Value, false)
	}
	s.setApplied(resp.Header.Revision)
	s.connected.Store(true)
	s.m.up.Set(1)
	log.Info("registry: etcd state applied", zap.String("prefix", c.Prefix), zap.Int("keys", len(resp.Kvs)), zap.Int64("revision", resp.Header.Revision))
	wctx, stop := context.WithCancel(context.Background())
	s.cancel = stop
	go s.watch(wctx)
	go s.probe(wctx)
	if admin != "" {
		go s.announce(wctx, admin)
	}
	return s, nil
}

// announce records this node under PREFIX/nodes/ADMIN on a lease it keeps
// alive, so l4lb cluster status finds every node through etcd. A node
// that dies leaves the list within the lease (10 s).
func (s *Store) announce(ctx context.Context, admin string) {
	b, _ := json.Marshal(map[string]any{"admin": admin, "pid": os.Getpid(), "started_at": time.Now().UTC()})
	for ctx.Err() == nil {
		if err := s.keepNode(ctx, admin, string(b)); err != nil && ctx.Err() == nil {
			s.log.Debug("registry: recording this node in etcd", zap.Error(err))
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (s *Store) keepNode(ctx context.Context, admin, value string) error {
	g, err := s.cli.Grant(ctx, 10)
	if err != nil {
		return err
	}
	if _, err := s.cli.Put(ctx, s.root+"/nodes/"+admin, value, clientv3.WithLease(g.ID)); err != nil {
		return err
	}
	ch, err := s.cli.KeepAlive(ctx, g.ID)
	if err != nil {
		return err
	}
	for range ch { // until the lease is lost (etcd away) or ctx ends
	}
	return errors.New("node lease lost")
}

// Nodes lists the admin addresses of the nodes recorded in etcd.
func (s *Store) Nodes(ctx context.Context) ([]string, error) {
	resp, err := s.cli.Get(ctx, s.root+"/nodes/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, err
	}
	var out []string
	for _, kv := range resp.Kvs {
		out = append(out, strings.TrimPrefix(string(kv.Key), s.root+"/nodes/"))
	}
	return out, nil
}

// probe asks etcd every second whether it answers: a watch whose members
// all died waits without an error, and the node must know it serves old
// state. When etcd answers again the watch resumes by itself from the
// revision after the one applied.
func (s *Store) probe(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		c, cancel := context.WithTimeout(ctx, time.Second)
		_, err := s.cli.Get(c, s.prefix, clientv3.WithPrefix(), clientv3.WithCountOnly(), clientv3.WithSerializable())
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			s.lost(err)
		case !s.connected.Swap(true):
			s.m.up.Set(1)
			s.log.Info("registry: etcd answers again", zap.Int64("applied_revision", s.applied.Load()))
		default:
			// Ask the watch for a progress notice: it comes after every
			// event up to the store's revision now, and the node then has
			// applied that revision. Writes outside the targets (node
			// records, other clusters) move the revision too, so without it
			// nodes that started at different times would show different
			// revisions for the same registrations. (The watch's context:
			// the notice goes to that stream.)
			s.cli.RequestProgress(clientv3.WithRequireLeader(ctx))
		}
	}
}

func tlsConfig(t config.RegistryTLS) (*tls.Config, error) {
	out := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("registry.tls.ca_file: %w", err)
		}
		out.RootCAs = x509.NewCertPool()
		out.RootCAs.AppendCertsFromPEM(pem)
	}
	if t.CertFile != "" {
		c, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("registry.tls: %w", err)
		}
		out.Certificates = []tls.Certificate{c}
	}
	return out, nil
}

// watch follows the prefix from the revision after the one applied, and
// starts again from there whenever the watch breaks (etcd away, a leader
// change): nothing is missed, and nothing changes meanwhile.
func (s *Store) watch(ctx context.Context) {
	defer close(s.done)
	for ctx.Err() == nil {
		wch := s.cli.Watch(clientv3.WithRequireLeader(ctx), s.root+"/", clientv3.WithPrefix(), clientv3.WithRev(s.applied.Load()+1))
		for resp := range wch {
			if err := resp.Err(); err != nil {
				s.lost(err)
				break
			}
			if !s.connected.Swap(true) {
				s.m.up.Set(1)
				s.log.Info("registry: etcd watch resumed", zap.Int64("from_revision", s.applied.Load()+1))
			}
			for _, ev := range resp.Events {
				s.applyKey(ev.Kv.Key, ev.Kv.Value, ev.Type == clientv3.EventTypeDelete)
			}
			s.setApplied(resp.Header.Revision)
		}
		if ctx.Err() != nil {
			return
		}
		s.lost(errors.New("watch ended"))
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// lost records that the watch broke; the node serves what it applied.
func (s *Store) lost(err error) {
	if s.connected.Swap(false) {
		s.m.up.Set(0)
		s.since.Store(time.Now().UnixNano())
		s.log.Warn("registry: etcd unreachable; serving the state applied last", zap.Int64("revision", s.applied.Load()), zap.Error(err))
	}
}

func (s *Store) setApplied(rev int64) {
	s.mu.Lock()
	if rev > s.applied.Load() {
		s.applied.Store(rev)
		s.m.revision.Set(float64(rev))
	}
	s.appliedC.Broadcast()
	s.mu.Unlock()
}

// apply makes the local registry say what one key says.
func (s *Store) apply(key, value []byte, deleted bool) {
	group, addr, ok := s.parseKey(string(key))
	if !ok {
		s.log.Warn("registry: a key under the prefix that is not GROUP/ADDRESS; ignored", zap.String("key", string(key)))
		return
	}
	if deleted { // a lapsed lease, or a deregistration's record cleared
		s.deregister(group, addr, time.Now())
		return
	}
	var r Record
	if err := json.Unmarshal(value, &r); err != nil {
		s.log.Warn("registry: a record that is not JSON; ignored", zap.String("key", string(key)), zap.Error(err))
		return
	}
	if r.DeregisteredAt != nil {
		s.deregister(group, addr, *r.DeregisteredAt)
		return
	}
	if _, err := s.reg.Register(group, registry.Registration{Address: addr.String(), Zone: r.Zone, Weight: r.Weight, QUICServerID: r.QUICServerID}); err != nil {
		s.log.Warn("registry: a registration this node cannot apply", zap.String("key", string(key)), zap.Error(err))
	}
}

func (s *Store) deregister(group string, addr netip.AddrPort, at time.Time) {
	err := s.reg.DeregisterAt(group, addr, at)
	if err != nil && !errors.Is(err, registry.ErrNotFound) {
		s.log.Warn("registry: a deregistration this node cannot apply", zap.String("group", group), zap.Stringer("target", addr), zap.Error(err))
	}
}

// parseKey reads PREFIX/targets/GROUP/ADDRESS.
func (s *Store) parseKey(key string) (string, netip.AddrPort, bool) {
	group, addr, ok := strings.Cut(strings.TrimPrefix(key, s.prefix), "/")
	a, err := netip.ParseAddrPort(addr)
	return group, a, ok && err == nil && group != ""
}

func (s *Store) key(group string, addr netip.AddrPort) string {
	return s.prefix + group + "/" + addr.String()
}

// Lease ties a registration to an etcd lease: TTL seconds (0: none), and
// the lease a previous registration got, to renew (0: a new one).
type Lease struct {
	TTL int
	ID  int64
}

// Register writes a registration for every node, and returns once this
// node has applied it, with the lease it lives on (0: none). It is checked
// by the local registry's rules first, so what one node would refuse is
// refused before anything is written.
func (s *Store) Register(ctx context.Context, group string, req registry.Registration, lease Lease) (registry.Health, int64, error) {
	_, addr, weight, err := s.reg.Check(group, req) // refused here as on one node
	if err != nil {
		return registry.Health{}, 0, err
	}
	var opts []clientv3.OpOption
	leaseID := clientv3.LeaseID(0)
	if lease.TTL > 0 {
		if leaseID, err = s.lease(ctx, lease); err != nil {
			return registry.Health{}, 0, err
		}
		if int64(leaseID) == lease.ID && s.unchanged(ctx, group, addr, req.Zone, weight, leaseID) {
			// A renewal: the lease was kept alive, and the record is
			// as it was; nothing to write.
			for _, h := range s.health(group) {
				if h.Address == addr {
					return h, int64(leaseID), nil
				}
			}
		}
		opts = append(opts, clientv3.WithLease(leaseID))
	} else if s.unchanged(ctx, group, addr, req.Zone, weight, 0) {
		// Registered already, as asked: nothing to write (a target that
		// registers at every boot costs etcd no write, and no node work).
		for _, h := range s.health(group) {
			if h.Address == addr {
				return h, 0, nil
			}
		}
	}
	b, _ := json.Marshal(Record{Group: group, Address: addr.String(), Zone: req.Zone, Weight: weight, QUICServerID: req.QUICServerID, RegisteredAt: time.Now().UTC()})
	resp, err := s.cli.Put(ctx, s.key(group, addr), string(b), opts...)
	if err != nil {
		return registry.Health{}, 0, fmt.Errorf("registry: writing to etcd: %w", err)
	}
	s.waitApplied(ctx, resp.Header.Revision)
	for _, h := range s.health(group) {
		if h.Address == addr {
			return h, int64(leaseID), nil
		}
	}
	return registry.Health{Address: addr, Zone: req.Zone, Weight: weight, State: registry.Initial, Reason: registry.ReasonInitialHealthChecking}, int64(leaseID), nil
}

// unchanged says whether the record of addr is there, on lease id, with
// this zone and weight, and not deregistered.
func (s *Store) unchanged(ctx context.Context, group string, addr netip.AddrPort, zone string, weight int, id clientv3.LeaseID) bool {
	got, err := s.cli.Get(ctx, s.key(group, addr))
	if err != nil || len(got.Kvs) != 1 || clientv3.LeaseID(got.Kvs[0].Lease) != id {
		return false
	}
	var r Record
	return json.Unmarshal(got.Kvs[0].Value, &r) == nil && r.DeregisteredAt == nil && r.Zone == zone && r.Weight == weight
}

// lease renews the caller's lease, or grants a new one when it has none or
// it lapsed.
func (s *Store) lease(ctx context.Context, l Lease) (clientv3.LeaseID, error) {
	if l.ID != 0 {
		if _, err := s.cli.KeepAliveOnce(ctx, clientv3.LeaseID(l.ID)); err == nil {
			return clientv3.LeaseID(l.ID), nil
		}
	}
	g, err := s.cli.Grant(ctx, int64(l.TTL))
	if err != nil {
		return 0, fmt.Errorf("registry: an etcd lease: %w", err)
	}
	return g.ID, nil
}

// Deregister records a deregistration, with its time, for every node. A
// target this node knows only from its config file is deregistered here
// too, and recorded for the others.
func (s *Store) Deregister(ctx context.Context, group, address string) error {
	g := s.reg.Group(group)
	if g == nil {
		return fmt.Errorf("%w: no target group %q", registry.ErrNotFound, group)
	}
	addr, err := config.ParseTargetAddress(address, g.Config().Port)
	if err != nil {
		return fmt.Errorf("%w: address: %v", registry.ErrInvalid, err)
	}
	known := false
	for _, h := range s.health(group) {
		known = known || h.Address == addr
	}
	if !known {
		return fmt.Errorf("%w: %s is not registered in %q", registry.ErrNotFound, addr, group)
	}
	now := time.Now().UTC()
	rec := Record{Group: group, Address: addr.String(), Weight: 1, RegisteredAt: now, DeregisteredAt: &now}
	if got, err := s.cli.Get(ctx, s.key(group, addr)); err == nil && len(got.Kvs) == 1 {
		var old Record
		if json.Unmarshal(got.Kvs[0].Value, &old) == nil {
			old.DeregisteredAt = &now
			rec = old
		}
	}
	b, _ := json.Marshal(rec)
	resp, err := s.cli.Put(ctx, s.key(group, addr), string(b))
	if err != nil {
		return fmt.Errorf("registry: writing to etcd: %w", err)
	}
	s.waitApplied(ctx, resp.Header.Revision)
	return nil
}

// waitApplied waits, for a few seconds at most, until this node applied
// revision rev: the caller then sees its own change.
func (s *Store) waitApplied(ctx context.Context, rev int64) {
	deadline := time.Now().Add(5 * time.Second)
	timer := time.AfterFunc(5*time.Second, func() { s.mu.Lock(); s.appliedC.Broadcast(); s.mu.Unlock() })
	defer timer.Stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.applied.Load() < rev && time.Now().Before(deadline) && ctx.Err() == nil {
		s.appliedC.Wait()
	}
}

func (s *Store) health(group string) []registry.Health {
	g, err := s.reg.TargetGroup(group)
	if err != nil {
		return nil
	}
	return g.Targets
}

// Status is the node's view of the cluster's registrations.
type Status struct {
	Applied   int64     // the etcd revision applied
	Connected bool      // the watch runs
	LostAt    time.Time // when it broke, while it is broken
}

// Status says what the node applied and whether etcd is reachable.
func (s *Store) Status() Status {
	st := Status{Applied: s.applied.Load(), Connected: s.connected.Load()}
	if !st.Connected {
		st.LostAt = time.Unix(0, s.since.Load())
	}
	return st
}

// Close stops the watch.
func (s *Store) Close() {
	s.closeOnce.Do(func() {
		s.cancel()
		<-s.done
		s.cli.Close()
	})
}

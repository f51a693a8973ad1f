//go:build integration

package cluster

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/l4lb/l4lb/internal/netnstest"
	"github.com/l4lb/l4lb/lb/registry"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
)

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// freeLoopbackPort is a TCP port free on 127.0.0.1 now.
func freeLoopbackPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// How a registration spreads, with a real etcd (Debian's etcd-server, one
// member on loopback): 3 nodes' stores watch one prefix, each with a
// registry of its own as a node has, alone and then beside 47 more bare
// watches of the prefix (50 watchers: a large cluster, without 50
// registries' work on this machine's 2 cores). It times the register call
// (etcd's commit, and the calling node applying it), the spread to every
// node and to every watcher, and counts the etcd writes each operation
// costs (revisions: one per write). It checks what it measures: every
// node and watcher gets every registration, a registration is one write,
// and renewing a lease none. docs/benchmarks.md quotes its log.
func TestRegistrationConvergence(t *testing.T) {
	etcdBin := netnstest.Need(t, "etcd", "etcd-server")
	client := fmt.Sprintf("http://127.0.0.1:%d", freeLoopbackPort(t))
	peer := fmt.Sprintf("http://127.0.0.1:%d", freeLoopbackPort(t))
	cmd := exec.Command(etcdBin, "--name", "c0", "--data-dir", t.TempDir(),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "c0="+peer,
		"--logger", "zap", "--log-level", "error")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	// One target of the file, healthy on every node, as in a cluster that
	// serves: a target registered then is on its first checks and changes
	// no node's tables.
	serving := netip.MustParseAddrPort("10.9.254.1:80")
	cfg := &config.Config{TargetGroups: []config.TargetGroup{{Name: "web", Protocol: config.TCP, Port: 80, Targets: []config.Target{{Address: serving, Weight: 1}}}}}
	cfg.TargetGroups[0].Attributes.DeregistrationDelay = time.Minute
	cfg.TargetGroups[0].Attributes.UnhealthyRoutingMinHealthyCount = 1
	open := func(n int, prefix string) []*Store {
		var out []*Store
		for range n {
			reg, err := registry.New(cfg, registry.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(reg.Close)
			reg.SetHealth("web", serving, true, "", "")
			var s *Store
			for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				s, err = Open(ctx, config.Registry{Backend: "etcd", Endpoints: []string{client}, Prefix: prefix}, "", reg, nil, metrics.New(prometheus.NewRegistry()), zap.NewNop())
				cancel()
				if err == nil || time.Now().After(deadline) {
					break
				}
			}
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(s.Close)
			out = append(out, s)
		}
		return out
	}
	revision := func(s *Store) int64 {
		resp, err := s.cli.Get(context.Background(), "/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}
	has := func(s *Store, addr netip.AddrPort) bool {
		g, err := s.reg.TargetGroup("web")
		return err == nil && slices.ContainsFunc(g.Targets, func(h registry.Health) bool { return h.Address == addr })
	}

	// watchers are bare etcd watches of the prefix, beside the nodes: each
	// sends the time an event reached it on its channel.
	watchers := func(n int, prefix string) []chan time.Time {
		var out []chan time.Time
		for range n {
			cli, err := clientv3.New(clientv3.Config{Endpoints: []string{client}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cli.Close() })
			ch := make(chan time.Time, 64)
			wch := cli.Watch(context.Background(), prefix, clientv3.WithPrefix())
			go func() {
				for resp := range wch {
					for range resp.Events {
						ch <- time.Now()
					}
				}
			}()
			out = append(out, ch)
		}
		return out
	}
	const nodes, rounds = 3, 20
	for _, extra := range []int{0, 47} {
		prefix := fmt.Sprintf("/l4lb/conv%d", extra)
		stores := open(nodes, prefix)
		watching := watchers(extra, prefix+"/targets/")
		var commit, toNodes, toAll []time.Duration
		writes := map[string]int64{}
		for k := range rounds {
			addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 9, byte(k), 1}), 80)
			before := revision(stores[0])
			start := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, _, err := stores[0].Register(ctx, "web", registry.Registration{Address: addr.String()}, Lease{})
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			commit = append(commit, time.Since(start))
			left := slices.Clone(stores)
			for len(left) > 0 {
				if time.Since(start) > 10*time.Second {
					t.Fatalf("%d nodes still lack registration %d after 10 s", len(left), k)
				}
				left = slices.DeleteFunc(left, func(s *Store) bool { return has(s, addr) })
				time.Sleep(200 * time.Microsecond)
			}
			toNodes = append(toNodes, time.Since(start))
			last := time.Time{}
			for _, ch := range watching {
				select {
				case at := <-ch:
					last = maxTime(last, at)
				case <-time.After(10 * time.Second):
					t.Fatalf("a watcher never heard registration %d", k)
				}
			}
			if extra > 0 {
				toAll = append(toAll, last.Sub(start))
			}
			writes["register"] += revision(stores[0]) - before
			if k > 0 {
				continue
			}
			op := func(what string, f func(context.Context) error) {
				before := revision(stores[0])
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if err := f(ctx); err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				writes[what] = revision(stores[0]) - before
				for _, ch := range watching { // what each watcher heard of it
					for len(ch) > 0 {
						<-ch
					}
				}
			}
			op("again", func(ctx context.Context) error {
				_, _, err := stores[0].Register(ctx, "web", registry.Registration{Address: addr.String()}, Lease{})
				return err
			})
			op("deregister", func(ctx context.Context) error { return stores[1].Deregister(ctx, "web", addr.String()) })
			var id int64
			op("lease", func(ctx context.Context) error {
				_, got, err := stores[0].Register(ctx, "web", registry.Registration{Address: "10.9.255.1:80"}, Lease{TTL: 30})
				id = got
				return err
			})
			op("renew", func(ctx context.Context) error {
				_, _, err := stores[0].Register(ctx, "web", registry.Registration{Address: "10.9.255.1:80"}, Lease{TTL: 30, ID: id})
				return err
			})
			time.Sleep(50 * time.Millisecond) // the watchers' last events
			for _, ch := range watching {
				for len(ch) > 0 {
					<-ch
				}
			}
		}
		if w := writes["register"]; w != rounds {
			t.Errorf("%d registrations cost %d etcd writes; want one each", rounds, w)
		}
		if writes["again"] != 0 || writes["renew"] != 0 {
			t.Errorf("registering again unchanged cost %d etcd writes, renewing a lease %d; want none", writes["again"], writes["renew"])
		}
		q := func(d []time.Duration) string {
			d = slices.Clone(d)
			slices.Sort(d)
			return fmt.Sprintf("p50 %v, max %v", d[len(d)/2].Round(100*time.Microsecond), d[len(d)-1].Round(100*time.Microsecond))
		}
		line := fmt.Sprintf("%d nodes and %d more watchers: register call (etcd commit, this node applied) %s; to every node %s", nodes, extra, q(commit), q(toNodes))
		if extra > 0 {
			line += "; to every watcher " + q(toAll)
		}
		t.Logf("%s (%d registrations). etcd writes: %d per registration, %d to register again unchanged, %d per deregistration, %d to register with a lease, %d to renew it",
			line, rounds, writes["register"]/rounds, writes["again"], writes["deregister"], writes["lease"], writes["renew"])
	}
}

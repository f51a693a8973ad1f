package cluster

import (
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb/registry"
	"github.com/l4lb/l4lb/pkg/config"
)

func testStore(t *testing.T) *Store {
	t.Helper()
	cfg := &config.Config{TargetGroups: []config.TargetGroup{{Name: "web", Protocol: config.TCP, Port: 80}}}
	cfg.TargetGroups[0].Attributes.DeregistrationDelay = time.Minute
	reg, err := registry.New(cfg, registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Close)
	return &Store{prefix: "/l4lb/t/targets/", reg: reg, log: zap.NewNop()}
}

// A record applies as a registration, the same record with its
// deregistration time as a drain, and a deleted key as a drain from now.
func TestApplyRecords(t *testing.T) {
	s := testStore(t)
	addr := netip.MustParseAddrPort("10.0.0.1:80")
	key := []byte(s.key("web", addr))
	rec := Record{Group: "web", Address: addr.String(), Zone: "", Weight: 3, RegisteredAt: time.Now()}
	b, _ := json.Marshal(rec)
	s.apply(key, b, false)
	g, _ := s.reg.TargetGroup("web")
	if len(g.Targets) != 1 || g.Targets[0].Weight != 3 || g.Targets[0].State != registry.Initial {
		t.Fatalf("after the registration: %+v", g.Targets)
	}
	at := time.Now().Add(-10 * time.Second)
	rec.DeregisteredAt = &at
	b, _ = json.Marshal(rec)
	s.apply(key, b, false)
	g, _ = s.reg.TargetGroup("web")
	if g.Targets[0].State != registry.Draining {
		t.Fatalf("after the deregistration: %+v", g.Targets)
	}
	// Keys that are not GROUP/ADDRESS, and values that are not records,
	// are ignored, not applied.
	s.apply([]byte(s.prefix+"web"), b, false)
	s.apply([]byte(s.prefix+"web/not-an-address"), b, false)
	s.apply([]byte(s.key("web", netip.MustParseAddrPort("10.0.0.2:80"))), []byte("{"), false)
	s.apply([]byte(s.key("nope", addr)), b, false)
	if g, _ = s.reg.TargetGroup("web"); len(g.Targets) != 1 {
		t.Fatalf("bad keys or values changed the group: %+v", g.Targets)
	}
}

// Whatever a key and a value under the prefix hold, applying them never
// panics (another writer of etcd, or a damaged record).
func FuzzApply(f *testing.F) {
	f.Add("web/10.0.0.1:80", `{"group":"web","address":"10.0.0.1:80","weight":1}`, false)
	f.Add("web/10.0.0.1:80", `{"deregistered_at":"2026-01-01T00:00:00Z"}`, false)
	f.Add("web/[::1]:80", ``, true)
	f.Fuzz(func(t *testing.T, key, value string, deleted bool) {
		s := testStore(t)
		s.apply([]byte(s.prefix+key), []byte(value), deleted)
	})
}

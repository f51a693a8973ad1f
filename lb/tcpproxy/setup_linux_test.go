package tcpproxy

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/l4lb/l4lb/lb/listen"
	"github.com/l4lb/l4lb/lb/registry"
	"github.com/l4lb/l4lb/pkg/config"
)

// A panic on a connection's goroutine after its target was dialled gives
// back everything the setup took: the client is reset, the target
// connection closed, the budget's descriptors and the per-source slot
// returned. Before, the recover only logged, and each such panic leaked a
// target connection and three slots.
func TestPanicInSetupGivesBackWhatItTook(t *testing.T) {
	// A target that says when its side of a connection closes.
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tl.Close()
	closed := make(chan error, 8)
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			go func() {
				_, err := io.Copy(io.Discard, c)
				c.Close()
				closed <- err
			}()
		}
	}()

	lc := config.Listener{Name: "web", Protocol: config.TCP, Bind: []config.BindAddr{{IP: netip.MustParseAddr("127.0.0.1")}},
		TargetGroup: "tg", IdleTimeout: time.Minute, MaxConnectionsPerSource: 1,
		Allow: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}}
	g := config.TargetGroup{Name: "tg", Protocol: config.TCP,
		Targets: []config.Target{{Address: tl.Addr().(*net.TCPAddr).AddrPort(), Weight: 1}}}
	g.Attributes.CrossZone = config.CrossZoneInherit
	cfg := &config.Config{Listeners: []config.Listener{lc}, TargetGroups: []config.TargetGroup{g}, MaxFlows: 1000}
	reg, err := registry.New(cfg, registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, reg, Options{NoEventLoop: true, MaxFlows: 100})
	if err != nil {
		t.Fatal(err)
	}
	steps := setupSteps
	setupSteps[8] = func(*setup) (listen.Reason, bool) { panic("a step failed unexpectedly") } // after connect
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		s.Shutdown(t.Context()) // its flows' goroutines read the steps
		setupSteps = steps
	}()
	addr := s.set.Current()[0].Addr().String()

	for i := range 3 { // a leaked per-source slot would refuse the second
		c, err := net.Dial("tcp", addr)
		if err == nil { // else the reset came before the dial returned
			c.SetDeadline(time.Now().Add(5 * time.Second))
			_, err = c.Read(make([]byte, 1))
			c.Close()
		}
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("connection %d: the client read %v, want a reset", i, err)
		}
		select {
		case <-closed:
		case <-time.After(5 * time.Second):
			t.Fatalf("connection %d: the target connection stayed open", i)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for s.budget.InUse() != 0 || s.flows.count() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after the panics: %d budget slots taken, %d flows", s.budget.InUse(), s.flows.count())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

//go:build integration

package lb

import (
	"errors"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/l4lb/l4lb/internal/netnstest"
	"github.com/l4lb/l4lb/pkg/api"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
)

// A wildcard listener owns its port on every address of the host, not only
// loopback ones: registering the host's interface address with that port is
// refused (400), as a config naming it is. An address the host gains later
// is seen (netlink), so a target registered before it was the host's is
// refused on the data path, one hop, as a loop.
func TestLoopOnHostAddress(t *testing.T) {
	if netnstest.Inside("L4LB_LOOP_NETNS") {
		testLoopOnHostAddress(t)
		return
	}
	netnstest.Rerun(t, "L4LB_LOOP_NETNS", "198.18.71.1/32")
}

func testLoopOnHostAddress(t *testing.T) {
	port := uint16(8171)
	reg := prometheus.NewRegistry()
	target := startEcho(t)
	cfg := testConfig([]config.Target{{Address: target.addr, Weight: 1}}, func(l *config.Listener, _ *config.TargetGroup) {
		l.Port = port
		l.Bind = []config.BindAddr{{IP: netip.IPv4Unspecified()}}
	})
	srv := startedServer(t, cfg, Options{Metrics: metrics.New(reg), ConnectTimeout: time.Second})
	for _, a := range []string{"198.18.71.1:8171", "127.0.0.1:8171", "127.3.4.5:8171"} {
		if _, err := srv.Register("tg", api.RegisterRequest{Address: a}); !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "loop") {
			t.Fatalf("register %s behind 0.0.0.0:8171: %v", a, err)
		}
	}
	for _, a := range []string{"0.0.0.1:80", "240.0.0.1:80"} {
		if _, err := srv.Register("tg", api.RegisterRequest{Address: a}); !errors.Is(err, api.ErrInvalid) {
			t.Fatalf("register %s: %v", a, err)
		}
	}
	if errs := config.CheckLoops(&config.Config{Listeners: cfg.Listeners, TargetGroups: []config.TargetGroup{{Name: "x", Protocol: config.TCP,
		Targets: []config.Target{{Address: netip.MustParseAddrPort("198.18.71.1:8171")}}}}}, srv.host.Local); len(errs) != 1 {
		t.Fatalf("the config check with the host's addresses: %v", errs)
	}
	// Not the host's yet: registered. Then the host gains it.
	if _, err := srv.Register("tg", api.RegisterRequest{Address: "198.18.71.2:8171", Weight: 1000}); err != nil {
		t.Fatal(err)
	}
	srv.Deregister("tg", target.addr.String())
	out, err := exec.Command("ip", "addr", "add", "198.18.71.2/32", "dev", "lo").CombinedOutput()
	if err != nil {
		t.Fatalf("ip addr add: %v %s", err, out)
	}
	waitFor(t, func() bool { return srv.host.Local(netip.MustParseAddr("198.18.71.2")) })
	// The loop is cut so fast that the reset can reach the client while
	// its connect is still being reported.
	if c, err := net.DialTimeout("tcp", "198.18.71.1:8171", 2*time.Second); err == nil {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		c.Read(make([]byte, 1))
		c.Close()
	}
	waitFor(t, func() bool { return sumWhere(reg, "l4lb_rejected_flows_total", `reason="loop"`) >= 1 })
	time.Sleep(300 * time.Millisecond)
	if n := sumWhere(reg, "l4lb_new_flows_total"); n > 2 {
		t.Fatalf("one client connection became %v flows", n)
	}
}

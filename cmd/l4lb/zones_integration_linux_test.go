//go:build integration

package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/l4lb/l4lb/pkg/api"
)

// A zonal shift takes a zone out of service: its health answers 503 within
// a second, while a connection established through it goes on; the shift
// survives a reload and a binary upgrade, and a cancel ends it.
func TestZonalShiftSurvivesReloadAndUpgrade(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "l4lb")
	buildL4LB(t, bin, "zones-test")
	target := tcpEchoAt(t, "127.0.0.1:"+freePort(t))
	pWeb, pAdmin := freePort(t), freePort(t)
	d := startDaemon(t, bin, pAdmin, fmt.Sprintf(`admin: {listen: "127.0.0.1:%s"}
zones: {a: [127.0.0.1], b: [127.0.0.2]}
listeners: [{name: web, port: %s, target_group: web}]
target_groups:
  - name: web
    targets: [{address: %q}]
    health_check: {protocol: TCP, interval: 200ms, timeout: 150ms, healthy_threshold: 2}
    attributes: {load_balancing.cross_zone.enabled: "true"}
`, pAdmin, pWeb, target))
	health := func(zone string) (int, api.ZoneHealth) {
		t.Helper()
		resp, err := http.Get(d.admin + "/v1/zones/" + zone + "/health")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var zh api.ZoneHealth
		json.NewDecoder(resp.Body).Decode(&zh)
		return resp.StatusCode, zh
	}
	waitUntil(t, "zone a healthy", func() bool { code, _ := health("a"); return code == http.StatusOK })
	established, err := net.Dial("tcp", "127.0.0.1:"+pWeb)
	if err != nil {
		t.Fatal(err)
	}
	defer established.Close()
	if err := echo(established, "before"); err != nil {
		t.Fatal(err)
	}

	if code, _, errs := runCLI("zones", "shift", "--away-from", "a", "--expires-in", "10s", "--admin", d.admin); code != 2 || !strings.Contains(errs, "outside 1m0s to 72h0m0s") {
		t.Fatalf("a 10 s shift: exit %d: %s; want refused", code, errs)
	}
	if code, _, errs := runCLI("zones", "shift", "--away-from", "c", "--expires-in", "1h", "--admin", d.admin); code != 2 || !strings.Contains(errs, `no zone "c"`) {
		t.Fatalf("a shift of an unknown zone: exit %d: %s", code, errs)
	}
	start := time.Now()
	if code, _, errs := runCLI("zones", "shift", "--away-from", "a", "--expires-in", "1h", "--admin", d.admin); code != 0 {
		t.Fatalf("zones shift: exit %d: %s", code, errs)
	}
	code, zh := health("a")
	if code != http.StatusServiceUnavailable || zh.ZonalShift == nil || time.Until(zh.ZonalShift.Expires) < 59*time.Minute {
		t.Fatalf("zone a's health with a shift: %d %+v", code, zh)
	}
	flipped := time.Since(start)
	if code, _ := health("b"); code != http.StatusOK {
		t.Fatalf("zone b's health during zone a's shift: %d", code)
	}
	if err := echo(established, "during"); err != nil {
		t.Fatalf("the established connection during the shift: %v", err)
	}
	metric := func() float64 {
		resp, err := http.Get(d.admin + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		buf := make([]byte, 1<<16)
		for {
			n, err := resp.Body.Read(buf)
			b.Write(buf[:n])
			if err != nil {
				break
			}
		}
		for _, line := range strings.Split(b.String(), "\n") {
			if strings.HasPrefix(line, `l4lb_zonal_shift_active{zone="a"}`) {
				var v float64
				fmt.Sscan(strings.Fields(line)[1], &v)
				return v
			}
		}
		return -1
	}
	if m := metric(); m != 1 {
		t.Fatalf("l4lb_zonal_shift_active{zone=a} %v during the shift", m)
	}

	// A reload and an upgrade keep it.
	if code, _, errs := runCLI("reload", "--admin", d.admin); code != 0 {
		t.Fatalf("reload: exit %d: %s", code, errs)
	}
	if code, _ := health("a"); code != http.StatusServiceUnavailable {
		t.Fatalf("zone a's health after a reload: %d; the shift was lost", code)
	}
	u := d.upgrade()
	waitUntil(t, "the new process on the admin API", func() bool { return d.running().PID == u.NewPID })
	code, out, errs := runCLI("zones", "list", "--admin", d.admin, "-o", "json")
	var zones []api.Zone
	if code != 0 || json.Unmarshal([]byte(out), &zones) != nil || len(zones) != 2 || zones[0].ZonalShift == nil || zones[0].Healthy || !zones[1].Healthy {
		t.Fatalf("zones list after the upgrade: exit %d: %s%s", code, out, errs)
	}
	if err := echo(established, "after the upgrade"); err != nil {
		t.Fatalf("the established connection after the upgrade: %v", err)
	}

	if code, _, errs := runCLI("zones", "cancel", "a", "--admin", d.admin); code != 0 {
		t.Fatalf("zones cancel: exit %d: %s", code, errs)
	}
	if code, zh := health("a"); code != http.StatusOK || zh.ZonalShift != nil {
		t.Fatalf("zone a's health after the cancel: %d %+v", code, zh)
	}
	if m := metric(); m != 0 {
		t.Fatalf("l4lb_zonal_shift_active{zone=a} %v after the cancel", m)
	}
	if code, _, errs := runCLI("zones", "cancel", "a", "--admin", d.admin); code != 2 || !strings.Contains(errs, "no zonal shift") {
		t.Fatalf("a second cancel: exit %d: %s", code, errs)
	}
	t.Logf("zone a shifted away: its health said 503 %v after the call; the shift outlived a reload and an upgrade, and the connection established before it carried data throughout", flipped.Round(time.Millisecond))
	syscall.Kill(u.NewPID, syscall.SIGTERM)
}

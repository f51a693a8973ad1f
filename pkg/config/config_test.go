package config

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite golden files")

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if string(got) != string(want) {
		t.Errorf("%s differs:\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

func TestValidGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/valid/*.yaml")
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			cfg, err := Load(f)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			out, err := cfg.YAML()
			if err != nil {
				t.Fatal(err)
			}
			golden(t, strings.TrimSuffix(f, ".yaml")+".golden", out)

			// The normalized form must load back to the same config.
			raw, err := DecodeYAML(out)
			if err != nil {
				t.Fatalf("normalized output does not decode: %v", err)
			}
			again, err := Normalize(raw)
			if err != nil {
				t.Fatalf("normalized output does not validate: %v", err)
			}
			if !reflect.DeepEqual(cfg, again) {
				t.Errorf("round trip changed the config:\n%+v\n%+v", cfg, again)
			}
		})
	}
}

func TestInvalidGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/invalid/*.yaml")
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			_, err := Load(f)
			if err == nil {
				t.Fatal("Load succeeded, want errors")
			}
			if _, ok := err.(Errors); !ok {
				t.Fatalf("error is %T, want Errors", err)
			}
			golden(t, strings.TrimSuffix(f, ".yaml")+".golden", []byte(err.Error()+"\n"))
		})
	}
}

func TestDefaults(t *testing.T) {
	cfg, err := Load("testdata/valid/minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	l := cfg.Listeners[0]
	if l.Name != "tcp-8080" || l.Protocol != TCP || l.IdleTimeout != 350*time.Second || l.UDPIdleTimeout != 120*time.Second {
		t.Errorf("listener defaults: %+v", l)
	}
	if len(l.Bind) != 1 || !l.Bind[0].IP.IsUnspecified() {
		t.Errorf("bind without zones = %v, want 0.0.0.0", l.Bind)
	}
	g := cfg.TargetGroups[0]
	h := g.HealthCheck
	if h.Protocol != HealthTCP || h.Interval != 30*time.Second || h.Timeout != 10*time.Second || h.HealthyThreshold != 5 || h.UnhealthyThreshold != 2 {
		t.Errorf("health defaults: %+v", h)
	}
	a := g.Attributes
	if a.DeregistrationDelay != 300*time.Second || !a.UnhealthyConnectionTermination || a.UnhealthyRoutingMinHealthyCount != 1 || a.CrossZone != CrossZoneInherit {
		t.Errorf("attribute defaults: %+v", a)
	}
	if cfg.Admin.Listen != "127.0.0.1:9900" || cfg.ShutdownTimeout != 30*time.Second {
		t.Errorf("admin or shutdown defaults: %+v %v", cfg.Admin, cfg.ShutdownTimeout)
	}
}

func TestZoneBinds(t *testing.T) {
	cfg, err := Load("testdata/valid/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b := cfg.Listeners[0].Bind
	if len(b) != 2 || b[0].Zone != "a" || b[1].Zone != "b" || b[0].IP.String() != "10.0.1.5" {
		t.Errorf("binds = %+v, want every zone IP with its zone", b)
	}
	if !cfg.TargetGroups[0].CrossZoneEnabled(false) || cfg.TargetGroups[1].CrossZoneEnabled(false) {
		t.Error("cross-zone attribute not resolved against the load balancer setting")
	}
}

func ptr[T any](v T) *T { return &v }

func TestFlags(t *testing.T) {
	f := Flags{
		Listen:              []string{"tcp://127.0.0.1:8080"},
		Targets:             []string{"127.0.0.1:9001", "127.0.0.1:9002,weight=2"},
		HealthFlags:         HealthFlags{HealthCheck: ptr("http://:9100/health"), HealthInterval: ptr("200ms"), UnhealthyThreshold: ptr(3)},
		IdleTimeout:         ptr("2s"),
		DeregistrationDelay: ptr("1500ms"),
		Stickiness:          ptr("source_ip"),
		Admin:               ptr("off"),
	}
	raw := &Raw{}
	if err := f.Apply(raw); err != nil {
		t.Fatal(err)
	}
	cfg, err := Normalize(raw)
	if err != nil {
		t.Fatal(err)
	}
	l, g := cfg.Listeners[0], cfg.TargetGroups[0]
	if l.TargetGroup != "default" || l.IdleTimeout != 2*time.Second || l.Bind[0].IP.String() != "127.0.0.1" {
		t.Errorf("listener from flags: %+v", l)
	}
	if len(g.Targets) != 2 || g.Targets[1].Weight != 2 {
		t.Errorf("targets from flags: %+v", g.Targets)
	}
	if g.HealthCheck.Protocol != HealthHTTP || g.HealthCheck.Port != 9100 || g.HealthCheck.Path != "/health" || g.HealthCheck.Interval != 200*time.Millisecond || g.HealthCheck.Timeout != 200*time.Millisecond || g.HealthCheck.UnhealthyThreshold != 3 {
		t.Errorf("health check from flags: %+v", g.HealthCheck)
	}
	if g.Attributes.DeregistrationDelay != 2*time.Second || !g.Attributes.Stickiness {
		t.Errorf("attributes from flags: %+v", g.Attributes)
	}
	if cfg.Admin.Listen != "" {
		t.Errorf("--admin off gave %q", cfg.Admin.Listen)
	}
}

func TestFlagErrorsNameTheFlag(t *testing.T) {
	f := Flags{
		Listen:      []string{"sctp://:1", "tcp://:0", "tcp://nohost:80"},
		Targets:     []string{"somewhere", "127.0.0.1:1,colour=red"},
		Zones:       []string{"a"},
		HealthFlags: HealthFlags{HealthCheck: ptr("ftp://x/")},
	}
	err := f.Apply(&Raw{})
	errs, ok := err.(Errors)
	if !ok {
		t.Fatalf("err = %v, want Errors", err)
	}
	for _, want := range []string{"--listen[0]", "--listen[1]", "--listen[2]", "--target[0]", "--target[1]", "--zone[0]", "--health-check"} {
		found := false
		for _, e := range errs {
			found = found || e.Path == want
		}
		if !found {
			t.Errorf("no error for %s in:\n%v", want, err)
		}
	}
}

func TestFlagsOverrideFile(t *testing.T) {
	raw, err := LoadRaw("testdata/valid/minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f := Flags{IdleTimeout: ptr("9s"), HealthFlags: HealthFlags{HealthyThreshold: ptr(2)}}
	if err := f.Apply(raw); err != nil {
		t.Fatal(err)
	}
	cfg, err := Normalize(raw)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listeners[0].IdleTimeout != 9*time.Second || cfg.TargetGroups[0].HealthCheck.HealthyThreshold != 2 {
		t.Errorf("flags did not override the file: %+v %+v", cfg.Listeners[0], cfg.TargetGroups[0].HealthCheck)
	}
}

// FuzzConfig feeds arbitrary documents to the decoder and validator: they may
// refuse, never panic, and whatever they accept must survive a round trip.
func FuzzConfig(f *testing.F) {
	for _, dir := range []string{"testdata/valid/*.yaml", "testdata/invalid/*.yaml"} {
		files, _ := filepath.Glob(dir)
		for _, file := range files {
			b, _ := os.ReadFile(file)
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		raw, err := DecodeYAML(data)
		if err != nil {
			return
		}
		roundTrips(t, raw)
	})
}

// FuzzFlags feeds arbitrary values to the serve flags that are parsed
// (--listen, --target, --zone, --health-check): they may be refused, each
// error naming its flag, never panic, and whatever is accepted must
// normalize to a config that survives a round trip.
func FuzzFlags(f *testing.F) {
	f.Add("tcp://127.0.0.1:80", "10.0.0.1:8080,zone=a,weight=2", "a=10.0.0.5;10.0.0.6", "http://:8080/healthz")
	f.Add(":53", "[::1]:53", "b=::1", "tcp")
	f.Add("udp://[::]:5353", "10.0.0.1,weight=0", "=", "https:///")
	f.Fuzz(func(t *testing.T, listen, target, zone, health string) {
		fl := Flags{Listen: []string{listen}, Targets: []string{target}, Zones: []string{zone}, HealthFlags: HealthFlags{HealthCheck: &health}}
		raw := &Raw{}
		if err := fl.Apply(raw); err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, "--") {
					t.Fatalf("an error that names no flag: %q", line)
				}
			}
			return
		}
		roundTrips(t, raw)
	})
}

// roundTrips checks that a raw config, if it validates, prints as YAML that
// decodes and validates again.
func roundTrips(t *testing.T, raw *Raw) {
	t.Helper()
	cfg, err := Normalize(raw)
	if err != nil {
		return
	}
	out, err := cfg.YAML()
	if err != nil {
		t.Fatalf("YAML: %v", err)
	}
	raw2, err := DecodeYAML(out)
	if err != nil {
		t.Fatalf("normalized output does not decode: %v\n%s", err, out)
	}
	if _, err := Normalize(raw2); err != nil {
		t.Fatalf("normalized output does not validate: %v\n%s", err, out)
	}
}

// A few kilobytes of nested aliases ("billion laughs") are refused quickly,
// with a clear error, instead of expanding without bound.
func TestAliasBombRefused(t *testing.T) {
	// 1000 listeners, each with the same 1000 SNI rules of 100 names: a
	// few kilobytes naming 10^8 values.
	rep := func(s string, n int) string { return strings.TrimSuffix(strings.Repeat(s+", ", n), ", ") }
	var b strings.Builder
	fmt.Fprintf(&b, "x-names: &n [%s]\n", rep("a.example", 100))
	b.WriteString("x-rule: &r {sni: *n, target_group: web}\n")
	fmt.Fprintf(&b, "x-rules: &rs [%s]\n", rep("*r", 1000))
	b.WriteString("x-listener: &l {port: 443, target_group: web, rules: *rs}\n")
	fmt.Fprintf(&b, "listeners: [%s]\n", rep("*l", 1000))
	start := time.Now()
	_, err := DecodeYAML([]byte(b.String()))
	took := time.Since(start)
	var errs Errors
	if !errors.As(err, &errs) || !strings.Contains(err.Error(), "aliases") {
		t.Fatalf("alias bomb: %v", err)
	}
	if took > 2*time.Second { // well under a second here; generous for -race on a loaded machine
		t.Fatalf("refusing an alias bomb of %d bytes took %v", b.Len(), took)
	}
	// A document that uses aliases sensibly still decodes.
	ok := "tg: &tg {name: web, targets: [{address: \"10.0.0.1:80\"}]}\ntarget_groups: [*tg]\nlisteners: [{port: 80, target_group: web}]\n"
	if _, err := DecodeYAML([]byte(ok)); err != nil && strings.Contains(err.Error(), "aliases") {
		t.Fatalf("a sensible alias was refused: %v", err)
	}
}

// An error about a huge value quotes only its start.
func TestHugeValueErrorIsShort(t *testing.T) {
	huge := strings.Repeat("x", 5<<20)
	_, err := DecodeYAML([]byte("listeners: [{port: " + huge + "}]\n"))
	if err == nil {
		t.Fatal("a 50 MB port was accepted")
	}
	if n := len(err.Error()); n > 2*maxErrText+200 {
		t.Fatalf("the error is %d bytes long", n)
	}
	if !strings.Contains(err.Error(), "bytes in all") {
		t.Fatalf("the error does not say the value was cut: %.300s", err)
	}
}

// A config file over MaxFileSize is refused before it is parsed, so a
// 50 MB scalar costs neither seconds nor hundreds of megabytes.
func TestOversizedFileRefusedUnread(t *testing.T) {
	path := filepath.Join(t.TempDir(), "huge.yaml")
	data := []byte("listeners: [{port: " + strings.Repeat("9", MaxFileSize) + "}]\n")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	for name, load := range map[string]func(string) error{
		"Load":    func(p string) error { _, err := Load(p); return err },
		"LoadRaw": func(p string) error { _, err := LoadRaw(p); return err },
	} {
		err := load(path)
		if err == nil || !strings.Contains(err.Error(), "larger than 4 MiB") {
			t.Errorf("%s: a %d-byte file: %v", name, len(data), err)
		}
		var errs Errors
		if errors.As(err, &errs) {
			t.Errorf("%s: the file was parsed: %v", name, err)
		}
	}
	// A file of exactly the limit is read.
	if _, err := ReadFile(writeSized(t, MaxFileSize)); err != nil {
		t.Fatalf("a file of MaxFileSize bytes: %v", err)
	}
}

func writeSized(t *testing.T, n int) string {
	path := filepath.Join(t.TempDir(), "sized.yaml")
	if err := os.WriteFile(path, []byte(strings.Repeat("#", n)), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// A target that is l4lb's own listener is refused, with the target's path:
// the same address, or a wildcard listener's port on a loopback or (with
// the host's addresses) any local address. So are 0.0.0.0/8 and
// 240.0.0.0/4.
func TestLoopsAndReservedTargetsRefused(t *testing.T) {
	yaml := func(bind, target string) string {
		return fmt.Sprintf("listeners: [{name: web, port: 8171, bind: [%q], target_group: web}]\n"+
			"target_groups: [{name: web, targets: [{address: %q}]}]\n", bind, target)
	}
	load := func(y string) error {
		raw, err := DecodeYAML([]byte(y))
		if err != nil {
			return err
		}
		_, err = Normalize(raw)
		return err
	}
	for _, c := range []struct{ bind, target, want string }{
		{"0.0.0.0", "127.0.0.1:8171", `target_groups[0].targets[0].address: 127.0.0.1:8171 is l4lb's own listener "web"`},
		{"0.0.0.0", "127.9.9.9:8171", "own listener"},
		{"::", "[::1]:8171", "own listener"},
		{"::", "127.0.0.1:8171", "own listener"},
		{"192.0.2.7", "192.0.2.7:8171", "own listener"},
		{"0.0.0.0", "0.0.0.1:80", "0.0.0.0/8"},
		{"0.0.0.0", "240.0.0.1:80", "240.0.0.0/4"},
		{"0.0.0.0", "255.255.255.255:80", "broadcast"},
	} {
		err := load(yaml(c.bind, c.target))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("bind %s, target %s: %v; want %q", c.bind, c.target, err, c.want)
		}
	}
	for _, c := range [][2]string{{"0.0.0.0", "127.0.0.1:8172"}, {"192.0.2.7", "192.0.2.8:8171"}, {"0.0.0.0", "192.0.2.8:8171"}} {
		if err := load(yaml(c[0], c[1])); err != nil {
			t.Errorf("bind %s, target %s: %v", c[0], c[1], err)
		}
	}
	// A host address, known to the caller, behind a wildcard listener.
	raw, _ := DecodeYAML([]byte(yaml("0.0.0.0", "192.0.2.8:8171")))
	cfg, err := Normalize(raw)
	if err != nil {
		t.Fatal(err)
	}
	host := func(a netip.Addr) bool { return a == netip.MustParseAddr("192.0.2.8") }
	if errs := CheckLoops(cfg, host); len(errs) != 1 || !strings.Contains(errs.Error(), "own listener") {
		t.Fatalf("a host address behind 0.0.0.0:8171: %v", errs)
	}
}

// A YAML syntax error names the file and the line that broke the document,
// not the line where the list it broke began; a misspelt key says which
// key was meant.
func TestErrorsNameFileLineAndNearKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "l4lb.yaml")
	os.WriteFile(path, []byte("listeners:\n  - name: web\n    protocol: TCP\n   port: 18080\n"), 0o644)
	_, err := Load(path)
	if err == nil || !strings.HasPrefix(err.Error(), path+":4: yaml: ") {
		t.Fatalf("a syntax error on line 4: %v", err)
	}
	os.WriteFile(path, []byte("listeners:\n  - name: web\n    protocl: TCP\n    port: 18080\n    target_group: tg\ntarget_groups: [{name: tg}]\n"), 0o644)
	_, err = Load(path)
	if err == nil || !strings.Contains(err.Error(), "listeners[0].protocl: unknown key; did you mean protocol?") {
		t.Fatalf("a misspelt key: %v", err)
	}
}

// The registry section: the file backend by default, etcd with endpoints
// and a prefix, and each mistake named by its path.
func TestRegistrySection(t *testing.T) {
	base := "listeners: [{name: web, protocol: TCP, port: 80, bind: [127.0.0.1], target_group: tg}]\ntarget_groups: [{name: tg, protocol: TCP}]\n"
	load := func(extra string) (*Config, error) {
		raw, err := DecodeYAML([]byte(base + extra))
		if err != nil {
			return nil, err
		}
		return Normalize(raw)
	}
	cfg, err := load("")
	if err != nil || cfg.Registry.Backend != RegistryFile {
		t.Fatalf("no registry section: %+v, %v", cfg.Registry, err)
	}
	cfg, err = load("registry: {backend: etcd, endpoints: [http://127.0.0.1:2379], prefix: /l4lb/prod}\n")
	if err != nil || cfg.Registry.Backend != RegistryEtcd || cfg.Registry.Prefix != "/l4lb/prod" || len(cfg.Registry.Endpoints) != 1 {
		t.Fatalf("etcd: %+v, %v", cfg.Registry, err)
	}
	roundTrips(t, cfg.ToRaw())
	for extra, want := range map[string]string{
		"registry: {backend: consul}\n":                                         "registry.backend: \"consul\" is not file or etcd",
		"registry: {backend: etcd, prefix: /l4lb/x}\n":                          "registry.endpoints: required",
		"registry: {backend: etcd, endpoints: [127.0.0.1:2379], prefix: /x}\n":  "registry.endpoints[0]: want http://HOST:PORT",
		"registry: {backend: etcd, endpoints: [http://127.0.0.1:2379]}\n":       "registry.prefix: required",
		"registry: {backend: etcd, endpoints: [http://a:1], prefix: l4lb/x/}\n": "registry.prefix: \"l4lb/x/\"",
		"registry: {endpoints: [http://a:1]}\n":                                 "registry.backend: endpoints, prefix and tls belong to backend etcd",
	} {
		if _, err := load(extra); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v; want %q", strings.TrimSpace(extra), err, want)
		}
	}
}

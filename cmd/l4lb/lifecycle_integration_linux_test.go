//go:build integration

package main

// Live reload and binary upgrade of a real l4lb process, built from this
// tree, while clients open new connections and run long checksummed
// transfers through it.

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/l4lb/l4lb/bench"
	"github.com/l4lb/l4lb/internal/testpki"
	"github.com/l4lb/l4lb/lb/fastpath"
	"github.com/l4lb/l4lb/pkg/api"
	"github.com/l4lb/l4lb/pkg/config"
)

// buildL4LB builds this tree's l4lb at path, stamped with version. Built
// once, the next builds only link (make test builds bin/l4lb first).
func buildL4LB(t *testing.T, path, version string) {
	t.Helper()
	out, err := exec.Command("go", "build", "-ldflags", "-X main.version="+version, "-o", path, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
}

// daemon is an l4lb process started from a binary on disk, and the
// processes that upgrades start after it (one process group).
type daemon struct {
	t      *testing.T
	bin    string
	config string // the config file's path
	admin  string // http://127.0.0.1:port
	log    string // every process's output
	cmd    *exec.Cmd
	exited chan error // the first process ended
}

// startDaemon runs bin serve on the config yaml (whose admin API listens
// on adminPort) and waits until it is ready.
func startDaemon(t *testing.T, bin, adminPort, yaml string, env ...string) *daemon {
	t.Helper()
	dir := t.TempDir()
	d := &daemon{t: t, bin: bin, config: filepath.Join(dir, "l4lb.yaml"), admin: "http://127.0.0.1:" + adminPort,
		log: filepath.Join(dir, "l4lb.log")}
	d.write(yaml)
	d.start(env...)
	// A process killed here leaves its kernel paths' pins (they outlive
	// l4lb by design): they go with the test.
	t.Cleanup(func() { fastpath.Unpin(filepath.Join(config.DefaultBPFFS, instanceName(d.config, &config.Config{}))) })
	return d
}

// start runs bin serve on d's config, appending to d's log, and waits until
// it is ready.
func (d *daemon) start(env ...string) {
	t := d.t
	t.Helper()
	logf, err := os.OpenFile(d.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	d.exited = make(chan error, 1)
	cmd := exec.Command(d.bin, "serve", "--config", d.config, "--shutdown-timeout", "30s")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d.cmd = cmd
	exited, done := d.exited, make(chan struct{})
	go func() {
		exited <- cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // every process the upgrades started too
		<-done
		if t.Failed() {
			b, _ := os.ReadFile(d.log)
			if len(b) > 64<<10 {
				b = b[len(b)-64<<10:]
			}
			t.Logf("l4lb's log (the end):\n%s", b)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for d.readyz() != http.StatusOK {
		select {
		case err := <-exited:
			b, _ := os.ReadFile(d.log)
			t.Fatalf("l4lb exited at start: %v\n%s", err, b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("l4lb not ready within 20 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (d *daemon) write(yaml string) {
	if err := os.WriteFile(d.config, []byte(yaml), 0o644); err != nil {
		d.t.Fatal(err)
	}
}

// readyz is /readyz's status, or 0 when nothing answers.
func (d *daemon) readyz() int {
	code, _ := d.readyzErr()
	return code
}

func (d *daemon) readyzErr() (int, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(d.admin + "/readyz")
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// running is the config and process serving now (GET /v1/config).
func (d *daemon) running() api.Config {
	d.t.Helper()
	resp, err := http.Get(d.admin + "/v1/config")
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	var c api.Config
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil {
		d.t.Fatal(err)
	}
	return c
}

// upgrade runs `l4lb upgrade` and returns the new process's PID.
func (d *daemon) upgrade() api.Upgrade {
	d.t.Helper()
	code, out, errs := runCLI("upgrade", "--admin", d.admin, "-o", "json")
	if code != 0 {
		d.t.Fatalf("l4lb upgrade: exit %d: %s", code, errs)
	}
	var u api.Upgrade
	if err := json.Unmarshal([]byte(out), &u); err != nil {
		d.t.Fatalf("l4lb upgrade output: %v\n%s", err, out)
	}
	return u
}

// usage is a process's descriptors, goroutines and resident memory.
type usage struct {
	fds, goroutines int
	rssKiB          int
}

func (d *daemon) usage(pid int) usage {
	d.t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		d.t.Fatal(err)
	}
	u := usage{fds: len(ents), goroutines: int(metricSum(d.t, d.admin, "go_goroutines"))}
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			u.rssKiB, _ = strconv.Atoi(f[1])
		}
	}
	return u
}

// waitGone waits until pid has exited (it is not this test's child once
// an upgrade started it, so it is polled).
func waitGone(t *testing.T, pid int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		// Gone, or a zombie nobody reaps: it has exited either way.
		if err != nil || strings.Contains(string(status), ") Z ") {
			return
		}
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGQUIT) // its goroutines, into the log
			time.Sleep(time.Second)
			t.Fatalf("process %d still runs %v later", pid, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// load is a steady stream of new connections and long transfers through
// one l4lb address, to idTargets: each connection reads the target's
// 21-byte name, then has what it sends echoed. Every loop ends when stop
// is called, or after a minute and a half at most.
type load struct {
	addr string
	dial func() (net.Conn, error)
	stop chan struct{}
	wg   sync.WaitGroup

	conns, connFails atomic.Int64
	xfers, broken    atomic.Int64
	begun            atomic.Int64 // transfers started
	mu               sync.Mutex
	problems         []string
	spans            [][2]time.Time // each finished transfer's start and end
}

// Transfers are 1 MiB each way, sent in 32 KiB pieces 40 ms apart: about
// 1.3 s each, so several are in flight at any moment.
const (
	xferSize  = 1 << 20
	xferChunk = 32 << 10
	xferPace  = 40 * time.Millisecond
)

func startLoad(addr string, connectors, transfers int) *load {
	return startLoadDial(addr, func() (net.Conn, error) { return net.DialTimeout("tcp", addr, 3*time.Second) }, connectors, transfers)
}

// startLoadDial is startLoad over connections dial makes (TLS, say).
func startLoadDial(addr string, dial func() (net.Conn, error), connectors, transfers int) *load {
	l := &load{addr: addr, dial: dial, stop: make(chan struct{})}
	end := time.Now().Add(90 * time.Second)
	loop := func(one func()) {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for time.Now().Before(end) {
				select {
				case <-l.stop:
					return
				default:
				}
				one()
			}
		}()
	}
	for range connectors {
		loop(func() {
			if err := l.connectOnce(); err != nil {
				l.connFails.Add(1)
				l.problem("connect: " + err.Error())
			} else {
				l.conns.Add(1)
			}
			time.Sleep(5 * time.Millisecond)
		})
	}
	for range transfers {
		loop(func() {
			start := time.Now()
			l.begun.Add(1)
			if err := l.transferOnce(); err != nil {
				l.broken.Add(1)
				l.problem("transfer: " + err.Error())
				return
			}
			l.xfers.Add(1)
			l.mu.Lock()
			l.spans = append(l.spans, [2]time.Time{start, time.Now()})
			l.mu.Unlock()
		})
	}
	return l
}

// underway waits until the load runs: connections answered and transfers
// in flight, for an operation to fall in the middle of them.
func (l *load) underway(t *testing.T) {
	t.Helper()
	c, x := l.conns.Load(), l.begun.Load()
	waitUntil(t, "load under way on "+l.addr, func() bool { return l.conns.Load() >= c+10 || l.begun.Load() >= x+2 })
}

// carried waits until n more transfers completed: the operation before it
// has carried traffic since, end to end.
func (l *load) carried(t *testing.T, n int64) {
	t.Helper()
	x := l.xfers.Load()
	waitUntil(t, fmt.Sprintf("%d more transfers on %s", n, l.addr), func() bool { return l.xfers.Load() >= x+n })
}

func (l *load) problem(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.problems) < 10 {
		l.problems = append(l.problems, time.Now().Format("15:04:05.000")+" "+s)
	}
}

func (l *load) connectOnce() error {
	c, err := l.dial()
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, 21)); err != nil {
		return fmt.Errorf("reading the target's name: %w", err)
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "ping" {
		return fmt.Errorf("echo: %q, %v", b, err)
	}
	return nil
}

// transferOnce sends xferSize random bytes, paced, and checks that the
// echo's SHA-256 matches what was sent.
func (l *load) transferOnce() error {
	c, err := l.dial()
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, 21)); err != nil {
		return fmt.Errorf("reading the target's name: %w", err)
	}
	sent := sha256.New()
	werr := make(chan error, 1)
	go func() {
		buf := make([]byte, xferChunk)
		for n := 0; n < xferSize; n += xferChunk {
			rand.Read(buf)
			sent.Write(buf)
			if _, err := c.Write(buf); err != nil {
				werr <- err
				return
			}
			time.Sleep(xferPace)
		}
		werr <- nil
	}()
	got := sha256.New()
	_, rerr := io.CopyN(got, c, xferSize)
	if err := <-werr; err != nil {
		return fmt.Errorf("sending: %w", err)
	}
	if rerr != nil {
		return fmt.Errorf("receiving: %w", rerr)
	}
	if !bytes.Equal(sent.Sum(nil), got.Sum(nil)) {
		return fmt.Errorf("checksum mismatch")
	}
	return nil
}

// finish stops starting new connections and waits for those under way.
func (l *load) finish() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// spanning counts the finished transfers that were in flight at t.
func (l *load) spanning(t time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.spans {
		if s[0].Before(t) && s[1].After(t) {
			n++
		}
	}
	return n
}

// check fails t unless every connection and transfer succeeded.
func (l *load) check(t *testing.T, what string) {
	t.Helper()
	l.finish()
	t.Logf("%s: %d connections (%d failed), %d transfers of %d KiB (%d broken)", what, l.conns.Load(), l.connFails.Load(), l.xfers.Load(), xferSize>>10, l.broken.Load())
	if l.connFails.Load() != 0 || l.broken.Load() != 0 {
		t.Fatalf("%s: %d failed connections, %d broken transfers: %v", what, l.connFails.Load(), l.broken.Load(), l.problems)
	}
}

// lifecycleYAML is a config: TCP listeners (name → port) on 127.0.0.1 before
// the TCP group web, and extra.
func lifecycleYAML(adminPort string, listeners map[string]string, targets []*idTarget, extra string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "admin: {listen: \"127.0.0.1:%s\"}\nlisteners:\n", adminPort)
	for _, name := range sortedKeys(listeners) {
		fmt.Fprintf(&b, "  - {name: %s, port: %s, bind: [127.0.0.1], target_group: web}\n", name, listeners[name])
	}
	b.WriteString("target_groups:\n  - name: web\n    targets:\n")
	for _, it := range targets {
		fmt.Fprintf(&b, "      - {address: %q}\n", it.addr)
	}
	b.WriteString("    attributes: {deregistration_delay.timeout_seconds: \"2\"}\n")
	b.WriteString("    health_check: {interval: 200ms, timeout: 150ms, healthy_threshold: 2, unhealthy_threshold: 2}\n")
	b.WriteString(extra)
	return b.String()
}

func sortedKeys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	for i := range ks {
		for j := i + 1; j < len(ks); j++ {
			if ks[j] < ks[i] {
				ks[i], ks[j] = ks[j], ks[i]
			}
		}
	}
	return ks
}

// states maps each target of group web to its state.
func states(t *testing.T, admin string) map[string]string {
	t.Helper()
	return groupStates(t, admin, "web")
}

func groupStates(t *testing.T, admin, group string) map[string]string {
	t.Helper()
	resp, err := http.Get(admin + "/v1/target-groups/" + group + "/targets")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ths []api.TargetHealth
	if err := json.NewDecoder(resp.Body).Decode(&ths); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, th := range ths {
		out[th.Address] = th.State
	}
	return out
}

// dialName connects to addr and returns the target's name.
func dialName(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 21)
	if _, err := io.ReadFull(c, b); err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// A reload under load adds a listener, removes another, adds a target and
// removes one: no connection fails and no transfer breaks, the removed
// listener's transfers finish, the removed target drains for its delay and
// goes, the new listener and target serve. A bad file is then refused with
// its field paths, by the CLI (exit 2) and the API (400), and the running
// config serves on. Last, systemctl reload's command reloads.
func TestReloadUnderLoad(t *testing.T) {
	t1, t2, t3 := startIDTarget(t), startIDTarget(t), startIDTarget(t)
	pWeb, pOld, pNew, pAdmin := freePort(t), freePort(t), freePort(t), freePort(t)
	bin := filepath.Join(t.TempDir(), "l4lb")
	buildL4LB(t, bin, "reload-test")
	d := startDaemon(t, bin, pAdmin, lifecycleYAML(pAdmin, map[string]string{"web": pWeb, "old": pOld}, []*idTarget{t1, t2}, ""))
	waitUntil(t, "both targets healthy", func() bool {
		s := states(t, d.admin)
		return s[t1.addr] == api.StateHealthy && s[t2.addr] == api.StateHealthy
	})
	before := d.running()

	web := startLoad("127.0.0.1:"+pWeb, 2, 3)
	old := startLoad("127.0.0.1:"+pOld, 0, 2)
	web.underway(t)
	old.underway(t)
	close(old.stop) // no new transfers to the listener that goes; those under way go on
	d.write(lifecycleYAML(pAdmin, map[string]string{"web": pWeb, "new": pNew}, []*idTarget{t2, t3}, ""))
	// Taken before the call: the drain's delay starts within it, so the
	// time from here bounds the delay from below.
	reloaded := time.Now()
	code, out, errs := runCLI("reload", "--admin", d.admin)
	if code != 0 {
		t.Fatalf("l4lb reload: exit %d: %s", code, errs)
	}
	t.Logf("l4lb reload: %s", strings.TrimSpace(out))

	if name, err := dialName("127.0.0.1:" + pNew); err != nil {
		t.Fatalf("the added listener: %v", err)
	} else if name != t2.addr {
		t.Fatalf("the added listener reached %s; only %s is healthy yet", name, t2.addr)
	}
	if c, err := net.DialTimeout("tcp", "127.0.0.1:"+pOld, time.Second); err == nil {
		c.Close()
		t.Fatal("the removed listener still accepts")
	}
	if s := states(t, d.admin); s[t1.addr] != api.StateDraining {
		t.Fatalf("the removed target is %q, want draining", s[t1.addr])
	}
	waitUntil(t, "the removed target gone after its delay", func() bool { _, ok := states(t, d.admin)[t1.addr]; return !ok })
	if drained := time.Since(reloaded); drained < 2*time.Second {
		t.Fatalf("the removed target went after %v, before its 2 s delay", drained)
	} else {
		t.Logf("the removed target drained for %v (delay 2 s)", drained.Round(10*time.Millisecond))
	}
	hits := t1.hits.Load()
	waitUntil(t, "the added target healthy and serving", func() bool {
		return states(t, d.admin)[t3.addr] == api.StateHealthy && t3.hits.Load() > 0
	})
	// New connections keep coming; none of them may reach the removed one.
	h3 := t3.hits.Load()
	waitUntil(t, "20 more connections on the added target", func() bool { return t3.hits.Load() >= h3+20 })
	if t1.hits.Load() != hits {
		t.Fatal("the removed target got new connections after it was deregistered")
	}
	old.check(t, "removed listener")
	web.check(t, "kept listener")
	if old.xfers.Load() == 0 || old.spanning(reloaded)+web.spanning(reloaded) == 0 {
		t.Fatal("no transfer was in flight across the reload")
	}
	t.Logf("%d transfers were in flight across the reload", old.spanning(reloaded)+web.spanning(reloaded))
	after := d.running()
	if after.SHA256 == before.SHA256 || !after.LoadedAt.After(before.LoadedAt) {
		t.Fatalf("/v1/config did not change: %+v → %+v", before, after)
	}
	if n := metricSum(t, d.admin, "l4lb_config_reloads_total", `result="success"`); n != 1 {
		t.Fatalf("l4lb_config_reloads_total{result=success} = %v, want 1", n)
	}

	// A bad file: nothing changes.
	web = startLoad("127.0.0.1:"+pNew, 1, 1)
	bad := &idTarget{addr: "not-an-address"}
	d.write(strings.Replace(lifecycleYAML(pAdmin, map[string]string{"web": pWeb, "new": pNew}, []*idTarget{t2, t3, bad}, ""), "port: "+pNew, "port: 70000", 1))
	code, _, errs = runCLI("reload", "--admin", d.admin)
	if code != 2 || !strings.Contains(errs, "listeners[0].port: 70000 is outside 1-65535") || !strings.Contains(errs, "target_groups[0].targets[2].address") {
		t.Fatalf("l4lb reload of a bad file: exit %d, stderr:\n%s", code, errs)
	}
	t.Logf("l4lb reload of a bad file (exit 2):\n%s", errs)
	resp, err := http.Post(d.admin+"/v1/reload", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	var e api.Error
	json.NewDecoder(resp.Body).Decode(&e)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || len(e.Errors) != 2 || !strings.Contains(strings.Join(e.Errors, "\n"), "listeners[0].port: ") {
		t.Fatalf("POST /v1/reload of a bad file: %d %+v", resp.StatusCode, e)
	}
	if now := d.running(); now.SHA256 != after.SHA256 {
		t.Fatal("a refused reload changed the running config")
	}
	if name, err := dialName("127.0.0.1:" + pNew); err != nil || (name != t2.addr && name != t3.addr) {
		t.Fatalf("the running config after a refused reload: %q %v", name, err)
	}
	if n := metricSum(t, d.admin, "l4lb_config_reloads_total", `result="refused"`); n != 2 {
		t.Fatalf("l4lb_config_reloads_total{result=refused} = %v, want 2", n)
	}
	web.check(t, "during the refused reloads")

	// systemctl reload runs the unit's ExecReload: kill -HUP $MAINPID.
	d.write(lifecycleYAML(pAdmin, map[string]string{"web": pWeb, "new": pNew}, []*idTarget{t1, t2, t3}, ""))
	hup := exec.Command("/bin/sh", "-c", "kill -HUP $MAINPID")
	hup.Env = append(os.Environ(), "MAINPID="+strconv.Itoa(d.cmd.Process.Pid))
	if out, err := hup.CombinedOutput(); err != nil {
		t.Fatalf("kill -HUP $MAINPID: %v %s", err, out)
	}
	waitUntil(t, "SIGHUP to reload", func() bool { return d.running().SHA256 != after.SHA256 })
	if _, ok := states(t, d.admin)[t1.addr]; !ok {
		t.Fatal("the target SIGHUP's config adds is not registered")
	}
	if n := metricSum(t, d.admin, "l4lb_config_reloads_total", `result="success"`); n != 2 {
		t.Fatalf("l4lb_config_reloads_total{result=success} = %v after SIGHUP, want 2", n)
	}
}

// udpNamer is a UDP target that answers each datagram with its own address.
func udpNamer(t *testing.T, at string) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", at)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	name := []byte(pc.LocalAddr().String())
	go func() {
		b := make([]byte, 2048)
		for {
			_, from, err := pc.ReadFrom(b)
			if err != nil {
				return
			}
			pc.WriteTo(name, from)
		}
	}()
	return pc.LocalAddr().String()
}

// udpFlows are client sockets, each one flow through l4lb.
type udpFlows []*net.UDPConn

func openUDPFlows(t *testing.T, n int, from func(i int) *net.UDPAddr, to string) udpFlows {
	t.Helper()
	raddr, err := net.ResolveUDPAddr("udp", to)
	if err != nil {
		t.Fatal(err)
	}
	fs := make(udpFlows, n)
	for i := range fs {
		if fs[i], err = net.DialUDP("udp", from(i), raddr); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { fs[i].Close() })
	}
	return fs
}

// targets asks through each flow which target serves it (retrying a lost
// datagram a few times).
func (fs udpFlows) targets(t *testing.T) []string {
	t.Helper()
	out := make([]string, len(fs))
	b := make([]byte, 64)
	for i, c := range fs {
		for try := 0; ; try++ {
			c.Write([]byte("who"))
			c.SetReadDeadline(time.Now().Add(time.Second))
			n, err := c.Read(b)
			if err == nil {
				out[i] = string(b[:n])
				break
			}
			if try == 4 {
				t.Fatalf("flow %d (%s): no answer: %v", i, c.LocalAddr(), err)
			}
		}
	}
	return out
}

// Upgrade under load to a freshly built binary: no connection is refused or
// reset, every transfer in flight completes with its checksum, the new
// process (the new version) serves and the old one exits; /readyz answers
// 200 throughout; UDP flows on the socket path keep their targets. Then a
// binary that exits at start, and a config the new binary refuses: the
// serving process serves on. Last, SIGUSR2 upgrades too.
func TestUpgradeUnderLoad(t *testing.T) {
	t1, t2 := startIDTarget(t), startIDTarget(t)
	u1, u2 := udpNamer(t, "127.0.0.1:0"), udpNamer(t, "127.0.0.1:0")
	pWeb, pDNS, pAdmin := freePort(t), freePort(t), freePort(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "l4lb")
	buildL4LB(t, bin, "upgrade-test-1")
	udp := fmt.Sprintf(`  - {name: dns, protocol: UDP, port: %s, bind: [127.0.0.1], target_group: dns}
  - name: dns
    protocol: UDP
    targets: [{address: %q}, {address: %q}]
    health_check: {protocol: TCP, port: %s, interval: 200ms, timeout: 150ms, healthy_threshold: 2}
`, pDNS, u1, u2, strings.Split(t1.addr, ":")[1])
	// The UDP listener and group go into their lists.
	yaml := func(targets ...*idTarget) string {
		y := lifecycleYAML(pAdmin, map[string]string{"web": pWeb}, targets, "")
		lines := strings.Split(udp, "\n")
		y = strings.Replace(y, "target_groups:\n", lines[0]+"\ntarget_groups:\n", 1)
		return y + strings.Join(lines[1:], "\n")
	}
	d := startDaemon(t, bin, pAdmin, yaml(t1, t2))
	waitUntil(t, "targets healthy", func() bool {
		s, u := states(t, d.admin), groupStates(t, d.admin, "dns")
		return s[t1.addr] == api.StateHealthy && s[t2.addr] == api.StateHealthy && u[u1] == api.StateHealthy && u[u2] == api.StateHealthy
	})
	flows := openUDPFlows(t, 40, func(int) *net.UDPAddr { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)} }, "127.0.0.1:"+pDNS)
	chosen := flows.targets(t)
	if all := strings.Join(chosen, " "); !strings.Contains(all, u1) || !strings.Contains(all, u2) {
		t.Fatalf("40 UDP flows did not use both targets: %v", chosen)
	}

	// /readyz, polled throughout: never anything but 200.
	var notReady atomic.Int64
	var polls atomic.Int64
	pollStop := make(chan struct{})
	pollDone := make(chan struct{})
	go func() {
		defer close(pollDone)
		for end := time.Now().Add(90 * time.Second); time.Now().Before(end); {
			select {
			case <-pollStop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			if code, err := d.readyzErr(); code != http.StatusOK {
				notReady.Add(1)
				t.Logf("%s /readyz: %d %v", time.Now().Format("15:04:05.000"), code, err)
			}
			polls.Add(1)
		}
	}()

	ld := startLoad("127.0.0.1:"+pWeb, 2, 4)
	ld.underway(t)
	buildL4LB(t, bin+".new", "upgrade-test-2")
	if err := os.Rename(bin+".new", bin); err != nil {
		t.Fatal(err)
	}
	oldPID := d.cmd.Process.Pid
	u := d.upgrade()
	upgraded := time.Now()
	if u.OldPID != oldPID || u.NewPID == oldPID || u.NewPID == 0 {
		t.Fatalf("upgrade answered %+v; the old PID is %d", u, oldPID)
	}
	if c := d.running(); c.PID != u.NewPID || c.Version != "upgrade-test-2" {
		t.Fatalf("/v1/config after the upgrade: %+v, want PID %d running upgrade-test-2", c, u.NewPID)
	}
	select {
	case err := <-d.exited:
		if err != nil {
			t.Fatalf("the old process: %v", err)
		}
		t.Logf("the old process drained and exited %v after the handover", time.Since(upgraded).Round(10*time.Millisecond))
	case <-time.After(30 * time.Second):
		t.Fatal("the old process did not exit within its 30 s shutdown timeout")
	}
	ld.check(t, "across the upgrade")
	if n := ld.spanning(upgraded); n == 0 {
		t.Fatal("no transfer was in flight across the upgrade")
	} else {
		t.Logf("%d transfers were in flight across the upgrade", n)
	}
	if after := flows.targets(t); strings.Join(after, " ") != strings.Join(chosen, " ") {
		t.Fatalf("UDP flows changed targets across the upgrade:\nbefore %v\nafter  %v", chosen, after)
	}
	if _, err := dialName("127.0.0.1:" + pWeb); err != nil {
		t.Fatalf("the new process: %v", err)
	}

	// A binary that exits at start: the serving process serves on.
	os.WriteFile(bin+".new", []byte("#!/bin/sh\necho 'l4lb: broken build' >&2\nexit 1\n"), 0o755)
	good := bin + ".good"
	os.Rename(bin, good)
	os.Rename(bin+".new", bin)
	ld = startLoad("127.0.0.1:"+pWeb, 2, 2)
	code, _, errs := runCLI("upgrade", "--admin", d.admin)
	if code == 0 || !strings.Contains(errs, "exited before it was ready") {
		t.Fatalf("upgrade to a binary that exits: exit %d: %s", code, errs)
	}
	t.Logf("upgrade to a binary that exits at start: %s", strings.TrimSpace(errs))
	// A config the new binary refuses: the same.
	os.Rename(good, bin)
	d.write(yaml(t1, t2) + "bogus_section: {}\n")
	code, _, errs = runCLI("upgrade", "--admin", d.admin)
	if code == 0 || !strings.Contains(errs, "exited before it was ready") {
		t.Fatalf("upgrade with a bad config: exit %d: %s", code, errs)
	}
	ld.check(t, "during the failed upgrades")
	if c := d.running(); c.PID != u.NewPID {
		t.Fatalf("after failed upgrades PID %d serves, want %d", c.PID, u.NewPID)
	}
	if n := metricSum(t, d.admin, "l4lb_upgrades_total", `result="failed"`); n != 2 {
		t.Fatalf("l4lb_upgrades_total{result=failed} = %v, want 2", n)
	}

	// SIGUSR2.
	d.write(yaml(t1, t2))
	syscall.Kill(u.NewPID, syscall.SIGUSR2)
	waitUntil(t, "SIGUSR2 to upgrade", func() bool { return d.running().PID != u.NewPID })
	waitGone(t, u.NewPID, 30*time.Second)
	close(pollStop)
	<-pollDone
	if notReady.Load() != 0 {
		t.Fatalf("/readyz was not 200 %d times of %d", notReady.Load(), polls.Load())
	}
	t.Logf("/readyz: 200 on all %d polls", polls.Load())
}

// kernelTarget is a UDP namer at ip:9053 with a TCP port of the same
// number for its health check.
func kernelTarget(t *testing.T, ip string) string {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":9053")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return udpNamer(t, ip+":9053")
}

// A UDP listener on the kernel fast path through an upgrade whose config
// adds a target: the flows pinned before keep their targets, though the new
// Maglev table moves some of their hashes, because the new process loaded
// its programs on the old one's flow maps; new flows use the new table;
// and the new process's sockets read no datagram at all.
func TestUpgradeKeepsKernelUDPFlows(t *testing.T) {
	needRoot(t, "the UDP fast path")
	// 127.50/16 is this test's own: other tests' kernel programs on lo use
	// other addresses.
	a, b, c := kernelTarget(t, "127.50.0.2"), kernelTarget(t, "127.50.0.3"), kernelTarget(t, "127.50.0.4")
	pDNS, pAdmin := freePort(t), freePort(t)
	vip := "127.50.0.1:" + pDNS
	yaml := func(targets ...string) string {
		var ts []string
		for _, t := range targets {
			ts = append(ts, fmt.Sprintf("{address: %q}", t))
		}
		return fmt.Sprintf(`admin: {listen: "127.0.0.1:%s"}
load_balancer: {udp_fast_path: true, udp_fast_path_interfaces: [lo]}
listeners:
  - {name: dns, protocol: UDP, port: %s, bind: [127.50.0.1], target_group: dns, udp_idle_timeout: 60s}
target_groups:
  - name: dns
    protocol: UDP
    targets: [%s]
    attributes: {preserve_client_ip.enabled: "true"}
    health_check: {protocol: TCP, port: 9053, interval: 200ms, timeout: 150ms, healthy_threshold: 2}
`, pAdmin, pDNS, strings.Join(ts, ", "))
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "l4lb")
	buildL4LB(t, bin, "kernel-upgrade-test")
	d := startDaemon(t, bin, pAdmin, yaml(a, b))
	waitUntil(t, "targets healthy", func() bool {
		s := groupStates(t, d.admin, "dns")
		return s[a] == api.StateHealthy && s[b] == api.StateHealthy
	})
	if log, _ := os.ReadFile(d.log); !strings.Contains(string(log), "UDP listener forwarded in the kernel") {
		t.Fatalf("the listener is not on the kernel path:\n%s", log)
	}
	flows := openUDPFlows(t, 200, func(i int) *net.UDPAddr {
		return &net.UDPAddr{IP: net.IPv4(127, 51, byte(i>>8), byte(i)), Port: 40000}
	}, vip)
	before := flows.targets(t)

	d.write(yaml(a, b, c))
	u := d.upgrade()
	// The old process detaches its programs at once, not when its drain
	// ends: until then they would serve new flows first, with tables it no
	// longer keeps.
	if log, _ := os.ReadFile(d.log); !strings.Contains(string(log), "UDP kernel path handed to the new process") {
		t.Errorf("the old process kept its programs attached after the upgrade")
	}
	waitGone(t, u.OldPID, 30*time.Second) // its maps closed
	if log, _ := os.ReadFile(d.log); !strings.Contains(string(log), "UDP fast path: kept the previous process's flows") {
		t.Fatal("the new process did not take the flow maps over")
	}
	waitUntil(t, "the added target healthy", func() bool { return groupStates(t, d.admin, "dns")[c] == api.StateHealthy })
	// The kernel's table follows within a sync: new flows reach the added
	// target once it has (each try uses fresh client addresses).
	round := 0
	waitUntil(t, "a new flow on the added target", func() bool {
		round++
		fresh := openUDPFlows(t, 50, func(i int) *net.UDPAddr {
			return &net.UDPAddr{IP: net.IPv4(127, 52, byte(round), byte(i+1)), Port: 40000}
		}, vip)
		return strings.Contains(strings.Join(fresh.targets(t), " "), c)
	})
	after := flows.targets(t)
	for i := range before {
		if before[i] != after[i] {
			t.Fatalf("flow %d moved from %s to %s across the upgrade", i, before[i], after[i])
		}
	}
	if n := metricSum(t, d.admin, "l4lb_udp_socket_datagrams_total"); n != 0 {
		t.Fatalf("the new process's sockets read %v datagrams; the kernel should have forwarded all", n)
	}
	t.Logf("%d flows kept their targets across the upgrade, while the new table sent new flows to the added target too; no datagram reached user space", len(before))
}

// Twenty reloads in one process, then twenty upgrades each followed by a
// reload, all under load: no connection fails, no transfer breaks, and the
// serving process's descriptors, goroutines and resident memory do not grow
// from one round to the next (each round's figures are logged).
func TestReloadAndUpgradeRepeatedly(t *testing.T) {
	if testing.Short() {
		t.Skip("40 lifecycle rounds")
	}
	t1, t2, t3 := startIDTarget(t), startIDTarget(t), startIDTarget(t)
	pWeb, pAdmin := freePort(t), freePort(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "l4lb")
	buildL4LB(t, bin, "rounds")
	sets := [][]*idTarget{{t1, t2}, {t2, t3}}
	cfg := func(i int) string {
		return lifecycleYAML(pAdmin, map[string]string{"web": pWeb}, sets[i%2], "")
	}
	d := startDaemon(t, bin, pAdmin, cfg(0))
	waitUntil(t, "targets healthy", func() bool {
		s := states(t, d.admin)
		return s[t1.addr] == api.StateHealthy && s[t2.addr] == api.StateHealthy
	})
	ld := startLoad("127.0.0.1:"+pWeb, 2, 3)
	reload := func(i int) {
		d.write(cfg(i))
		if code, _, errs := runCLI("reload", "--admin", d.admin); code != 0 {
			t.Fatalf("round %d: l4lb reload: exit %d: %s", i, code, errs)
		}
	}
	var seen []usage
	measure := func(what string, i, pid int) {
		time.Sleep(300 * time.Millisecond) // past the round's own churn
		u := d.usage(pid)
		seen = append(seen, u)
		t.Logf("%s %2d: pid %d: %3d descriptors, %3d goroutines, %6d KiB resident", what, i, pid, u.fds, u.goroutines, u.rssKiB)
	}
	pid := d.cmd.Process.Pid
	for i := 1; i <= 20; i++ {
		reload(i)
		measure("reload ", i, pid)
	}
	grown(t, "20 reloads in one process", seen)
	seen = nil
	for i := 1; i <= 20; i++ {
		u := d.upgrade()
		pid = u.NewPID
		reload(i)
		measure("upgrade", i, pid)
	}
	grown(t, "20 upgrades", seen)
	ld.check(t, "40 rounds")
}

// grown fails t if the last five rounds' medians exceed the first five's by
// more than the load's own churn: a few flows open or closing (two
// descriptors and two goroutines each), and the heap's settling.
func grown(t *testing.T, what string, rounds []usage) {
	t.Helper()
	median := func(us []usage, f func(usage) int) int {
		v := make([]int, len(us))
		for i, u := range us {
			v[i] = f(u)
		}
		for i := range v {
			for j := i + 1; j < len(v); j++ {
				if v[j] < v[i] {
					v[i], v[j] = v[j], v[i]
				}
			}
		}
		return v[len(v)/2]
	}
	first, last := rounds[:5], rounds[len(rounds)-5:]
	for _, m := range []struct {
		name  string
		f     func(usage) int
		slack int
	}{
		{"descriptors", func(u usage) int { return u.fds }, 16},
		{"goroutines", func(u usage) int { return u.goroutines }, 16},
		{"resident KiB", func(u usage) int { return u.rssKiB }, 16 << 10},
	} {
		a, b := median(first, m.f), median(last, m.f)
		if b > a+m.slack {
			t.Errorf("%s: %s grew from %d to %d (median of the first and last five rounds)", what, m.name, a, b)
		}
	}
}

// Under systemd (Type=notify, NotifyAccess=all), l4lb says READY=1 with its
// PID at start; in an upgrade the new process says READY=1 with its own PID,
// and the old one names the new PID as MAINPID before it drains, so systemd
// follows the service to the new process. systemd's notify socket is
// played here by a datagram socket.
func TestUpgradeTellsSystemd(t *testing.T) {
	it := startIDTarget(t)
	pWeb, pAdmin := freePort(t), freePort(t)
	sock := filepath.Join(t.TempDir(), "notify")
	pc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	bin := filepath.Join(t.TempDir(), "l4lb")
	buildL4LB(t, bin, "notify-test")
	d := startDaemon(t, bin, pAdmin, lifecycleYAML(pAdmin, map[string]string{"web": pWeb}, []*idTarget{it}, ""), "NOTIFY_SOCKET="+sock)
	next := func() string {
		pc.SetReadDeadline(time.Now().Add(10 * time.Second))
		b := make([]byte, 512)
		n, err := pc.Read(b)
		if err != nil {
			t.Fatalf("no notification: %v", err)
		}
		return string(b[:n])
	}
	first := d.cmd.Process.Pid
	if got, want := next(), fmt.Sprintf("READY=1\nMAINPID=%d", first); got != want {
		t.Fatalf("at start: %q, want %q", got, want)
	}
	u := d.upgrade()
	got := []string{next(), next()}
	want := []string{fmt.Sprintf("READY=1\nMAINPID=%d", u.NewPID), fmt.Sprintf("MAINPID=%d", u.NewPID)}
	if got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("upgrade: notifications %q, want %q (the new process, then the old one)", got, want)
	}
}

// A TLS client's session resumes on the process an upgrade started: the
// session-ticket keys cross over with the sockets.
func TestUpgradeKeepsTLSSessions(t *testing.T) {
	it := startIDTarget(t)
	ca := testpki.New(t)
	cert, key := ca.Issue(t, false, "api.test")
	pTLS, pAdmin := freePort(t), freePort(t)
	yaml := fmt.Sprintf(`admin: {listen: "127.0.0.1:%s"}
listeners:
  - {name: tls, protocol: TLS, port: %s, bind: [127.0.0.1], target_group: web, tls: {certificates: [{cert: %q, key: %q}]}}
target_groups:
  - name: web
    targets: [{address: %q}]
`, pAdmin, pTLS, cert, key, it.addr)
	bin := filepath.Join(t.TempDir(), "l4lb")
	buildL4LB(t, bin, "tls-upgrade-test")
	d := startDaemon(t, bin, pAdmin, yaml)
	conf := &tls.Config{ServerName: "api.test", RootCAs: ca.Pool, ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	hello := func() bool {
		t.Helper()
		c, err := tls.Dial("tcp", "127.0.0.1:"+pTLS, conf)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, make([]byte, 21)); err != nil { // the target's name; TLS 1.3 tickets arrive with it
			t.Fatal(err)
		}
		return c.ConnectionState().DidResume
	}
	if hello() || !hello() {
		t.Fatal("the session did not resume on the same process")
	}
	u := d.upgrade()
	waitGone(t, u.OldPID, 30*time.Second)
	if !hello() {
		t.Fatal("the session did not resume on the process the upgrade started")
	}
}

// Plain TCP flows run on the event loops and terminated TLS flows on
// goroutines: under checksummed load on both, a reload and an upgrade fail
// no connection and break no transfer of either.
func TestEventLoopAndTLSFlowsSurviveReloadAndUpgrade(t *testing.T) {
	t1, t2 := startIDTarget(t), startIDTarget(t)
	ca := testpki.New(t)
	cert, key := ca.Issue(t, false, "api.test")
	pWeb, pTLS, pAdmin := freePort(t), freePort(t), freePort(t)
	yaml := func(weight int) string {
		return fmt.Sprintf(`admin: {listen: "127.0.0.1:%s"}
listeners:
  - {name: web, port: %s, bind: [127.0.0.1], target_group: web}
  - {name: tls, protocol: TLS, port: %s, bind: [127.0.0.1], target_group: web, tls: {certificates: [{cert: %q, key: %q}]}}
target_groups:
  - name: web
    targets: [{address: %q}, {address: %q, weight: %d}]
    attributes: {deregistration_delay.timeout_seconds: "2"}
    health_check: {interval: 200ms, timeout: 150ms, healthy_threshold: 2, unhealthy_threshold: 2}
`, pAdmin, pWeb, pTLS, cert, key, t1.addr, t2.addr, weight)
	}
	bin := filepath.Join(t.TempDir(), "l4lb")
	buildL4LB(t, bin, "evloop-test-1")
	d := startDaemon(t, bin, pAdmin, yaml(1))
	waitUntil(t, "both targets healthy", func() bool {
		s := states(t, d.admin)
		return s[t1.addr] == api.StateHealthy && s[t2.addr] == api.StateHealthy
	})
	conf := &tls.Config{ServerName: "api.test", RootCAs: ca.Pool}
	tlsDial := func() (net.Conn, error) {
		return tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", "127.0.0.1:"+pTLS, conf)
	}
	plain := startLoad("127.0.0.1:"+pWeb, 2, 3)
	terminated := startLoadDial("127.0.0.1:"+pTLS, tlsDial, 2, 3)
	plain.underway(t)
	terminated.underway(t)

	d.write(yaml(3))
	if code, _, errs := runCLI("reload", "--admin", d.admin); code != 0 {
		t.Fatalf("l4lb reload: exit %d: %s", code, errs)
	}
	reloaded := time.Now()
	plain.carried(t, 2)
	terminated.carried(t, 2)
	buildL4LB(t, bin+".new", "evloop-test-2")
	if err := os.Rename(bin+".new", bin); err != nil {
		t.Fatal(err)
	}
	u := d.upgrade()
	upgraded := time.Now()
	waitGone(t, u.OldPID, 30*time.Second)
	plain.carried(t, 2) // the new process carries both kinds for a while
	terminated.carried(t, 2)
	plain.check(t, "plain TCP (event loop) across a reload and an upgrade")
	terminated.check(t, "TLS (goroutines) across a reload and an upgrade")
	for _, l := range []*load{plain, terminated} {
		if l.spanning(reloaded) == 0 || l.spanning(upgraded) == 0 {
			t.Fatalf("%s: no transfer was in flight across the reload (%d) or the upgrade (%d)", l.addr, l.spanning(reloaded), l.spanning(upgraded))
		}
		if l.xfers.Load() == 0 || l.conns.Load() == 0 {
			t.Fatalf("%s: no load went through", l.addr)
		}
	}
}

// needRoot skips t on a machine without root, and fails it on CI, which
// has root: a skipped check there would hide a regression.
func needRoot(t *testing.T, what string) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal(what + " needs root, which CI has")
		}
		t.Skip(what + " needs root")
	}
}

// echo sends msg on c and checks that it comes back, within 5 s.
func echo(c net.Conn, msg string) error {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != msg {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

// tcpEchoAt runs a TCP echo target at addr for the test.
func tcpEchoAt(t *testing.T, addr string) string {
	t.Helper()
	tg, err := bench.StartTarget(bench.TargetEcho, "tcp", addr, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tg.Close() })
	return addr
}

// A TCP listener on the kernel fast path through an upgrade that adds a
// target: connections opened before keep working on the same TCP
// connection, which only their first target could answer (any other would
// reset it), because the new process loaded its programs on the old one's
// flow maps; new connections work too, and none goes through user space.
func TestUpgradeKeepsKernelTCPFlows(t *testing.T) {
	needRoot(t, "the TCP fast path")
	// 127.53/16 is this test's own.
	a, b, c := tcpEchoAt(t, "127.53.0.2:9080"), tcpEchoAt(t, "127.53.0.3:9080"), tcpEchoAt(t, "127.53.0.4:9080")
	pWeb, pAdmin := freePort(t), freePort(t)
	vip := "127.53.0.1:" + pWeb
	yaml := func(targets ...string) string {
		var ts []string
		for _, t := range targets {
			ts = append(ts, fmt.Sprintf("{address: %q}", t))
		}
		return fmt.Sprintf(`admin: {listen: "127.0.0.1:%s"}
load_balancer: {tcp_fast_path: true, tcp_fast_path_interfaces: [lo]}
listeners:
  - {name: web, protocol: TCP, port: %s, bind: [127.53.0.1], target_group: web}
target_groups:
  - name: web
    protocol: TCP
    targets: [%s]
    attributes: {preserve_client_ip.enabled: "true"}
    health_check: {protocol: TCP, interval: 200ms, timeout: 150ms, healthy_threshold: 2}
`, pAdmin, pWeb, strings.Join(ts, ", "))
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "l4lb")
	buildL4LB(t, bin, "tcp-kernel-upgrade-test")
	d := startDaemon(t, bin, pAdmin, yaml(a, b))
	waitUntil(t, "targets healthy", func() bool {
		s := groupStates(t, d.admin, "web")
		return s[a] == api.StateHealthy && s[b] == api.StateHealthy
	})
	if log, _ := os.ReadFile(d.log); !strings.Contains(string(log), "TCP listener forwarded in the kernel") {
		t.Fatalf("the listener is not on the kernel path:\n%s", log)
	}
	var conns []net.Conn
	for i := range 50 {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 54, 0, byte(i+1))}, Timeout: 3 * time.Second}
		c, err := d.Dial("tcp", vip)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := echo(c, "before"); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	d.write(yaml(a, b, c))
	u := d.upgrade()
	// The old process detaches its programs at once, not when its drain
	// ends: until then they would serve new flows first, with tables it no
	// longer keeps.
	if log, _ := os.ReadFile(d.log); !strings.Contains(string(log), "TCP kernel path handed to the new process") {
		t.Errorf("the old process kept its programs attached after the upgrade")
	}
	waitGone(t, u.OldPID, 30*time.Second) // its maps closed
	if log, _ := os.ReadFile(d.log); !strings.Contains(string(log), "TCP fast path: kept the previous process's flows") {
		t.Fatal("the new process did not take the flow maps over")
	}
	for i, c := range conns {
		if err := echo(c, fmt.Sprintf("after %d", i)); err != nil {
			t.Fatalf("connection %d broke across the upgrade: %v", i, err)
		}
	}
	waitUntil(t, "the added target healthy", func() bool { return groupStates(t, d.admin, "web")[c] == api.StateHealthy })
	for i := range 50 {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 55, 0, byte(i+1))}, Timeout: 3 * time.Second}
		c, err := d.Dial("tcp", vip)
		if err != nil {
			t.Fatalf("new connection %d after the upgrade: %v", i, err)
		}
		err = echo(c, "new")
		c.Close()
		if err != nil {
			t.Fatalf("new connection %d after the upgrade: %v", i, err)
		}
	}
	waitUntil(t, "the kernel's 50 new flows counted", func() bool { return metricSum(t, d.admin, "l4lb_new_flows_total") >= 50 })
	t.Logf("%d kernel TCP connections kept working across the upgrade", len(conns))
}

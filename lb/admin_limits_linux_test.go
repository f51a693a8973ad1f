package lb

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/l4lb/l4lb/pkg/admin"
	"github.com/l4lb/l4lb/pkg/config"
)

// adminAt serves the admin API of a real server, with its token and
// limits, on a loopback port.
func adminAt(t *testing.T, token string, l admin.Limits) string {
	t.Helper()
	e := startEcho(t)
	srv, err := New(testConfig([]config.Target{{Address: e.addr, Weight: 1}}, nil), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs, lln := admin.Server(admin.Handler(admin.Options{Registry: srv, Token: token, Ready: srv.Ready}), ln, l)
	go hs.Serve(lln)
	t.Cleanup(func() { hs.Close() })
	return ln.Addr().String()
}

// slowBody opens a connection that sends a registration's headers, with a
// large Content-Length, and then its body one byte at a time until stop.
func slowBody(t *testing.T, addr, auth string, every time.Duration, stop <-chan struct{}) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "POST /v1/target-groups/tg/targets HTTP/1.1\r\nHost: x\r\n%sContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n{", auth)
	go func() {
		tk := time.NewTicker(every)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				if _, err := c.Write([]byte(" ")); err != nil {
					return
				}
			}
		}
	}()
	return c
}

// probe asks path and returns its status and how long the answer took.
func probe(addr, path string) (int, time.Duration) {
	start := time.Now()
	c := http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return 0, time.Since(start)
	}
	resp.Body.Close()
	return resp.StatusCode, time.Since(start)
}

// Slow request bodies end at the request's read timeout, and while 130 of
// them (more than the API's 128 connections) and 200 silent connections
// are open, /readyz and /healthz answer at once from the probe-only
// reserve; other requests past the limit are refused with 503.
func TestAdminSlowBodiesAndSilentConns(t *testing.T) {
	addr := adminAt(t, "", admin.Limits{Read: 2 * time.Second})
	stop := make(chan struct{})
	defer close(stop)
	var slow []net.Conn
	for range 130 {
		slow = append(slow, slowBody(t, addr, "", 500*time.Millisecond, stop))
	}
	for range 200 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	// Accept takes connections in their order of arrival, so each probe
	// below is accepted after all of these.
	for i := range 10 {
		for _, path := range []string{"/readyz", "/healthz"} {
			if code, took := probe(addr, path); code != http.StatusOK || took > 2*time.Second {
				t.Fatalf("probe %d: %s answered %d after %v under slow bodies and silent connections", i, path, code, took)
			}
		}
	}
	if code, _ := probe(addr, "/v1/target-groups"); code != http.StatusServiceUnavailable && code != http.StatusOK {
		t.Fatalf("an API request past the limit: %d", code)
	}
	// The slow bodies end at the read timeout (2 s), not when the client
	// stops.
	start := time.Now()
	for _, c := range slow {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		io.Copy(io.Discard, c)
		c.Close()
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("slow bodies held their connections for %v; the read timeout is 2 s", d)
	}
}

// Without the token, a request is refused before its body is read, and its
// connection closed: a client cannot hold a connection by sending a 401's
// body slowly. A body over 64 KiB is refused on its Content-Length.
func TestAdminRefusesBeforeBody(t *testing.T) {
	addr := adminAt(t, "s3cret", admin.Limits{})
	stop := make(chan struct{})
	defer close(stop)
	for _, auth := range []string{"", "Authorization: Bearer wrong\r\n"} {
		c := slowBody(t, addr, auth, time.Hour, stop)
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%q: no answer before the body: %v", auth, err)
		}
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("%q: %d, want 401", auth, resp.StatusCode)
		}
		io.Copy(io.Discard, resp.Body)
		if _, err := br.ReadByte(); err != io.EOF && !strings.Contains(fmt.Sprint(err), "reset") {
			t.Fatalf("%q: the connection stayed open after the 401: %v", auth, err)
		}
		c.Close()
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /v1/target-groups/tg/targets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Length: 100000\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("a 100000-byte body: %v, %v", resp, err)
	}
}

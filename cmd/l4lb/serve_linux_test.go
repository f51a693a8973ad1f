package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb"
	"github.com/l4lb/l4lb/pkg/config"
)

// echoListener is a TCP target on loopback that echoes what it reads.
func echoListener(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
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
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return ln
}

// SIGTERM stops accepting but lets an in-flight transfer finish.
func TestServeSIGTERMDrains(t *testing.T) {
	tln := echoListener(t)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "l4lb.yaml")
	os.WriteFile(cfgPath, []byte("admin: {listen: \"off\"}\nlisteners: [{port: 1, bind: [127.0.0.1], target_group: t}]\ntarget_groups: [{name: t, targets: [{address: \""+tln.Addr().String()+"\"}]}]\n"), 0o644)
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listeners[0].Port = 0 // let the kernel pick
	cfg.ShutdownTimeout = 20 * time.Second
	addrc := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- serve(context.Background(), loaded{cfg: cfg}, zap.NewNop(), time.Second, func(s *lb.Server, _ net.Addr) {
			addrc <- s.Addrs(cfg.Listeners[0].Name)[0].String()
		})
	}()
	addr := <-addrc
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	c.Write([]byte("a"))
	io.ReadFull(c, make([]byte, 1))
	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	// New connections are refused soon after the signal...
	deadline := time.Now().Add(5 * time.Second)
	for {
		nc, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			break
		}
		nc.Close()
		if time.Now().After(deadline) {
			t.Fatal("still accepting 5s after SIGTERM")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// ...while the open flow carries a transfer to its end.
	const size = 16 << 20
	go func() {
		c.Write(make([]byte, size))
		c.(*net.TCPConn).CloseWrite()
	}()
	n, err := io.Copy(io.Discard, c)
	if err != nil || n != size {
		t.Fatalf("in-flight transfer after SIGTERM: %d bytes, err %v", n, err)
	}
	c.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not return after draining")
	}
}

// SIGHUP leaves l4lb serving (it reloads; this in-process serve has no file
// to reload, so the reload is refused, and Go's default would exit); SIGTERM turns /readyz to 503 while the drain runs, without a
// token even when the API has one; a second SIGTERM ends the drain at once.
func TestServeSignals(t *testing.T) {
	tln := echoListener(t)
	dir := t.TempDir()
	token := filepath.Join(dir, "token")
	os.WriteFile(token, []byte("s3cret\n"), 0o600)
	cfgPath := filepath.Join(dir, "l4lb.yaml")
	os.WriteFile(cfgPath, []byte("admin: {listen: \"127.0.0.1:0\", token_file: \""+token+"\"}\nlisteners: [{port: 1, bind: [127.0.0.1], target_group: t}]\ntarget_groups: [{name: t, targets: [{address: \""+tln.Addr().String()+"\"}]}]\n"), 0o644)
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listeners[0].Port = 0
	cfg.ShutdownTimeout = time.Minute
	type up struct{ addr, admin string }
	upc := make(chan up, 1)
	done := make(chan error, 1)
	go func() {
		done <- serve(context.Background(), loaded{cfg: cfg}, zap.NewNop(), time.Second, func(s *lb.Server, admin net.Addr) {
			upc <- up{s.Addrs(cfg.Listeners[0].Name)[0].String(), "http://" + admin.String()}
		})
	}()
	u := <-upc
	readyz := func() int {
		resp, err := http.Get(u.admin + "/readyz")
		if err != nil {
			t.Fatalf("readyz: %v", err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := readyz(); code != http.StatusOK {
		t.Fatalf("readyz before the drain = %d, want 200 (no token needed)", code)
	}
	c, err := net.Dial("tcp", u.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	c.Write([]byte("a"))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}

	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	// The reload the signal asks for is counted once it is handled.
	reloads := func() bool {
		req, _ := http.NewRequest("GET", u.admin+"/metrics", nil)
		req.Header.Set("Authorization", "Bearer s3cret")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(b), "l4lb_config_reloads_total{")
	}
	for deadline := time.Now().Add(10 * time.Second); !reloads(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("SIGHUP was not handled within 10 s")
		}
	}
	select {
	case err := <-done:
		t.Fatalf("serve returned after SIGHUP: %v", err)
	default:
	}
	nc, err := net.DialTimeout("tcp", u.addr, 5*time.Second)
	if err != nil {
		t.Fatalf("new connection after SIGHUP: %v", err)
	}
	nc.Close()
	c.Write([]byte("b"))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatalf("open flow after SIGHUP: %v", err)
	}

	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	deadline := time.Now().Add(10 * time.Second)
	for readyz() != http.StatusServiceUnavailable {
		if time.Now().After(deadline) {
			t.Fatal("/readyz still 200 10 s into the drain")
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("serve returned while a flow was open and the drain had a minute left: %v", err)
	default:
	}
	start := time.Now()
	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a second SIGTERM did not end the drain")
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("the open flow survived the ended drain")
	}
	t.Logf("second SIGTERM ended the drain in %v", time.Since(start).Round(time.Millisecond))
}

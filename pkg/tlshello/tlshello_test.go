package tlshello

import (
	"crypto/tls"
	"errors"
	"strings"
	"testing"
)

func hello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	b, err := Record(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestServerNameFromRealHellos(t *testing.T) {
	for _, c := range []struct {
		cfg  *tls.Config
		want string
	}{
		{&tls.Config{ServerName: "API.Example.com"}, "api.example.com"},
		{&tls.Config{ServerName: "a.example.com", MaxVersion: tls.VersionTLS12}, "a.example.com"},
		{&tls.Config{ServerName: "h2.example.com", NextProtos: []string{"h2", "http/1.1"}}, "h2.example.com"},
		{&tls.Config{InsecureSkipVerify: true}, ""},                         // no SNI
		{&tls.Config{ServerName: "10.0.0.1", InsecureSkipVerify: true}, ""}, // an IP is never sent as SNI
	} {
		b := hello(t, c.cfg)
		got, err := ServerName(b)
		if err != nil || got != c.want {
			t.Errorf("%q: got %q, %v", c.cfg.ServerName, got, err)
		}
		// Every strict prefix asks for more, and trailing bytes change nothing.
		for i := range len(b) {
			if _, err := ServerName(b[:i]); !errors.Is(err, ErrShort) {
				t.Fatalf("%q: prefix of %d of %d bytes: %v, want ErrShort", c.cfg.ServerName, i, len(b), err)
			}
		}
		if got2, err := ServerName(append(b[:len(b):len(b)], "more"...)); got2 != got || err != nil {
			t.Fatalf("trailing bytes changed the answer: %q, %v", got2, err)
		}
	}
}

func TestServerNameRefusesOtherBytes(t *testing.T) {
	for _, b := range [][]byte{
		[]byte("GET / HTTP/1.1\r\n"),
		[]byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
		{22, 3, 1, 0, 2, 1, 0},             // a record too short for a handshake header
		{22, 3, 1, 0, 4, 2, 0, 0, 0},       // a ServerHello
		{22, 3, 1, 0, 4, 1, 0, 0, 9},       // a hello longer than its record
		{23, 3, 3, 0, 1, 0},                // application data
		{22, 2, 0, 0, 4, 1, 0, 0, 0},       // SSL 2
		{22, 3, 1, 0x40, 0x01},             // a record over 2^14 bytes
		{22, 3, 1, 0, 6, 1, 0, 0, 2, 3, 3}, // a hello too short for its fields
	} {
		if name, err := ServerName(b); !errors.Is(err, ErrNotHello) {
			t.Errorf("%q: %q, %v; want ErrNotHello", b, name, err)
		}
	}
}

// A server_name that is not a DNS host name is refused, whatever it holds
// (control characters that would split a log line, 60 KB of name); real
// names pass.
func TestServerNameRefusesBadNames(t *testing.T) {
	long := strings.Repeat("a", 63)
	for _, name := range []string{
		"x\nfake line", "a b.example", "a\"b", "a\\b", "\x00", "\xff.example", ".", "a..b", ".a",
		"[::1]", "a:443", strings.Repeat("x", 60000), strings.Repeat("a", 64) + ".example",
		strings.Join([]string{long, long, long, long}, "."), // 255 bytes
	} {
		if ValidServerName(name) {
			t.Errorf("%.40q is valid", name)
		}
		b := hello(t, &tls.Config{ServerName: name, InsecureSkipVerify: true})
		got, err := ServerName(b)
		switch {
		case err == nil && got == "":
			continue // crypto/tls sends no server_name for it (an IP, ".")
		case len(name) > 16000 && errors.Is(err, ErrNotHello):
			continue // spans records: refused as not a hello
		case !errors.Is(err, ErrBadServerName):
			t.Errorf("%.40q: %.40q, %v; want ErrBadServerName", name, got, err)
		}
	}
	for _, name := range []string{"a", "example.com", "example.com.", "_dmarc.example.com", "xn--bcher-kva.example",
		"192.0.2.1", strings.Join([]string{long, long, long, long[:61]}, ".")} { // 253 bytes
		if !ValidServerName(name) {
			t.Errorf("%.40q is refused", name)
		}
	}
}

func TestMatch(t *testing.T) {
	for _, c := range []struct {
		pattern, host string
		want          bool
	}{
		{"api.example.com", "api.example.com", true},
		{"api.example.com", "www.example.com", false},
		{"*.example.com", "a.example.com", true},
		{"*.example.com", "a.b.example.com", true},
		{"*.example.com", "example.com", false},
		{"*.example.com", ".example.com", false},
		{"*.example.com", "badexample.com", false},
	} {
		if got := Match(c.pattern, c.host); got != c.want {
			t.Errorf("Match(%q, %q) = %v", c.pattern, c.host, got)
		}
	}
}

// FuzzServerName: no input panics; an answer never changes when more bytes
// follow; ErrShort never comes for input of MaxLen bytes or more.
func FuzzServerName(f *testing.F) {
	f.Add(hello(f, &tls.Config{ServerName: "fuzz.example.com"}))
	f.Add(hello(f, &tls.Config{InsecureSkipVerify: true}))
	f.Add([]byte("GET / HTTP/1.0\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		name, err := ServerName(b)
		if errors.Is(err, ErrShort) {
			if len(b) >= MaxLen {
				t.Fatalf("ErrShort for %d bytes", len(b))
			}
			return
		}
		name2, err2 := ServerName(append(b[:len(b):len(b)], 0, 1, 2))
		if name2 != name || !errors.Is(err2, err) && err2 != err {
			t.Fatalf("%q, %v became %q, %v with bytes after it", name, err, name2, err2)
		}
		if err == nil && name != "" && !ValidServerName(name) {
			t.Fatalf("an invalid name %q was returned", name)
		}
	})
}

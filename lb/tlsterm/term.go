package tlsterm

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/l4lb/l4lb/pkg/config"
)

// Defaults of the handshake's bounds.
const (
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultMaxHandshakes    = 1024
)

// Options bound a listener's handshakes.
type Options struct {
	HandshakeTimeout time.Duration // 0: DefaultHandshakeTimeout
	MaxHandshakes    int           // concurrent handshakes per listener; 0: DefaultMaxHandshakes
	Keys             *TicketKeys   // shared session-ticket keys; nil: crypto/tls's own per listener
}

// Terminator is one TLS listener's termination.
type Terminator struct {
	path    string // the listener's config path, for errors
	opts    Options
	state   atomic.Pointer[state]
	sem     chan struct{}
	mu      sync.Mutex // one Prepare's commit or Refresh at a time
	pending sync.Map   // net.Conn -> *Info, while its handshake runs
}

// state is what a configuration and its certificate files give.
type state struct {
	lt     config.ListenerTLS
	certs  *certs
	policy Policy
	cfg    *tls.Config
	keys   atomic.Uint64 // the ticket keys' version cfg has
	log    *accessLog    // nil: no access log
}

// ErrBusy refuses a connection when the listener's handshake cap is reached.
var ErrBusy = errors.New("tls: too many handshakes in progress")

// New loads lt's certificates. path names the listener in errors
// ("listeners[0]").
func New(lt *config.ListenerTLS, path string, o Options) (*Terminator, error) {
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if o.MaxHandshakes <= 0 {
		o.MaxHandshakes = DefaultMaxHandshakes
	}
	t := &Terminator{path: path, opts: o, sem: make(chan struct{}, o.MaxHandshakes)}
	st, err := t.build(lt, nil, nil)
	if err != nil {
		return nil, err
	}
	t.state.Store(st)
	return t, nil
}

// ALPN preference lists of NLB's policies, server's order first.
var alpnProtos = map[config.ALPNPolicy][]string{
	config.ALPNHTTP1Only:      {"http/1.1", "http/1.0"},
	config.ALPNHTTP2Only:      {"h2"},
	config.ALPNHTTP2Optional:  {"http/1.1", "http/1.0", "h2"},
	config.ALPNHTTP2Preferred: {"h2", "http/1.1", "http/1.0"},
}

// build makes the state of lt, reading the certificates unless c has them;
// cur's access log is kept when the path is the same.
func (t *Terminator) build(lt *config.ListenerTLS, c *certs, cur *state) (*state, error) {
	policy, ok := PolicyByName(lt.SecurityPolicy)
	if !ok {
		return nil, fmt.Errorf("%s.tls.security_policy: %q is not a known policy", t.path, lt.SecurityPolicy)
	}
	if c == nil {
		var err error
		if c, err = loadCerts(lt.Certificates, t.path); err != nil {
			return nil, err
		}
	}
	st := &state{lt: *lt, certs: c, policy: policy}
	switch {
	case lt.AccessLog == "":
	case cur != nil && cur.log != nil && cur.log.path == lt.AccessLog:
		st.log = cur.log
	default:
		l, err := openAccessLog(lt.AccessLog)
		if err != nil {
			return nil, fmt.Errorf("%s.tls.access_log: %w", t.path, err)
		}
		st.log = l
	}
	protos := alpnProtos[lt.ALPNPolicy]
	http2Only := lt.ALPNPolicy == config.ALPNHTTP2Only
	st.cfg = &tls.Config{
		MinVersion:       policy.Min,
		MaxVersion:       policy.Max,
		CipherSuites:     policy.Suites,
		CurvePreferences: policy.Curves,
		NextProtos:       protos,
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			cert := c.pick(hello)
			if i, ok := t.pending.Load(hello.Conn); ok {
				info := i.(*Info)
				info.CertFile = c.file[cert]
				if cert.Leaf != nil {
					info.CertSerial = cert.Leaf.SerialNumber.Text(16)
				}
			}
			return cert, nil
		},
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			if i, ok := t.pending.Load(hello.Conn); ok {
				i.(*Info).ClientALPN = slices.Clone(hello.SupportedProtos)
			}
			// crypto/tls lets a client that offers only http/1.1 in
			// without ALPN when the server offers h2; NLB's HTTP2Only
			// refuses it.
			if http2Only && len(hello.SupportedProtos) > 0 && !slices.Contains(hello.SupportedProtos, "h2") {
				return nil, fmt.Errorf("tls: ALPN policy HTTP2Only: the client offers %q, not h2", hello.SupportedProtos)
			}
			return nil, nil
		},
	}
	return st, nil
}

// Prepare reads a reloaded listener's TLS settings and certificates;
// commit puts them in force for the next handshake. Certificates that fail
// to load are refused, with the error, and the running ones kept.
func (t *Terminator) Prepare(lt *config.ListenerTLS) (commit func(), err error) {
	cur := t.state.Load()
	st, err := t.build(lt, nil, cur)
	if err != nil {
		return nil, err
	}
	return func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		old := t.state.Swap(st)
		if old.log != nil && old.log != st.log {
			old.log.close()
		}
	}, nil
}

// Refresh reads the certificate files again if any changed since they were
// read, and reports whether it did. A bad new pair is refused, with the
// error, and the running certificates kept; the files are compared again
// at the next Refresh, so a fixed file is taken then.
func (t *Terminator) Refresh() (bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	cur := t.state.Load()
	if !cur.certs.changed() {
		return false, nil
	}
	st, err := t.build(&cur.lt, nil, cur)
	if err != nil {
		return false, err
	}
	t.state.Store(st)
	return true, nil
}

// Policy is the security policy in force.
func (t *Terminator) Policy() Policy { return t.state.Load().policy }

// Handshake terminates TLS on c, accepted at start, within the handshake
// timeout. It refuses at once (ErrBusy) when the listener already runs its
// cap of handshakes. The Info is filled in as far as the handshake got.
func (t *Terminator) Handshake(c net.Conn, start time.Time) (*tls.Conn, *Info, error) {
	info := &Info{Start: start}
	select {
	case t.sem <- struct{}{}:
	default:
		return nil, info, ErrBusy
	}
	defer func() { <-t.sem }()
	st := t.state.Load()
	if t.opts.Keys != nil {
		t.opts.Keys.apply(st.cfg, &st.keys)
	}
	t.pending.Store(c, info)
	defer t.pending.Delete(c)
	tc := tls.Server(c, st.cfg)
	ctx, cancel := context.WithTimeout(context.Background(), t.opts.HandshakeTimeout)
	defer cancel()
	err := tc.HandshakeContext(ctx)
	info.Handshake = time.Since(start)
	if err != nil {
		if desc, ok := strings.CutPrefix(err.Error(), "remote error: tls: "); ok {
			info.Alert = desc
		}
		return nil, info, err
	}
	info.State = tc.ConnectionState()
	return tc, info, nil
}

// Log writes e to the listener's access log, if it has one.
func (t *Terminator) Log(e Entry) {
	if l := t.state.Load().log; l != nil {
		l.write(e)
	}
}

package tlsterm

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/tlshello"
)

// Options are what a listener's termination shares with the others.
type Options struct {
	Keys *TicketKeys // shared session-ticket keys; nil: crypto/tls's own per listener
}

// Terminator is one TLS listener's termination.
type Terminator struct {
	path    string // the listener's config path, for errors
	opts    Options
	state   atomic.Pointer[state]
	gate    *gate
	mu      sync.Mutex // one Prepare's commit or Refresh at a time
	pending sync.Map   // net.Conn -> *Info, while its handshake runs
}

// state is what a configuration and its certificate files give.
type state struct {
	lt     config.ListenerTLS
	limits config.TLSHandshake
	certs  *certs
	policy Policy
	cfg    *tls.Config
	keys   atomic.Uint64 // the ticket keys' version cfg has
	log    *accessLog    // nil: no access log
}

// Why a connection was refused before its handshake.
var (
	// ErrHelloTimeout: the ClientHello had not all arrived within the hello
	// timeout.
	ErrHelloTimeout = errors.New("tls: no ClientHello within the hello timeout")
	// ErrBusy: the listener's handshake slots stayed taken for the queue
	// timeout.
	ErrBusy = errors.New("tls: too many handshakes in progress")
	// ErrSourceBusy: the client's network (its /24 or /64) held its whole
	// share of the slots for the queue timeout.
	ErrSourceBusy = errors.New("tls: too many handshakes in progress from the client's network")
	// ErrBadServerName: the hello's server_name is not a DNS host name
	// (tlshello.ValidServerName).
	ErrBadServerName = tlshello.ErrBadServerName
)

// limits are lt's handshake bounds, with defaults for what is zero (a
// config built in code rather than normalized).
func limits(lt *config.ListenerTLS) config.TLSHandshake {
	h := lt.Handshake
	if h.HelloTimeout <= 0 {
		h.HelloTimeout = config.DefaultTLSHelloTimeout
	}
	if h.Timeout <= 0 {
		h.Timeout = config.DefaultTLSHandshakeTimeout
	}
	if h.QueueTimeout <= 0 {
		h.QueueTimeout = config.DefaultTLSHandshakeQueueTimeout
	}
	if h.Max <= 0 {
		h.Max = config.DefaultTLSMaxHandshakes
	}
	if h.PerSource <= 0 {
		h.PerSource = max(h.Max/16, 4)
	}
	return h
}

// New loads lt's certificates. path names the listener in errors
// ("listeners[0]").
func New(lt *config.ListenerTLS, path string, o Options) (*Terminator, error) {
	t := &Terminator{path: path, opts: o}
	st, err := t.build(lt, nil, nil)
	if err != nil {
		return nil, err
	}
	t.gate = newGate(st.limits.Max, st.limits.PerSource)
	t.state.Store(st)
	return t, nil
}

// Certificates lists the certificates in use: each one's file and when it
// expires.
func (t *Terminator) Certificates() map[string]time.Time {
	st := t.state.Load()
	out := make(map[string]time.Time, len(st.certs.list))
	for _, c := range st.certs.list {
		out[st.certs.file[c]] = c.Leaf.NotAfter
	}
	return out
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
	st := &state{lt: *lt, limits: limits(lt), certs: c, policy: policy}
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
			// Refused before anything reads the name: the certificate
			// choice, the access log, the PROXY header to the target.
			if hello.ServerName != "" && !tlshello.ValidServerName(hello.ServerName) {
				return nil, ErrBadServerName
			}
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
// commit puts them in force for the next handshake, abort gives back what
// they opened (a new access log). Certificates that fail to load are
// refused, with the error, and the running ones kept.
func (t *Terminator) Prepare(lt *config.ListenerTLS) (commit, abort func(), err error) {
	cur := t.state.Load()
	st, err := t.build(lt, nil, cur)
	if err != nil {
		return nil, nil, err
	}
	abort = func() {
		if st.log != nil && st.log != cur.log {
			st.log.close()
		}
	}
	return func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		old := t.state.Swap(st)
		t.gate.resize(st.limits.Max, st.limits.PerSource)
		if old.log != nil && old.log != st.log {
			old.log.close()
		}
	}, abort, nil
}

// Close closes the access log; handshakes and lines after it are not
// logged.
func (t *Terminator) Close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if st := t.state.Load(); st.log != nil {
		st.log.close()
	}
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

// Handshake terminates TLS on c, accepted at start, from the client src.
// It waits for the ClientHello (ErrHelloTimeout past the hello timeout),
// then for a handshake slot, queueing up to the queue timeout (ErrBusy, or
// ErrSourceBusy when src's network holds its share), then handshakes within
// the handshake timeout. The Info is filled in as far as the handshake got.
func (t *Terminator) Handshake(c net.Conn, src netip.Addr, start time.Time) (*tls.Conn, *Info, error) {
	info := &Info{Start: start}
	st := t.state.Load()
	lim := st.limits
	if err := waitHello(c, start.Add(lim.HelloTimeout)); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			err = ErrHelloTimeout
		}
		return nil, info, err
	}
	srcNet := sourceNet(src)
	if err := t.gate.acquire(srcNet, lim.QueueTimeout); err != nil {
		return nil, info, err
	}
	defer t.gate.release(srcNet)
	if t.opts.Keys != nil {
		t.opts.Keys.apply(st.cfg, &st.keys)
	}
	t.pending.Store(c, info)
	defer t.pending.Delete(c)
	tc := tls.Server(c, st.cfg)
	ctx, cancel := context.WithTimeout(context.Background(), lim.Timeout)
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

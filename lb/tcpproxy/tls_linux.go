package tcpproxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb/listen"
	"github.com/l4lb/l4lb/lb/tlsterm"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/metrics"
	"github.com/l4lb/l4lb/pkg/proxyproto"
)

// certCheck is how often the TLS listeners' certificate files are compared
// with what was loaded; a changed file is read again.
const certCheck = 2 * time.Second

// watchCerts reloads TLS certificates whose files changed, until stop.
func (s *Server) watchCerts(stop <-chan struct{}) {
	defer s.bg.Done()
	t := time.NewTicker(certCheck)
	defer t.Stop()
	certExpiry(s.m, s.termsNow())
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		terms := s.termsNow()
		for name, term := range terms {
			switch changed, err := term.Refresh(); {
			case err != nil:
				s.log.Error("TLS certificate not reloaded; the running one is kept", zap.String(logListener, name), zap.Error(err))
			case changed:
				s.log.Info("TLS certificates reloaded", zap.String(logListener, name))
			}
		}
		certExpiry(s.m, terms)
	}
}

// certExpiry sets l4lb_tls_certificate_not_after_seconds of each listener's
// certificates (an alert warns of one about to expire).
func certExpiry(m *metrics.Metrics, terms map[string]*tlsterm.Terminator) {
	for name, term := range terms {
		for file, notAfter := range term.Certificates() {
			m.Gauge(metrics.TLSCertificateNotAfter, name, file).Set(float64(notAfter.Unix()))
		}
	}
}

// handshakeKey labels tls_handshakes_total.
type handshakeKey struct {
	version uint16
	resumed bool
}

// handshakeCounters resolves a listener's handshake series once.
func handshakeCounters(m *metrics.Metrics, listener string) map[handshakeKey]prometheus.Counter {
	out := map[handshakeKey]prometheus.Counter{}
	for _, v := range []uint16{tls.VersionTLS10, tls.VersionTLS11, tls.VersionTLS12, tls.VersionTLS13} {
		for _, r := range []bool{false, true} {
			res := "false"
			if r {
				res = "true"
			}
			out[handshakeKey{v, r}] = m.Counter(metrics.TLSHandshakes, listener, tls.VersionName(v), res)
		}
	}
	return out
}

// handshake terminates TLS on a TLS listener; the SNI the client sent then
// routes the flow (rules), and the decrypted bytes move by the stream copy.
// A failed, timed-out or refused handshake is counted and ends the
// connection; nothing else is disturbed.
func (p *setup) handshake() (listen.Reason, bool) {
	l := p.l
	if l.term == nil {
		return 0, true
	}
	tc, info, err := l.term.Handshake(p.c, p.src.Addr(), p.accepted)
	if err != nil {
		l.tlsErrors.Inc()
		p.s.log.Debug("TLS handshake failed", zap.String(logListener, l.cfg.Name), zap.Stringer(logClient, p.src), zap.Error(err))
		l.term.Log(tlsterm.Entry{Listener: l.cfg.Name, Client: p.src, Local: p.dst, Info: info, End: time.Now()})
		return handshakeReason(err), false
	}
	p.tinfo = info
	cs := info.State
	if c := l.handshakes[handshakeKey{cs.Version, cs.DidResume}]; c != nil {
		c.Inc()
	}
	p.tc, p.sni, p.checkPP = tc, cs.ServerName, false
	return 0, true
}

// handshakeReason is the rejected_flows_total reason of a refused or
// failed handshake.
func handshakeReason(err error) listen.Reason {
	switch {
	case errors.Is(err, tlsterm.ErrHelloTimeout):
		return listen.ReasonTLSHelloTimeout
	case errors.Is(err, tlsterm.ErrBusy):
		return listen.ReasonTLSBusy
	case errors.Is(err, tlsterm.ErrSourceBusy):
		return listen.ReasonTLSSourceBusy
	case errors.Is(err, tlsterm.ErrBadServerName):
		return listen.ReasonTLSBadSNI
	}
	return listen.ReasonTLSHandshake
}

// runStream copies one direction of a flow with a TLS end: through a pooled
// buffer, as crypto/tls needs the bytes in user space. Timers and parking
// work as on the splice path (run): one read deadline fires parkAfter after
// it was armed, and a direction that moved nothing since hands its buffer
// back and parks on its source socket. That is safe for a TLS source: a read
// that times out has returned every decrypted byte crypto/tls held and left
// at most part of a record buffered, whose rest must still arrive on the
// socket. The write deadline is the idle timeout, as a write that times out
// leaves a TLS connection unusable.
func (h *halfFlow) runStream() (how copyErr, isParked bool) {
	f := h.f
	now := time.Now()
	if now.Sub(f.lastActive()) >= f.idle {
		return endIdle, false
	}
	h.armStream(now)
	mark := h.n
	for {
		if h.buf == nil {
			h.buf = f.srv.bufs.get()
		}
		n, err := h.rd.Read(*h.buf)
		if n > 0 {
			if _, werr := h.wr.Write((*h.buf)[:n]); werr != nil {
				h.release()
				h.err, h.errAtDst = werr, true
				if errors.Is(werr, net.ErrClosed) {
					return endShutdown, false
				}
				return endReset, false
			}
			h.n += int64(n)
			f.touch()
		}
		switch {
		case err == nil:
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			h.release()
			closeWrite(h.wr)
			return endEOF, false
		case errors.Is(err, os.ErrDeadlineExceeded):
			now := time.Now()
			if now.Sub(f.lastActive()) >= f.idle {
				h.release()
				return endIdle, false
			}
			if h.n == mark || now.Sub(f.lastActive()) >= f.parkAfter {
				h.release()
				if f.srv.parker.park(h) {
					return 0, true
				}
			}
			mark = h.n
			h.armStream(now)
		case errors.Is(err, net.ErrClosed):
			h.release()
			return endShutdown, false
		default:
			h.release()
			h.err, h.errAtDst = err, false
			return endReset, false
		}
	}
}

// armStream sets the source's read deadline parkAfter from now (or at the
// flow's idle expiry, if sooner) and the destination's write deadline at
// the idle timeout.
func (h *halfFlow) armStream(now time.Time) {
	d := now.Add(h.f.parkAfter)
	if exp := h.f.lastActive().Add(h.f.idle); exp.Before(d) {
		d = exp
	}
	h.rdc.SetReadDeadline(d)
	h.wrc.SetWriteDeadline(now.Add(h.f.idle))
}

// closeWrite passes a half-close on: close_notify on a TLS end, then FIN.
func closeWrite(w io.Writer) {
	switch c := w.(type) {
	case *tls.Conn:
		c.CloseWrite()
		if tc, ok := c.NetConn().(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	case *net.TCPConn:
		c.CloseWrite()
	}
}

// sslInfo is what a PROXY v2 header tells a target of the client's TLS
// session.
func sslInfo(cs tls.ConnectionState) *proxyproto.SSL {
	return &proxyproto.SSL{Version: opensslVersion[cs.Version], Cipher: tls.CipherSuiteName(cs.CipherSuite), SNI: cs.ServerName, ALPN: cs.NegotiatedProtocol}
}

// opensslVersion names versions as OpenSSL does, which is what PROXY
// protocol readers (HAProxy, nginx) expect.
var opensslVersion = map[uint16]string{
	tls.VersionTLS10: "TLSv1", tls.VersionTLS11: "TLSv1.1", tls.VersionTLS12: "TLSv1.2", tls.VersionTLS13: "TLSv1.3",
}

// encryptToTarget handshakes with the target of a TLS target group, within
// the connect timeout, offering the ALPN protocol the client chose. A
// failed handshake counts against the target (target TLS errors, and its
// passive health) and refuses the flow: its bytes cannot go elsewhere, as a
// PROXY header or the client's may have been sent.
func (p *setup) encryptToTarget() (listen.Reason, bool) {
	g := p.g.Config()
	if g.Protocol != config.TLS {
		return 0, true
	}
	cfg, err := p.s.targetTLS(g)
	if err != nil {
		p.s.log.Error("TLS to targets", zap.String("target_group", g.Name), zap.Error(err))
		return listen.ReasonNoTarget, false
	}
	if p.tc != nil {
		if proto := p.tc.ConnectionState().NegotiatedProtocol; proto != "" {
			c := cfg.Clone()
			c.NextProtos = []string{proto}
			cfg = c
		}
	}
	tt := tls.Client(p.t, cfg)
	ctx, cancel := context.WithTimeout(p.s.cutCtx, p.s.opts.ConnectTimeout)
	defer cancel()
	if err := tt.HandshakeContext(ctx); err != nil {
		p.tgt.TLSErrors.Inc()
		p.s.reg.PassiveFailure(p.tgt)
		p.s.log.Debug("TLS handshake with target failed", zap.String(logTarget, p.tgt.Name), zap.Error(err))
		return listen.ReasonNoTarget, false
	}
	p.tt = tt
	return 0, true
}

// targetTLS is the client configuration of a TLS target group, built once
// per configuration of the group (a reload builds a new one); its session
// cache lets flows resume their sessions with the targets.
func (s *tlsPart) targetTLS(g *config.TargetGroup) (*tls.Config, error) {
	if c, ok := s.targetTLSConfigs.Load(g); ok {
		return c.(*tls.Config), nil
	}
	cfg := &tls.Config{ServerName: g.TLS.ServerName, ClientSessionCache: tls.NewLRUClientSessionCache(1024),
		MinVersion: tls.VersionTLS10}
	if g.TLS.CAFile == "" {
		cfg.InsecureSkipVerify = true // NLB does not verify targets
	} else {
		pem, err := os.ReadFile(g.TLS.CAFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no certificate in it", g.TLS.CAFile)
		}
		cfg.RootCAs = pool
		if g.TLS.ServerName == "" {
			// The chain is checked, not the name: there is none to check.
			cfg.InsecureSkipVerify = true
			cfg.VerifyConnection = func(cs tls.ConnectionState) error {
				opts := x509.VerifyOptions{Roots: pool, Intermediates: x509.NewCertPool()}
				for _, c := range cs.PeerCertificates[1:] {
					opts.Intermediates.AddCert(c)
				}
				_, err := cs.PeerCertificates[0].Verify(opts)
				return err
			}
		}
	}
	c, _ := s.targetTLSConfigs.LoadOrStore(g, cfg)
	return c.(*tls.Config), nil
}

// logTLS writes a finished TLS flow's access-log line.
func (f *flow) logTLS() {
	e := tlsterm.Entry{Listener: f.l.cfg.Name, Client: f.src, Local: f.dst, Info: f.tinfo, End: time.Now(),
		Received: f.halves[0].n, Sent: f.halves[1].n}
	if f.ts != nil {
		e.BackendALPN = f.ts.ConnectionState().NegotiatedProtocol
	}
	f.l.term.Log(e)
}

package healthcheck

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"time"

	"github.com/l4lb/l4lb/pkg/api"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/proxyproto"
)

// Result is the outcome of one check.
type Result struct {
	Pass   bool
	Reason string // NLB reason code when failed
	Detail string
}

// checker runs single checks. Its HTTP client keeps no connections, so every
// check opens a fresh one, as NLB's do.
type checker struct {
	dialer  net.Dialer
	client  *http.Client
	ppLocal *http.Client // the same, opening each connection with a PROXY LOCAL header
}

func newChecker() *checker {
	c := &checker{}
	c.client = c.httpClient(false)
	c.ppLocal = c.httpClient(true)
	return c
}

func (c *checker) httpClient(local bool) *http.Client {
	tr := &http.Transport{
		DisableKeepAlives: true,
		// NLB does not verify target certificates on HTTPS checks.
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		Proxy:           nil,
	}
	if local {
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			return c.dial(ctx, addr, true)
		}
	}
	return &http.Client{
		Transport: tr,
		// A redirect is an answer; the matcher judges its code.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// dial connects, and with local first sends a PROXY v2 LOCAL header, which
// tells a PROXY-expecting target that this connection is the balancer's own.
func (c *checker) dial(ctx context.Context, addr string, local bool) (net.Conn, error) {
	conn, err := c.dialer.DialContext(ctx, "tcp", addr)
	if err != nil || !local {
		return conn, err
	}
	if d, ok := ctx.Deadline(); ok {
		conn.SetWriteDeadline(d)
	}
	if _, err := conn.Write(proxyproto.Local()); err != nil {
		conn.Close()
		return nil, err
	}
	conn.SetWriteDeadline(time.Time{})
	return conn, nil
}

// check probes target once, within spec.Timeout.
func (c *checker) check(ctx context.Context, spec *config.HealthCheck, target netip.AddrPort) Result {
	ctx, cancel := context.WithTimeout(ctx, spec.Timeout)
	defer cancel()
	port := target.Port()
	if spec.Port != 0 {
		port = spec.Port
	}
	addr := netip.AddrPortFrom(target.Addr(), port)
	switch spec.Protocol {
	case config.HealthHTTP, config.HealthHTTPS:
		return c.checkHTTP(ctx, spec, addr)
	}
	conn, err := c.dial(ctx, addr.String(), spec.SendProxyLocal)
	if err != nil {
		return failure(err)
	}
	defer conn.Close()
	if spec.Protocol == config.HealthTLS {
		// A TLS check passes on a completed handshake; as on HTTPS
		// checks, NLB's, the certificate is not verified.
		tc := tls.Client(conn, &tls.Config{InsecureSkipVerify: true})
		if err := tc.HandshakeContext(ctx); err != nil {
			return Result{Reason: api.ReasonFailedHealthChecks, Detail: "TLS handshake: " + err.Error()}
		}
		tc.Close()
	}
	return Result{Pass: true}
}

func (c *checker) checkHTTP(ctx context.Context, spec *config.HealthCheck, addr netip.AddrPort) Result {
	scheme := "http"
	if spec.Protocol == config.HealthHTTPS {
		scheme = "https"
	}
	url := scheme + "://" + addr.String() + spec.Path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return Result{Reason: api.ReasonFailedHealthChecks, Detail: err.Error()}
	}
	req.Header.Set("User-Agent", "l4lb-health-check")
	client := c.client
	if spec.SendProxyLocal {
		client = c.ppLocal
	}
	resp, err := client.Do(req)
	if err != nil {
		return failure(err)
	}
	resp.Body.Close()
	for _, r := range spec.Matcher {
		if resp.StatusCode >= r.Lo && resp.StatusCode <= r.Hi {
			return Result{Pass: true}
		}
	}
	return Result{Reason: api.ReasonResponseCodeMismatch, Detail: "Health checks failed with these codes: [" + strconv.Itoa(resp.StatusCode) + "]"}
}

func failure(err error) Result {
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return Result{Reason: api.ReasonTimeout, Detail: "Request timed out"}
	}
	return Result{Reason: api.ReasonFailedHealthChecks, Detail: fmt.Sprintf("Health checks failed: %v", err)}
}

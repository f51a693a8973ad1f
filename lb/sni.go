package lb

import (
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l4lb/l4lb/lb/registry"
	"github.com/l4lb/l4lb/pkg/config"
	"github.com/l4lb/l4lb/pkg/tlshello"
)

// HelloTimeout bounds the wait for a TLS ClientHello on a listener with SNI
// rules.
const HelloTimeout = 10 * time.Second

// sniRule sends TLS flows whose ClientHello names a matching host to its own
// target group. The first matching rule wins; a hello without a name, or
// with a name no rule matches, takes the listener's target_group or forward.
type sniRule struct {
	patterns []string // lower-case host names or *.domain patterns
	route    *route
}

func buildRules(l *config.Listener, reg *registry.Registry) ([]sniRule, error) {
	var rules []sniRule
	for _, r := range l.Rules {
		g := reg.Group(r.TargetGroup)
		if g == nil {
			return nil, fmt.Errorf("listener %s: no target group %q", l.Name, r.TargetGroup)
		}
		rules = append(rules, sniRule{patterns: r.SNI, route: &route{groups: []*registry.Group{g}, cum: []int{1}, total: 1}})
	}
	return rules, nil
}

// routeFor is the route of a host name: the first rule that matches it, or
// the listener's own.
func (l *listener) routeFor(host string) *route {
	if host != "" {
		for _, r := range l.rules {
			if slices.ContainsFunc(r.patterns, func(p string) bool { return tlshello.Match(p, host) }) {
				return r.route
			}
		}
	}
	return l.route.Load()
}

// allRoutes is the listener's own route and its rules' routes.
func (l *listener) allRoutes() []*route {
	rs := []*route{l.route.Load()}
	for _, r := range l.rules {
		rs = append(rs, r.route)
	}
	return rs
}

var helloBufs = sync.Pool{New: func() any { return new([tlshello.MaxLen]byte) }}

// peekHello waits (up to HelloTimeout) for the client's ClientHello and
// returns the name it asks for, leaving every byte queued for the target.
func peekHello(c *net.TCPConn) (string, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return "", err
	}
	buf := helloBufs.Get().(*[tlshello.MaxLen]byte)
	defer helloBufs.Put(buf)
	c.SetReadDeadline(time.Now().Add(HelloTimeout))
	defer c.SetReadDeadline(time.Time{})
	var name string
	perr := tlshello.ErrShort
	err = rc.Read(func(fd uintptr) bool {
		n, _, e := unix.Recvfrom(int(fd), buf[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		for e == unix.EINTR {
			n, _, e = unix.Recvfrom(int(fd), buf[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		}
		switch {
		case e == unix.EAGAIN:
			return false
		case e != nil:
			perr = e
			return true
		case n == 0:
			perr = io.EOF
			return true
		}
		// Peeking leaves the bytes queued, so a short hello is peeked again
		// when more arrive.
		name, perr = tlshello.ServerName(buf[:n])
		return !errors.Is(perr, tlshello.ErrShort)
	})
	if err != nil {
		return "", err
	}
	return name, perr
}

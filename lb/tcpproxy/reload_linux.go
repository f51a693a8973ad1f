package tcpproxy

import (
	"fmt"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb/listen"
	"github.com/l4lb/l4lb/lb/tlsterm"
	"github.com/l4lb/l4lb/pkg/config"
)

func (l *listener) Key() listen.Key {
	return listen.Key{Name: l.cfg.Name, IP: l.bindA.IP, Port: l.cfg.Port}
}

// retired is a listener a reload removed: it accepts no more, and its flows
// drain under its target groups' deregistration rules.
type retired struct {
	l     *listener
	timer *time.Timer
}

// Change is a reload of the TCP listeners, prepared: the addresses it adds
// are bound (so a port in use fails the reload before anything changed), and
// nothing else has changed yet. Commit it once the registry has the new
// target groups, or Abort it.
type Change struct {
	s       *Server
	cfg     *config.Config
	add     map[listen.Key]*listener // bound, not serving
	remove  []*listener
	terms   map[string]*tlsterm.Terminator // the TLS listeners' terminations after the reload
	commits []func()                       // put the kept ones' new certificates in force
	aborts  []func()                       // give back what preparing them opened
}

// Prepare binds the listeners cfg adds.
func (s *Server) Prepare(cfg *config.Config) (*Change, error) {
	cur := s.set.ByKey()
	open := func(lc *config.Listener, b config.BindAddr) (*listener, error) {
		l := newListener(s, lc, b, nil)
		if err := l.bind(); err != nil {
			l.close()
			return nil, err
		}
		return l, nil
	}
	// TLS first: a certificate that does not load fails the reload before
	// anything is bound.
	c := &Change{s: s, cfg: cfg}
	if err := c.prepareTerms(); err != nil {
		c.Abort()
		return nil, err
	}
	var err error
	if c.add, c.remove, err = listen.Diff(cfg, config.Protocol.HasTCP, cur, open, (*listener).close); err != nil {
		c.Abort()
		return nil, err
	}
	for _, l := range c.add {
		l.term = c.terms[l.cfg.Name]
	}
	return c, nil
}

// prepareTerms reads the TLS settings and certificates of cfg's TLS
// listeners: kept listeners' terminations are prepared in place (the
// certificate cache and session tickets carry over), added ones built.
func (c *Change) prepareTerms() error {
	s := c.s
	cur := s.termsNow()
	c.terms = map[string]*tlsterm.Terminator{}
	for i := range c.cfg.Listeners {
		lc := &c.cfg.Listeners[i]
		if lc.Protocol != config.TLS {
			continue
		}
		if t := cur[lc.Name]; t != nil {
			commit, abort, err := t.Prepare(lc.TLS)
			if err != nil {
				return err
			}
			c.terms[lc.Name], c.commits, c.aborts = t, append(c.commits, commit), append(c.aborts, abort)
			continue
		}
		t, err := tlsterm.New(lc.TLS, fmt.Sprintf("listeners[%d]", i), s.opts.TLS)
		if err != nil {
			return err
		}
		c.terms[lc.Name], c.aborts = t, append(c.aborts, t.Close)
	}
	return nil
}

// Abort closes what Prepare bound and opened.
func (c *Change) Abort() {
	for _, l := range c.add {
		l.close()
	}
	for _, abort := range c.aborts {
		abort()
	}
	c.add, c.aborts = nil, nil
}

// Commit switches to the new listeners: added ones start accepting, kept
// ones serve new connections with the new attributes (established flows
// keep theirs and their targets), removed ones stop accepting and drain.
func (c *Change) Commit() error {
	s, cfg := c.s, c.cfg
	dropped := s.swapTerms(c.terms)
	for _, commit := range c.commits {
		commit()
	}
	c.aborts = nil
	// A TLS listener the reload removed closes its access log once its
	// flows have drained (lines of flows that outlive that are not logged).
	var delay time.Duration
	for _, l := range c.remove {
		delay = max(delay, l.drainDelay())
	}
	for name, t := range dropped {
		if c.terms[name] != t {
			time.AfterFunc(delay, t.Close)
		}
	}
	cur := s.set.ByKey()
	var next []*listener
	var start []*listener
	for i := range cfg.Listeners {
		lc := &cfg.Listeners[i]
		if !lc.Protocol.HasTCP() {
			continue
		}
		r, err := listen.NewRoute(lc, s.reg)
		if err != nil {
			c.Abort()
			return err
		}
		rules, err := listen.NewRules(lc, s.reg)
		if err != nil {
			c.Abort()
			return err
		}
		// The per-source count carries over while its bound is unchanged,
		// so a reload does not hand every source a fresh allowance.
		var limit *listen.SourceLimit
		for _, b := range lc.Bind {
			if old := cur[listen.KeyOf(lc, b)]; old != nil && old.cfg.MaxConnectionsPerSource == lc.MaxConnectionsPerSource {
				limit = old.limit
				break
			}
		}
		if limit == nil {
			limit = listen.NewSourceLimit(lc.MaxConnectionsPerSource)
		}
		for _, b := range lc.Bind {
			k := listen.KeyOf(lc, b)
			l := c.add[k]
			if l == nil {
				old := cur[k]
				l = newListener(s, lc, b, r)
				l.socks, l.slot = old.socks, old.slot
			} else {
				l.route.Store(r)
				start = append(start, l)
			}
			l.limit, l.rules = limit, rules
			next = append(next, l)
		}
	}
	s.mu.Lock()
	s.set.Store(next)
	for _, l := range next {
		l.slot.Store(l)
	}
	for _, l := range start {
		l.serve(s.evloops)
	}
	for _, l := range c.remove {
		l.close()
		s.retire(l)
	}
	s.mu.Unlock()
	if k := s.kernel.Load(); k != nil {
		// The kernel path takes listeners when l4lb starts; a kept one
		// that no longer qualifies, or a removed one, leaves it. Its
		// pinned flows keep their targets until they end or idle out.
		for _, l := range next {
			if why := kernelEligible(l); why != "" && k.Serves(l.slot) {
				k.Drop(l.slot, why)
			}
		}
		for _, l := range c.remove {
			k.Drop(l.slot, "listener removed by reload")
		}
		k.Changed()
	}
	for _, l := range start {
		s.log.Info("listener up", zap.String(logListener, l.cfg.Name), zap.String("protocol", l.protocol()), zap.Stringer(logAddr, l.Addr()), zap.Int(logSockets, len(l.socks)), zap.String("by", "reload"))
	}
	c.add = nil
	return nil
}

// drainDelay is the longest deregistration delay of l's target groups.
func (l *listener) drainDelay() time.Duration {
	var delay time.Duration
	for _, r := range l.Routes() {
		for _, g := range r.Groups {
			delay = max(delay, g.Config().Attributes.DeregistrationDelay)
		}
	}
	return delay
}

// retire lets a removed listener's flows run until the longest
// deregistration delay of its target groups, then resets those whose group
// has connection termination on (s.mu held).
func (s *Server) retire(l *listener) {
	delay := l.drainDelay()
	slot := l.slot
	rt := &retired{l: l}
	rt.timer = time.AfterFunc(delay, func() {
		s.mu.Lock()
		s.retired = slices.DeleteFunc(s.retired, func(x *retired) bool { return x == rt })
		if s.closing.Load() { // Shutdown ends every flow itself
			s.mu.Unlock()
			return
		}
		s.bg.Add(1) // before Shutdown can reach its Wait: it takes s.mu first
		s.mu.Unlock()
		defer s.bg.Done()
		s.endFlowsWhere(func(f trackedFlow) bool {
			return f.listenerOf().slot == slot && f.targetOf().Group().Config().Attributes.DeregistrationConnectionTermination
		}, "listener "+l.cfg.Name, "listener removed by reload; deregistration delay over")
	})
	s.retired = append(s.retired, rt)
	s.log.Info("listener removed; its flows drain", zap.String(logListener, l.cfg.Name), zap.Stringer(logAddr, l.Addr()), zap.Duration("deregistration_delay", delay))
}

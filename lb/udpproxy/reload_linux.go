package udpproxy

import (
	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb/listen"
	"github.com/l4lb/l4lb/pkg/config"
)

func (u *udpFront) Key() listen.Key {
	return listen.Key{Name: u.cfg.Name, IP: u.bindA.IP, Port: u.cfg.Port}
}

// Change is a reload of the UDP listeners, prepared: the addresses it adds
// are bound, and nothing else has changed yet. Commit it once the registry
// has the new target groups, or Abort it.
type Change struct {
	s      *Server
	cfg    *config.Config
	add    map[listen.Key]*udpFront // bound, not reading
	remove []*udpFront
}

// Prepare binds the listeners cfg adds.
func (s *Server) Prepare(cfg *config.Config) (*Change, error) {
	cur := s.set.ByKey()
	open := func(lc *config.Listener, b config.BindAddr) (*udpFront, error) {
		u := newFront(s, lc, b, nil)
		if err := u.bind(); err != nil {
			u.close()
			return nil, err
		}
		return u, nil
	}
	add, remove, err := listen.Diff(cfg, config.Protocol.HasUDP, cur, open, (*udpFront).close)
	if err != nil {
		return nil, err
	}
	return &Change{s: s, cfg: cfg, add: add, remove: remove}, nil
}

// Abort closes what Prepare bound.
func (c *Change) Abort() {
	for _, u := range c.add {
		u.close()
	}
	c.add = nil
}

// Commit switches to the new listeners. Added ones start reading (in user
// space: the kernel path takes listeners when l4lb starts). Kept ones route
// new flows with the new attributes; established flows keep their targets,
// in user space and in the kernel, whose tables are rewritten in place. A
// removed listener's socket closes, and with it its flows: their datagrams
// arrived on it. Its kernel flows, if any, idle out.
func (c *Change) Commit() error {
	s, cfg := c.s, c.cfg
	cur := s.set.ByKey()
	k := s.kernel.Load()
	var next, start []*udpFront
	for i := range cfg.Listeners {
		lc := &cfg.Listeners[i]
		if !lc.Protocol.HasUDP() {
			continue
		}
		r, err := listen.NewRoute(lc, s.reg)
		if err != nil {
			c.Abort()
			return err
		}
		for _, b := range lc.Bind {
			key := listen.KeyOf(lc, b)
			if u := c.add[key]; u != nil {
				u.route.Store(r)
				start = append(start, u)
				next = append(next, u)
				continue
			}
			u := cur[key]
			acl := listen.NewACL(lc)
			u.acl.Store(&acl)
			u.route.Store(r)
			u.table.SetIdle(lc.UDPIdleTimeout)
			if k != nil && k.Serves(u) {
				if why := kernelEligible(u); why != "" {
					k.Drop(u, why)
				}
			}
			next = append(next, u)
		}
	}
	s.set.Store(next)
	for _, u := range start {
		u.start()
		why := "added by reload: the kernel path takes listeners when l4lb starts"
		if !s.cfg.UDPFastPath {
			why = ""
		}
		s.log.Info("listener up", zap.String(logListener, u.cfg.Name), zap.String("protocol", "UDP"), zap.Stringer(logAddr, u.Addr()), zap.Int(logSockets, len(u.socks)), zap.String("by", "reload"), zap.String("user_space", why))
	}
	for _, u := range c.remove {
		if k != nil {
			k.Drop(u, "listener removed by reload")
		}
		n := u.table.Len()
		u.close()
		s.log.Info("listener removed", zap.String(logListener, u.cfg.Name), zap.Stringer(logAddr, u.Addr()), zap.Int(logFlows, n))
	}
	c.add = nil
	return nil
}

package lb

import (
	"fmt"

	"go.uber.org/zap"

	"github.com/l4lb/l4lb/pkg/config"
)

// Reload applies cfg, a validated configuration, as a difference from the
// running one: the listeners it adds are bound first, so a port that cannot
// be bound fails the reload with nothing changed. Then the registry takes the
// new target groups and targets, and the data planes the new listeners. No
// established flow is cut: removed listeners and targets drain under their
// groups' deregistration rules, and kept flows keep their targets.
//
// Settings of the load_balancer block other than cross_zone (flow bounds,
// the UDP fast path and its interfaces, the PROXY endpoint ID), and the
// admin block, take effect when l4lb starts or is upgraded. So does a kept
// target group's forwarding (nat, or dsr and its encapsulation): a file
// that changes it is refused.
func (s *Server) Reload(cfg *config.Config) error {
	s.reload.Lock()
	defer s.reload.Unlock()
	if s.closing.Load() {
		return fmt.Errorf("l4lb is shutting down")
	}
	tcp, err := s.tcp.Prepare(cfg)
	if err != nil {
		return err
	}
	udp, err := s.udp.Prepare(cfg)
	if err != nil {
		tcp.Abort()
		return err
	}
	if err := s.Registry.Apply(cfg); err != nil {
		tcp.Abort()
		udp.Abort()
		return err
	}
	// The new groups exist now, so the routes can be built; that cannot
	// fail for a validated configuration.
	if err := tcp.Commit(); err != nil {
		udp.Abort()
		return err
	}
	if err := udp.Commit(); err != nil {
		return err
	}
	s.log.Info("config applied", zap.Int("listeners", len(cfg.Listeners)), zap.Int("target_groups", len(cfg.TargetGroups)))
	return nil
}

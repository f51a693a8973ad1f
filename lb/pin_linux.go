package lb

import (
	"path/filepath"

	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb/fastpath"
	"github.com/l4lb/l4lb/pkg/config"
)

// kernelPinDir is the directory on the BPF filesystem where this instance's
// kernel paths pin their links and maps, mounting the filesystem if it is
// missing and l4lb may; "" when they pin nothing: no kernel path, pinning
// off (load_balancer.bpffs: off), no instance name, or no BPF filesystem.
// Without pins the kernel paths stop with l4lb, and the DSR guard turns
// what this host would reset into drops.
func (s *Server) kernelPinDir(cfg *config.Config, instance string) string {
	if !(cfg.TCPFastPath || cfg.UDPFastPath) || cfg.BPFFS == "" || instance == "" {
		return ""
	}
	dir := filepath.Join(cfg.BPFFS, instance)
	if err := fastpath.MountBPFFS(dir); err != nil {
		s.log.Warn("the kernel paths cannot pin, so they stop forwarding when l4lb stops", zap.String("bpffs", dir), zap.Error(err))
		return ""
	}
	return dir
}

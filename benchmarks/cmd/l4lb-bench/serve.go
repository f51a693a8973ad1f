package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// serveL4LB runs `l4lb serve` with cfg, written to dir/name.yaml, its log
// in logDir/name.log, and returns once the log says it started (every
// listener bound, its kernel paths attached), within 10 s. need is a line
// the log must then hold ("TCP listener forwarded in the kernel", say);
// "" needs none. env is added to the process's environment.
func serveL4LB(bin, dir, name, cfg, need string, env ...string) (pid int, stop func(), err error) {
	path := filepath.Join(dir, name+".yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return 0, nil, err
	}
	os.MkdirAll(logDir, 0o755)
	logPath := filepath.Join(logDir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return 0, nil, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, "serve", "--config", path, "--log-level", "info")
	cmd.Stderr = logf
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	if err := cmd.Start(); err != nil {
		return 0, nil, fmt.Errorf("starting l4lb (make build): %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop = func() {
		cmd.Process.Kill()
		<-exited
	}
	var log []byte
	for deadline := time.Now().Add(10 * time.Second); ; {
		log, _ = os.ReadFile(logPath)
		if strings.Contains(string(log), "l4lb started") {
			break
		}
		select {
		case <-exited:
			return 0, nil, fmt.Errorf("l4lb exited:\n%s", log)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return 0, nil, fmt.Errorf("l4lb did not start within 10 s:\n%s", log)
		}
	}
	if need != "" && !strings.Contains(string(log), need) {
		stop()
		return 0, nil, fmt.Errorf("l4lb's log lacks %q (the kernel path needs root):\n%s", need, log)
	}
	return cmd.Process.Pid, stop, nil
}

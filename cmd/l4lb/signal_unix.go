//go:build unix

package main

import (
	"fmt"
	"syscall"
)

// signalProcess sends the named signal (KILL, STOP, CONT) to pid.
func signalProcess(pid int, name string) error {
	sig := map[string]syscall.Signal{"KILL": syscall.SIGKILL, "STOP": syscall.SIGSTOP, "CONT": syscall.SIGCONT}[name]
	if err := syscall.Kill(pid, sig); err != nil {
		return fmt.Errorf("SIG%s to process %d: %w", name, pid, err)
	}
	return nil
}

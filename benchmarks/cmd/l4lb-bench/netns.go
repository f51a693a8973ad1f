package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
)

// insideEnv marks the copy of l4lb-bench that runs inside the namespace.
const insideEnv = "L4LB_BENCH_NETNS"

var portBase = flag.Int("port-base", 18000, "first of the ports the contenders listen on (offsets +53 to +913 from it)")

// port is a contender's listening port: an offset from -port-base.
func port(offset int) int { return *portBase + offset }

// runInOwnNetns runs this same command again inside a network namespace of
// its own, made for the run and deleted after it, so that the contenders'
// ports, the nftables rules and the kernel programs on lo never meet the
// host's. It returns false, having run nothing, when the run should stay on
// the host: asked to (-netns=false), already inside, or no way to make one
// (not root, no ip(8)); it says why on stderr.
func runInOwnNetns(want bool) (code int, ran bool) {
	if !want || os.Getenv(insideEnv) != "" {
		return 0, false
	}
	why := ""
	if os.Geteuid() != 0 {
		why = "not root"
	} else if _, err := exec.LookPath("ip"); err != nil {
		why = "no ip command (apt-get install iproute2)"
	}
	self, err := os.Executable()
	if err != nil {
		why = err.Error()
	}
	if why != "" {
		fmt.Fprintf(os.Stderr, "l4lb-bench: running on the host's loopback (%s)\n", why)
		return 0, false
	}
	name := fmt.Sprintf("l4lb-bench-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "l4lb-bench: running on the host's loopback (ip netns add: %v: %s)\n", err, out)
		return 0, false
	}
	defer exec.Command("ip", "netns", "delete", name).Run()
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "l4lb-bench: ip link set lo up in %s: %v: %s\n", name, err, out)
		return 1, true
	}
	fmt.Fprintf(os.Stderr, "l4lb-bench: running in network namespace %s (deleted at the end)\n", name)
	cmd := exec.Command("ip", append([]string{"netns", "exec", name, self}, os.Args[1:]...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), insideEnv+"="+name)
	// An interrupt reaches the inner run, which stops its contenders;
	// this one waits for it and then deletes the namespace.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "l4lb-bench:", err)
		return 1, true
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case s := <-sig:
			cmd.Process.Signal(s)
		case err := <-done:
			var exit *exec.ExitError
			if errors.As(err, &exit) {
				return exit.ExitCode(), true
			}
			if err != nil {
				fmt.Fprintln(os.Stderr, "l4lb-bench:", err)
				return 1, true
			}
			return 0, true
		}
	}
}

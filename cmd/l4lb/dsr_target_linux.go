//go:build linux

package main

import (
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/l4lb/l4lb/lb/dsr"
)

func runDSRTarget(cmd *cobra.Command, ifaces []string, vips []netip.Addr, guePort uint16) error {
	d, err := dsr.NewDecap(vips, guePort)
	if err != nil {
		return err
	}
	defer d.Close()
	for _, name := range ifaces {
		if err := d.Attach(name); err != nil {
			return err
		}
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	out := cmd.OutOrStdout()
	what := "IPIP"
	if guePort != 0 {
		what = fmt.Sprintf("IPIP and GUE (UDP port %d)", guePort)
	}
	fmt.Fprintf(out, "dsr-target: taking %s off packets to %v on %v\n", what, vips, ifaces)
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-sigs:
			n, failed, _ := d.Stats()
			fmt.Fprintf(out, "dsr-target: stopped; %d packets decapsulated, %d could not be\n", n, failed)
			return nil
		case <-t.C:
			n, failed, _ := d.Stats()
			fmt.Fprintf(out, "dsr-target: %d packets decapsulated, %d could not be\n", n, failed)
		}
	}
}

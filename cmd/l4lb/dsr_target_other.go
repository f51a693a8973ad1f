//go:build !linux

package main

import (
	"errors"
	"net/netip"

	"github.com/spf13/cobra"
)

func runDSRTarget(*cobra.Command, []string, []netip.Addr, uint16) error {
	return errors.New("dsr-target needs Linux: it runs a tc program")
}

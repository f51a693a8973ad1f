//go:build !linux

package tlsterm

import (
	"net"
	"time"
)

// waitHello waits for the ClientHello on Linux; elsewhere the handshake
// reads it, under its own deadline.
func waitHello(net.Conn, time.Time) error { return nil }

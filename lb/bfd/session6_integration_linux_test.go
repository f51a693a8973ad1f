//go:build integration

package bfd

import (
	"strings"
	"testing"

	"github.com/l4lb/l4lb/internal/netnstest"
)

// The sessions of TestSessionsOnLoopback over IPv6 (hop limit 255, read
// from the IPV6_HOPLIMIT control message), between two addresses on the
// loopback of a network namespace of the test's own: this host's own
// loopback has only ::1.
func TestSessionsOverIPv6(t *testing.T) {
	if netnstest.Inside("L4LB_BFD_NETNS") {
		testSessions(t, "2001:db8::1", "2001:db8::2")
		return
	}
	out := netnstest.Rerun(t, "L4LB_BFD_NETNS", "2001:db8::1/128", "2001:db8::2/128")
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "noticed") {
			t.Log(strings.TrimSpace(line))
		}
	}
}

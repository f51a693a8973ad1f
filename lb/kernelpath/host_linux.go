package kernelpath

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb/registry"
)

// What the kernel paths need to know of the host: its interfaces, its
// addresses, its forwarding sysctls, and the address DSR encapsulates from.

// ForwardingSysctl is the file that turns on forwarding for ip's family.
func ForwardingSysctl(ip netip.Addr) string {
	if ip.Unmap().Is4() {
		return "/proc/sys/net/ipv4/ip_forward"
	}
	return "/proc/sys/net/ipv6/conf/all/forwarding"
}

// warnAcceptLocal warns when an interface would drop the packets direct
// server return encapsulates: their outer source is this host's own
// address, which the stack takes in only with accept_local.
func warnAcceptLocal(log *zap.Logger, ifaces []string) {
	if readSysctl("/proc/sys/net/ipv4/conf/all/accept_local") == "1" {
		return
	}
	for _, name := range ifaces {
		if path := "/proc/sys/net/ipv4/conf/" + name + "/accept_local"; readSysctl(path) == "0" {
			log.Warn("direct server return needs accept_local: the encapsulated packets carry this host's own address as their source", zap.String("sysctl", path))
		}
	}
}

func readSysctl(path string) string {
	b, _ := os.ReadFile(path)
	return strings.TrimSpace(string(b))
}

// IsLocal reports whether ip is loopback or an address of this host.
func IsLocal(ip netip.Addr) bool {
	ip = ip.Unmap()
	if ip.IsLoopback() {
		return true
	}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if h, ok := netip.AddrFromSlice(n.IP); ok && h.Unmap() == ip {
				return true
			}
		}
	}
	return false
}

// UpInterfaces lists the interfaces that are up and carry Ethernet framing
// (loopback included), which the programs parse.
func UpInterfaces() []string {
	ifs, _ := net.Interfaces()
	var out []string
	for _, ifi := range ifs {
		if ifi.Flags&net.FlagUp == 0 {
			continue
		}
		b, err := os.ReadFile("/sys/class/net/" + ifi.Name + "/type")
		if t := strings.TrimSpace(string(b)); err == nil && (t == "1" || t == "772") { // ARPHRD_ETHER, ARPHRD_LOOPBACK
			out = append(out, ifi.Name)
		}
	}
	return out
}

// dsrSource is the address this host sends from towards a DSR group's
// first target: the outer source of the encapsulated packets, which the
// targets' routes must accept (their replies go to the clients, never to
// it).
func dsrSource(g *registry.Group) (netip.Addr, error) {
	ts := g.Config().Targets
	if len(ts) == 0 {
		return netip.Addr{}, fmt.Errorf("kernel path: target group %s forwards by dsr but has no targets to find a source address by", g.Config().Name)
	}
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(ts[0].Address))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("kernel path: no route to %s for direct server return: %w", ts[0].Address, err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap(), nil
}

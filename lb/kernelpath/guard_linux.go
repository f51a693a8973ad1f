package kernelpath

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"syscall"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// While l4lb runs, a DSR front's packets never reach this host's stack: the
// ingress program sends them on to the targets. When l4lb dies (a crash, a
// SIGKILL), its programs go with it, but the routers keep sending the
// front's flows here until BGP or BFD tells them: the stack would answer
// each packet with a reset (TCP) or a port unreachable (UDP), and end flows
// whose targets are alive and which another node would carry on.
//
// The guard is a pair of rules per DSR front in the nftables table
// "inet l4lb", which outlive the process: the front's packets pass when a
// socket holds the address (l4lb's listener: the packets the programs hand
// on, such as resets of no flow), and are dropped when none does. A client
// then retransmits, and the retransmission reaches the node the routers
// moved the flow to, which forwards it to the same target.
//
// Each rule's comment names its front and the process that wrote it, so a
// process removes its own rules when it stops, and a new one (an upgrade,
// a restart after a crash) replaces the rules of the fronts it takes over
// and those left by processes that are gone.

const (
	guardTable   = "l4lb"
	guardChain   = "dsr_guard"
	guardComment = "l4lb dsr guard"
)

// guard is the rules one Forwarder wrote.
type guard struct {
	proto uint8
	pid   int
}

// guardKey names a front's rules: protocol and address.
func guardKey(proto uint8, vip netip.AddrPort) string {
	return strings.ToLower(protoName(proto)) + " " + vip.String()
}

// installGuard writes the guard's rules for the DSR fronts among fronts,
// and removes older rules for the same fronts and those of processes that
// are gone, in one transaction, as process pid (this one, but for tests).
// With no DSR front it writes nothing, and only removes the rules of
// processes that are gone, if there is a guard.
func installGuard(fronts []Front, proto uint8, pid int) (*guard, error) {
	var keys = map[string]netip.AddrPort{}
	for _, f := range fronts {
		if f.DSR {
			keys[guardKey(proto, f.VIP)] = f.VIP
		}
	}
	c, err := nftables.New()
	switch {
	case len(keys) == 0:
		if err == nil {
			pruneGuard(c)
		}
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("nftables: %w", err)
	}
	t, ch := guardObjects(c)
	if err := c.Flush(); err != nil {
		return nil, fmt.Errorf("nftables: creating table inet %s: %w", guardTable, err)
	}
	g := &guard{proto: proto, pid: pid}
	if err := deleteRules(c, func(key string, pid int) bool {
		_, ours := keys[key]
		return ours || !alive(pid)
	}); err != nil {
		return nil, err
	}
	for key, vip := range keys {
		comment := userdata.AppendString(nil, userdata.TypeComment, fmt.Sprintf("%s %s pid %d", guardComment, key, g.pid))
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: guardExprs(vip, proto, true), UserData: comment})
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: guardExprs(vip, proto, false), UserData: comment})
	}
	if err := c.Flush(); err != nil {
		return nil, fmt.Errorf("nftables: writing the rules: %w", err)
	}
	return g, nil
}

// pruneGuard removes the rules of processes that are gone, quietly: there
// may be no guard, or no nf_tables, and nothing here needs one.
func pruneGuard(c *nftables.Conn) {
	if deleteRules(c, func(_ string, pid int) bool { return !alive(pid) }) == nil {
		c.Flush()
	}
}

// remove deletes g's rules. The table and its chain stay, empty once the
// last process's rules go: deleting a table deletes every rule in it, and
// another process may write its rules between a look and the delete.
func (g *guard) remove() error {
	if g == nil {
		return nil
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	prefix := strings.ToLower(protoName(g.proto)) + " "
	if err := deleteRules(c, func(key string, pid int) bool { return pid == g.pid && strings.HasPrefix(key, prefix) }); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: removing the rules: %w", err)
	}
	return nil
}

// deleteRules queues the deletion of the guard's rules whose key and
// process match; the caller flushes.
func deleteRules(c *nftables.Conn, match func(key string, pid int) bool) error {
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: guardTable}
	rules, err := c.GetRules(t, &nftables.Chain{Table: t, Name: guardChain})
	if err != nil {
		return fmt.Errorf("nftables: listing chain %s: %w", guardChain, err)
	}
	for _, r := range rules {
		if key, pid, ok := parseGuardComment(r.UserData); ok && match(key, pid) {
			if err := c.DelRule(r); err != nil {
				return fmt.Errorf("nftables: %w", err)
			}
		}
	}
	return nil
}

// guardObjects queues the table and its chain, hooked where packets are
// delivered to this host, ahead of the usual filter rules.
func guardObjects(c *nftables.Conn) (*nftables.Table, *nftables.Chain) {
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: guardTable})
	accept := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{
		Name: guardChain, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityMangle, Policy: &accept,
	})
	return t, ch
}

// guardExprs matches packets of proto to vip, then (held) a socket that
// holds the address, and accepts them; or (not held) drops them. In nft's
// words: meta nfproto ipv4 ip daddr VIP meta l4proto tcp th dport PORT
// socket transparent 0 accept, or ... counter drop.
func guardExprs(vip netip.AddrPort, proto uint8, held bool) []expr.Any {
	family, off := byte(unix.NFPROTO_IPV4), uint32(16)
	if vip.Addr().Is6() {
		family, off = unix.NFPROTO_IPV6, 24
	}
	addr := vip.Addr().AsSlice()
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{family}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(len(addr))},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, vip.Port())},
	}
	if !held {
		return append(e, &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop})
	}
	// The lookup ends the rule when no socket holds the address. l4lb's
	// listeners are not transparent (its sockets towards targets are, but
	// they hold clients' addresses, not the VIP's).
	return append(e, &expr.Socket{Key: expr.SocketKeyTransparent, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0}},
		&expr.Verdict{Kind: expr.VerdictAccept})
}

// parseGuardComment reads a guard rule's comment: its key and the process
// that wrote it.
func parseGuardComment(ud []byte) (key string, pid int, ok bool) {
	s, found := userdata.GetString(ud, userdata.TypeComment)
	if !found || !strings.HasPrefix(s, guardComment+" ") {
		return "", 0, false
	}
	f := strings.Fields(strings.TrimPrefix(s, guardComment+" "))
	if len(f) != 4 || f[2] != "pid" {
		return "", 0, false
	}
	pid, err := strconv.Atoi(f[3])
	if err != nil {
		return "", 0, false
	}
	return f[0] + " " + f[1], pid, true
}

// alive says whether process pid exists.
func alive(pid int) bool {
	return syscall.Kill(pid, 0) != syscall.ESRCH
}

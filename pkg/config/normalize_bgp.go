package config

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// bgp normalizes the bgp section; nil when there is none.
func (n *normalizer) bgp(cfg *Config) *BGP {
	r := n.raw.BGP
	if r == nil {
		return nil
	}
	b := &BGP{}
	switch {
	case r.LocalAS == nil:
		n.errs.add("bgp.local_as", "required")
	case *r.LocalAS < 1 || int64(*r.LocalAS) > math.MaxUint32:
		n.errs.add("bgp.local_as", "%d is outside 1-%d", *r.LocalAS, uint32(math.MaxUint32))
	default:
		b.LocalAS = uint32(*r.LocalAS)
	}
	if r.RouterID == "" {
		n.errs.add("bgp.router_id", "required (an IPv4 address, usually one of the node's own)")
	} else if ip, err := netip.ParseAddr(r.RouterID); err != nil || !ip.Is4() {
		n.errs.add("bgp.router_id", "want an IPv4 address, got %q", r.RouterID)
	} else {
		b.RouterID = ip
	}
	if p := r.ListenPort; p != nil {
		if *p < 0 || *p > 65535 {
			n.errs.add("bgp.listen_port", "%d is outside 0-65535 (0: connect out only)", *p)
		}
		b.ListenPort = *p
	}
	if len(r.Peers) == 0 {
		n.errs.add("bgp.peers", "at least one peer is required")
	}
	for i := range r.Peers {
		p := n.bgpPeer(fmt.Sprintf("bgp.peers[%d]", i), &r.Peers[i])
		if p.Address.IsValid() && slices.ContainsFunc(b.Peers, func(o BGPPeer) bool { return o.Address == p.Address }) {
			n.errs.add(fmt.Sprintf("bgp.peers[%d].address", i), "%s is given twice", p.Address)
		}
		// BFD receives on port 3784 (4784 multihop) of the local
		// address, or of every address of the family: one peer cannot
		// have the second while another has the first.
		if p.BFD.Enabled() && p.Address.IsValid() && slices.ContainsFunc(b.Peers, func(o BGPPeer) bool {
			return o.BFD.Enabled() && o.Address.Is4() == p.Address.Is4() && (o.Multihop > 0) == (p.Multihop > 0) &&
				o.LocalAddress.IsValid() != p.LocalAddress.IsValid()
		}) {
			n.errs.add(fmt.Sprintf("bgp.peers[%d].local_address", i), "peers of one address family that run BFD, single hop or multihop, either all set local_address or none does (BFD listens on port 3784, or 4784 multihop, of it or of every address)")
		}
		b.Peers = append(b.Peers, p)
	}
	if len(r.Announce) == 0 {
		n.errs.add("bgp.announce", "name at least one zone and the prefixes it announces")
	}
	for _, zone := range sortedKeys(r.Announce) {
		path := "bgp.announce." + zone
		if !slices.ContainsFunc(cfg.Zones, func(z Zone) bool { return z.Name == zone }) {
			n.errs.add(path, "no zone %q under zones (a zone's health decides whether its prefixes are announced)", zone)
		}
		z := BGPZone{Zone: zone}
		if len(r.Announce[zone]) == 0 {
			n.errs.add(path, "no prefixes")
		}
		for i, s := range r.Announce[zone] {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				n.errs.add(fmt.Sprintf("%s[%d]", path, i), "want a prefix such as 198.18.10.1/32, got %q", s)
				continue
			}
			if p != p.Masked() {
				n.errs.add(fmt.Sprintf("%s[%d]", path, i), "%s has bits set past its length (%s?)", p, p.Masked())
				continue
			}
			z.Prefixes = append(z.Prefixes, p)
		}
		z.Communities = n.communities("bgp.communities."+zone, r.Communities[zone])
		b.Announce = append(b.Announce, z)
	}
	for _, zone := range sortedKeys(r.Communities) {
		if _, ok := r.Announce[zone]; !ok {
			n.errs.add("bgp.communities."+zone, "zone %q announces nothing (see bgp.announce)", zone)
		}
	}
	b.WithdrawGrace = n.duration("bgp.withdraw_grace", r.WithdrawGrace, DefaultBGPWithdrawGrace)
	return b
}

func (n *normalizer) bgpPeer(path string, r *RawBGPPeer) BGPPeer {
	p := BGPPeer{Port: DefaultBGPPort, Password: r.Password}
	if ip, err := netip.ParseAddr(r.Address); err != nil {
		n.errs.add(path+".address", "want an IP address, got %q", r.Address)
	} else {
		p.Address = ip
	}
	switch {
	case r.AS == nil:
		n.errs.add(path+".as", "required")
	case *r.AS < 1 || int64(*r.AS) > math.MaxUint32:
		n.errs.add(path+".as", "%d is outside 1-%d", *r.AS, uint32(math.MaxUint32))
	default:
		p.AS = uint32(*r.AS)
	}
	if r.Port != nil {
		if *r.Port < 1 || *r.Port > 65535 {
			n.errs.add(path+".port", "%d is outside 1-65535", *r.Port)
		} else {
			p.Port = uint16(*r.Port)
		}
	}
	p.HoldTime = n.duration(path+".hold_time", r.HoldTime, DefaultBGPHoldTime)
	if p.HoldTime < 3*time.Second || p.HoldTime > 65535*time.Second || p.HoldTime%time.Second != 0 {
		n.errs.add(path+".hold_time", "%s: BGP hold times are whole seconds from 3s to 65535s", p.HoldTime)
	}
	if r.LocalAddress != "" {
		ip, err := netip.ParseAddr(r.LocalAddress)
		if err != nil {
			n.errs.add(path+".local_address", "want an IP address, got %q", r.LocalAddress)
		}
		p.LocalAddress = ip
	}
	if r.Multihop != nil {
		if *r.Multihop < 0 || *r.Multihop > 255 {
			n.errs.add(path+".multihop", "%d is outside 0-255 (the most hops to the peer; 0: directly connected)", *r.Multihop)
		} else {
			p.Multihop = uint8(*r.Multihop)
		}
	}
	if len(p.Password) > 80 {
		n.errs.add(path+".password", "longer than 80 bytes (the TCP MD5 key limit)")
	}
	if r.BFD != nil {
		p.BFD = n.bfd(path+".bfd", r.BFD)
	}
	return p
}

func (n *normalizer) bfd(path string, r *RawBFD) BFD {
	b := BFD{Interval: n.duration(path+".interval", r.Interval, DefaultBFDInterval), Multiplier: DefaultBFDMultiplier}
	if b.Interval < 10*time.Millisecond || b.Interval > time.Minute {
		n.errs.add(path+".interval", "%s is outside 10ms-1m", b.Interval)
	}
	if r.Multiplier != nil {
		if *r.Multiplier < 1 || *r.Multiplier > 255 {
			n.errs.add(path+".multiplier", "%d is outside 1-255", *r.Multiplier)
		} else {
			b.Multiplier = uint8(*r.Multiplier)
		}
	}
	if a := r.Authentication; a != nil {
		ap := path + ".authentication"
		t, err := parseEnum(bfdAuthNames, a.Type)
		if err != nil {
			n.errs.add(ap+".type", "%v", err)
		}
		b.Auth.Type = BFDAuthType(t)
		if b.Auth.Type != BFDAuthNone {
			if len(a.Password) == 0 || len(a.Password) > 20 {
				n.errs.add(ap+".password", "a SHA1 key is 1 to 20 bytes, not %d", len(a.Password))
			}
			b.Auth.Password = a.Password
			if a.KeyID != nil {
				if *a.KeyID < 0 || *a.KeyID > 255 {
					n.errs.add(ap+".key_id", "%d is outside 0-255", *a.KeyID)
				} else {
					b.Auth.KeyID = uint8(*a.KeyID)
				}
			}
		}
	}
	return b
}

// communities parses standard communities written AS:value.
func (n *fields) communities(path string, in []string) []uint32 {
	var out []uint32
	for i, s := range in {
		as, val, ok := strings.Cut(s, ":")
		a, err1 := strconv.ParseUint(as, 10, 16)
		v, err2 := strconv.ParseUint(val, 10, 16)
		if !ok || err1 != nil || err2 != nil {
			n.errs.add(fmt.Sprintf("%s[%d]", path, i), "want a community written AS:value, each 0-65535, got %q", s)
			continue
		}
		out = append(out, uint32(a)<<16|uint32(v))
	}
	return out
}

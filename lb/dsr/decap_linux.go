package dsr

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Decap is the decapsulation program, loaded, with its VIPs.
type Decap struct {
	objs  decapBPFObjects
	mu    sync.Mutex
	links []link.Link
}

// NewDecap loads the program for vips. It takes IPIP and IPv6 in IPv6 in,
// and with a guePort other than 0, GUE to that UDP port too (a target
// group's gue_port).
func NewDecap(vips []netip.Addr, guePort uint16) (*Decap, error) {
	if len(vips) == 0 {
		return nil, errors.New("dsr: no VIP to take packets for")
	}
	spec, err := loadDecapBPF()
	if err != nil {
		return nil, fmt.Errorf("dsr: %w", err)
	}
	// The program compares it with the packet's bytes: network order.
	if err := spec.Variables["cfg_gue_port"].Set([2]byte{byte(guePort >> 8), byte(guePort)}); err != nil {
		return nil, fmt.Errorf("dsr: %w", err)
	}
	d := &Decap{}
	if err := spec.LoadAndAssign(&d.objs, nil); err != nil {
		return nil, fmt.Errorf("dsr: loading the decapsulation program (needs root, or CAP_BPF and CAP_NET_ADMIN): %w", err)
	}
	for _, v := range vips {
		v = v.Unmap()
		var err error
		if v.Is4() {
			err = d.objs.L4lbVips.Put(v.As4(), uint8(1))
		} else {
			err = d.objs.L4lbVips6.Put(v.As16(), uint8(1))
		}
		if err != nil {
			d.Close()
			return nil, fmt.Errorf("dsr: %w", err)
		}
	}
	return d, nil
}

// Attach runs the program on ingress of interface ifname.
func (d *Decap) Attach(ifname string) error {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return fmt.Errorf("dsr: %w", err)
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifi.Index, Program: d.objs.L4lbDecap, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return fmt.Errorf("dsr: attaching to %s: %w", ifname, err)
	}
	d.mu.Lock()
	d.links = append(d.links, l)
	d.mu.Unlock()
	return nil
}

// Stats are the packets decapsulated, and those that could not be.
func (d *Decap) Stats() (decapsulated, failed uint64, err error) {
	var out [2]uint64
	for i := range out {
		var per [][8]byte
		if err := d.objs.L4lbDecapStats.Lookup(uint32(i), &per); err != nil {
			return 0, 0, fmt.Errorf("dsr: %w", err)
		}
		for _, v := range per {
			out[i] += binary.NativeEndian.Uint64(v[:])
		}
	}
	return out[0], out[1], nil
}

// Close detaches the program everywhere and unloads it.
func (d *Decap) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for _, l := range d.links {
		errs = append(errs, l.Close())
	}
	d.links = nil
	errs = append(errs, d.objs.Close())
	return errors.Join(errs...)
}

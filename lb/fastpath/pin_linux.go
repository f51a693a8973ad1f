package fastpath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Pinning keeps the kernel path forwarding when l4lb dies: the links that
// run the programs, and the maps they read, are pinned under a directory
// of the BPF filesystem (Options.Pin), so the kernel keeps them while no
// process holds them. A process that starts with pins there adopts them:
// it loads its programs on the pinned flow maps (flows keep their
// targets), writes fresh tables, and moves the pinned links to its
// programs in one step each, so no second set of links runs beside the
// first. A clean stop removes the pins, and the programs detach.
//
// The directory holds one pin per link (link_in_IFACE, link_out_IFACE),
// one per map (by the map's name), and "owner": a one-entry array map
// with the owning process's PID, which a process that was handed the
// pins (an upgrade) checks before removing them.

// BPFFSMagic is the BPF filesystem's statfs magic.
const bpffsMagic = 0xcafe4a11

// MountBPFFS makes sure dir is on a BPF filesystem, mounting one at
// /sys/fs/bpf when none is (which needs CAP_SYS_ADMIN), and creates dir.
func MountBPFFS(dir string) error {
	root := "/sys/fs/bpf"
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil || uint32(st.Type) != bpffsMagic {
		if err := os.MkdirAll(root, 0o755); err != nil {
			return fmt.Errorf("fastpath: %s: %w", root, err)
		}
		if err := unix.Mount("bpf", root, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("fastpath: no BPF filesystem at %s, and mounting one failed: %w", root, err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("fastpath: %w", err)
	}
	if err := unix.Statfs(dir, &st); err != nil || uint32(st.Type) != bpffsMagic {
		return fmt.Errorf("fastpath: %s is not on a BPF filesystem", dir)
	}
	return nil
}

// flowMaps loads the flow maps of names pinned in the directory that fit
// spec, for New to load its programs on, and says why any was not taken.
func (pn *pins) flowMaps(spec *ebpf.CollectionSpec, names []string, into map[string]*ebpf.Map) []error {
	var errs []error
	for _, name := range names {
		m, err := ebpf.LoadPinnedMap(filepath.Join(pn.dir, name), nil)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("fastpath: pinned %s: %w", name, err))
			}
			continue
		}
		if err := spec.Maps[name].Compatible(m); err != nil {
			m.Close()
			errs = append(errs, fmt.Errorf("fastpath: pinned %s is not used, its flows end: %w", name, err))
			continue
		}
		into[name] = m
		pn.AdoptedPins = true
	}
	return errs
}

// attachPinned runs prog at (ifindex, at) through the link pinned under
// name when there is one (moving it to prog), or a new link pinned there.
func (pn *pins) attachPinned(name string, ifindex int, prog *ebpf.Program, at ebpf.AttachType) (link.Link, error) {
	path := filepath.Join(pn.dir, name)
	if l, err := link.LoadPinnedLink(path, nil); err == nil {
		if err := l.Update(prog); err == nil {
			pn.AdoptedLinks++
			return l, nil
		}
		// A link that cannot take the program (another kind of link, or
		// an interface that went away): replace it.
		l.Unpin()
		l.Close()
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: at})
	if err != nil {
		return nil, err
	}
	if err := l.Pin(path); err != nil {
		// Forward all the same, only not past this process.
		pn.pinErr = errors.Join(pn.pinErr, fmt.Errorf("pinning %s: %w", path, err))
	}
	return l, nil
}

// PinMaps pins every map of the Path in Options.Pin and records this
// process as the pins' owner. Links attached by an earlier process that
// this one did not take (an interface no longer configured) are removed:
// they would run old programs on old tables.
func (p *Path) PinMaps() error {
	dir := p.opts.Pin
	if dir == "" {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pinErr != nil {
		return p.pinErr
	}
	for name, m := range p.namedMaps() {
		path := filepath.Join(dir, name)
		os.Remove(path) // an earlier process's map: its programs are gone
		if err := m.Pin(path); err != nil {
			return fmt.Errorf("fastpath: pinning %s: %w", name, err)
		}
	}
	owner, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		return fmt.Errorf("fastpath: %w", err)
	}
	defer owner.Close()
	var v [8]byte
	binary.LittleEndian.PutUint64(v[:], uint64(os.Getpid()))
	if err := owner.Put(uint32(0), v[:]); err != nil {
		return fmt.Errorf("fastpath: %w", err)
	}
	path := filepath.Join(dir, "owner")
	os.Remove(path)
	if err := owner.Pin(path); err != nil {
		return fmt.Errorf("fastpath: pinning the owner: %w", err)
	}
	mine := map[string]bool{}
	for _, l := range p.links {
		if info, err := l.Info(); err == nil {
			mine[fmt.Sprint(info.ID)] = true
		}
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), "link_") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			continue
		}
		if info, err := l.Info(); err == nil && !mine[fmt.Sprint(info.ID)] {
			os.Remove(path)
		}
		l.Close()
	}
	p.pinned = true
	return nil
}

// namedMaps are the Path's maps by the names they are pinned under.
func (p *Path) namedMaps() map[string]*ebpf.Map {
	ms := map[string]*ebpf.Map{"l4lb_stats": p.stats, "l4lb_scratch": p.scratch, "l4lb_ports": p.ports}
	for _, fp := range p.fams {
		n := fp.f.name
		for k, m := range map[string]*ebpf.Map{"svcs": fp.services, "tables": fp.tables, "flows": fp.flows, "syn": fp.syn,
			"targets": fp.targets, "allow": fp.allow, "deny": fp.deny, "quic": fp.quic} {
			ms["l4lb_"+k+"_"+n] = m
		}
	}
	return ms
}

// PinOwner reads the PID recorded as the owner of the pins in dir; 0 if
// there are none.
func PinOwner(dir string) (int, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "owner"), nil)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, nil
		}
		return 0, err
	}
	defer m.Close()
	var v [8]byte
	if err := m.Lookup(uint32(0), v[:]); err != nil {
		return 0, err
	}
	return int(binary.LittleEndian.Uint64(v[:])), nil
}

// Unpin removes the pins in dir: the links detach once no process holds
// them, and the maps go with the programs.
func Unpin(dir string) error {
	return os.RemoveAll(dir)
}

// unpinIfOwner removes this Path's pins if this process still owns them:
// after an upgrade the new process does, and they stay for it.
func (pn *pins) unpinIfOwner() {
	if !pn.pinned {
		return
	}
	if pid, err := PinOwner(pn.dir); err == nil && pid == os.Getpid() {
		Unpin(pn.dir)
		os.Remove(filepath.Dir(pn.dir)) // the instance's, once its last path is gone
	}
}

package fastpath

import (
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/l4lb/l4lb/pkg/flowhash"
)

// handedOver names the maps that hold flows, which a binary upgrade hands
// to the new process: the flow maps, and for TCP the embryonic ones too.
func handedOver(proto uint8) []string {
	names := []string{"l4lb_flows_v4", "l4lb_flows_v6"}
	if proto == flowhash.ProtoTCP {
		names = append(names, "l4lb_syn_v4", "l4lb_syn_v6")
	}
	return names
}

// handoverName names a map among the descriptors of an upgrade. UDP's keep
// the names of the releases that had no TCP path.
func handoverName(proto uint8, m string) string {
	if proto == flowhash.ProtoTCP {
		return "fastpath/tcp/" + m
	}
	return "fastpath/flows_" + m[len("l4lb_flows_"):]
}

// inheritedMap opens a handed-over map, if its shape is what spec wants.
func inheritedMap(f *os.File, spec *ebpf.MapSpec) (*ebpf.Map, error) {
	if f == nil {
		return nil, nil
	}
	defer f.Close()
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("fastpath: %s: %w", f.Name(), err)
	}
	m, err := ebpf.NewMapFromFD(fd)
	if err != nil {
		return nil, fmt.Errorf("fastpath: %s: %w", f.Name(), err)
	}
	if err := spec.Compatible(m); err != nil {
		m.Close()
		return nil, fmt.Errorf("fastpath: %s is not used, its flows end: %w", f.Name(), err)
	}
	return m, nil
}

// FlowFiles adds a duplicate of each flow map's descriptor, by name, for a
// new process to load its programs with (Options.Inherit).
func (p *Path) FlowFiles(add func(name string, f *os.File)) error {
	maps := map[string]*ebpf.Map{
		"l4lb_flows_v4": p.fams[0].flows, "l4lb_flows_v6": p.fams[1].flows,
		"l4lb_syn_v4": p.fams[0].syn, "l4lb_syn_v6": p.fams[1].syn,
	}
	for _, name := range handedOver(p.opts.Protocol) {
		fd, err := unix.FcntlInt(uintptr(maps[name].FD()), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("fastpath: %w", err)
		}
		n := handoverName(p.opts.Protocol, name)
		add(n, os.NewFile(uintptr(fd), n))
	}
	return nil
}

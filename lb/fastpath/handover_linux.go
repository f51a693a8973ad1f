package fastpath

import (
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// flowFile names a family's flow map among the descriptors of an upgrade.
func flowFile(f family) string { return "fastpath/flows_" + f.name }

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
	for _, fp := range p.fams {
		fd, err := unix.FcntlInt(uintptr(fp.flows.FD()), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("fastpath: %w", err)
		}
		add(flowFile(fp.f), os.NewFile(uintptr(fd), flowFile(fp.f)))
	}
	return nil
}

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/l4lb/l4lb/lb/fastpath"
)

// pinnedPath is one kernel path's pins, as `l4lb kernel status` shows them.
type pinnedPath struct {
	Instance string   `json:"instance"`
	Protocol string   `json:"protocol"`
	Dir      string   `json:"dir"`
	OwnerPID int      `json:"owner_pid"`
	Running  bool     `json:"owner_running"`
	Links    []string `json:"links"`
	Maps     int      `json:"maps"`
}

// pinnedPaths reads every instance's pins under bpffs.
func pinnedPaths(bpffs string) ([]pinnedPath, error) {
	instances, err := os.ReadDir(bpffs)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []pinnedPath
	for _, in := range instances {
		if !in.IsDir() {
			continue
		}
		protos, _ := os.ReadDir(filepath.Join(bpffs, in.Name()))
		for _, pr := range protos {
			dir := filepath.Join(bpffs, in.Name(), pr.Name())
			p := pinnedPath{Instance: in.Name(), Protocol: strings.ToUpper(pr.Name()), Dir: dir, Links: []string{}}
			p.OwnerPID, err = fastpath.PinOwner(dir)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", dir, err)
			}
			p.Running = p.OwnerPID > 0 && syscall.Kill(p.OwnerPID, 0) == nil
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				switch {
				case strings.HasPrefix(e.Name(), "link_"):
					p.Links = append(p.Links, strings.TrimPrefix(e.Name(), "link_"))
				case e.Name() != "owner":
					p.Maps++
				}
			}
			sort.Strings(p.Links)
			out = append(out, p)
		}
	}
	return out, nil
}

func kernelStatus(w io.Writer, bpffs, output string) error {
	ps, err := pinnedPaths(bpffs)
	if err != nil {
		return err
	}
	switch output {
	case "json":
		if ps == nil {
			ps = []pinnedPath{}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(ps)
	case "table":
	default:
		return usageError{fmt.Errorf("--output: table or json, not %q", output)}
	}
	if len(ps) == 0 {
		fmt.Fprintf(w, "nothing pinned under %s\n", bpffs)
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INSTANCE\tPROTOCOL\tOWNER\tLINKS (side_interface)\tMAPS")
	for _, p := range ps {
		owner := fmt.Sprintf("%d (running)", p.OwnerPID)
		if !p.Running {
			owner = fmt.Sprintf("%d (gone: orphan, forwarding with its last tables)", p.OwnerPID)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\n", p.Instance, p.Protocol, owner, strings.Join(p.Links, " "), p.Maps)
	}
	return tw.Flush()
}

func kernelDetach(w io.Writer, bpffs, instance string, force bool) error {
	if instance == "" || strings.ContainsAny(instance, "/") || instance == "." || instance == ".." {
		return usageError{fmt.Errorf("%q is not an instance name (l4lb kernel status lists them)", instance)}
	}
	ps, err := pinnedPaths(bpffs)
	if err != nil {
		return err
	}
	found := false
	for _, p := range ps {
		if p.Instance != instance {
			continue
		}
		found = true
		if p.Running && !force {
			return fmt.Errorf("instance %s: its owner, PID %d, runs; stop it (its pins go with a clean stop) or use --force", instance, p.OwnerPID)
		}
	}
	if !found {
		return fmt.Errorf("instance %s: nothing pinned under %s", instance, filepath.Join(bpffs, instance))
	}
	if err := fastpath.Unpin(filepath.Join(bpffs, instance)); err != nil {
		return err
	}
	fmt.Fprintf(w, "detached %s: its programs stop once nothing else holds them\n", instance)
	return nil
}

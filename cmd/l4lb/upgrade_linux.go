//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/l4lb/l4lb/lb"
	"github.com/l4lb/l4lb/lb/events"
	"github.com/l4lb/l4lb/lb/listen"
	"github.com/l4lb/l4lb/lb/registry"
	"github.com/l4lb/l4lb/lb/zoneshift"
	"github.com/l4lb/l4lb/pkg/api"
	"github.com/l4lb/l4lb/pkg/upgrade"
)

// The state a binary upgrade hands over, by descriptor name: the registry's
// targets and states, and the TLS session-ticket keys (so clients resume
// their sessions on the new process).
const (
	stateFile  = "state/targets.json"
	keysFile   = "state/tls-ticket-keys.json"
	shiftsFile = "state/zonal-shifts.json"
	eventsFile = "state/events.json"
)

// handoff is this process's side of binary upgrades: what it inherited when
// it was started by one, and how it starts its successor.
type handoff struct {
	log   *zap.Logger
	exe   string   // the binary's path, read at start: an upgrade starts what is there then
	args  []string // this process's arguments, which the successor gets too
	child *upgrade.Child
}

func newHandoff(log *zap.Logger) (*handoff, error) {
	child, err := upgrade.Inherited()
	if err != nil {
		return nil, err
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("finding this binary's path for upgrades: %w", err)
	}
	if child != nil {
		log.Info("started by a binary upgrade: taking over the listening sockets")
	}
	return &handoff{log: log, exe: exe, args: os.Args[1:], child: child}, nil
}

// inherited has the sockets handed over by the previous process, or is nil.
func (h *handoff) inherited() listen.Inherit {
	if h.child == nil {
		return nil
	}
	return h.child
}

// savedTargets reads the targets and states the previous process saved.
func (h *handoff) savedTargets() []registry.Saved {
	var saved []registry.Saved
	h.read(stateFile, "targets", &saved)
	return saved
}

// savedEvents reads the previous process's recent events.
func (h *handoff) savedEvents() []events.Event {
	var evs []events.Event
	h.read(eventsFile, "events", &evs)
	return evs
}

// savedShifts reads the zonal shifts the previous process had in force.
func (h *handoff) savedShifts() []zoneshift.Shift {
	var shifts []zoneshift.Shift
	h.read(shiftsFile, "zonal shifts", &shifts)
	return shifts
}

// savedTicketKeys reads the TLS session-ticket keys the previous process
// used.
func (h *handoff) savedTicketKeys() [][32]byte {
	var keys [][32]byte
	h.read(keysFile, "TLS session-ticket keys", &keys)
	return keys
}

// read decodes the handed-over state named name into v; what cannot be
// read is logged and left out.
func (h *handoff) read(name, what string, v any) {
	f := h.child.Take(name)
	if f == nil {
		return
	}
	defer f.Close()
	if err := json.NewDecoder(io.LimitReader(f, 64<<20)).Decode(v); err != nil {
		h.log.Warn("the previous process's "+what+" could not be read; starting without them", zap.Error(err))
	}
}

// ready says l4lb serves: to the previous process, if there is one (which
// then drains), and to systemd, whose main PID this process becomes.
//
// systemd hears first, so it knows the new main PID before the previous
// process can hear it, stop and exit.
func (h *handoff) ready() {
	if err := upgrade.Notify(fmt.Sprintf("READY=1\nMAINPID=%d", os.Getpid())); err != nil {
		h.log.Warn("sd_notify", zap.Error(err))
	}
	if err := h.child.Ready(); err != nil {
		h.log.Error("telling the previous process we are ready", zap.Error(err))
	}
}

// run starts the binary again with every listening socket, the admin API's
// socket and the registry's targets, and waits until it serves. On success
// this process stops answering the admin API and is to drain; on failure
// nothing has changed and this process serves on.
func (h *handoff) run(srv *lb.Server, adm *adminServer) (api.Upgrade, error) {
	files := map[string]*os.File{}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	add := func(name string, f *os.File) { files[name] = f }
	if err := srv.Files(add); err != nil {
		return api.Upgrade{}, fmt.Errorf("handing over the listeners: %w", err)
	}
	if err := adm.files(add); err != nil {
		return api.Upgrade{}, fmt.Errorf("handing over the admin API: %w", err)
	}
	for name, v := range map[string]any{stateFile: srv.Registry.Save(), keysFile: srv.TicketKeys(), shiftsFile: srv.ZoneShifts.List(), eventsFile: srv.Events.Since(0, time.Time{})} {
		f, err := savedFile(v)
		if err != nil {
			return api.Upgrade{}, err
		}
		add(name, f)
	}
	h.log.Info("starting the new binary", zap.String("path", h.exe), zap.Int("descriptors", len(files)))
	pid, err := upgrade.Start(upgrade.Options{Path: h.exe, Args: h.args}, files)
	if err != nil {
		return api.Upgrade{}, err
	}
	h.log.Info("the new process serves; this one drains", zap.Int("new_pid", pid))
	srv.ReleaseKernel()
	if err := upgrade.Notify(fmt.Sprintf("MAINPID=%d", pid)); err != nil {
		h.log.Warn("sd_notify", zap.Error(err))
	}
	adm.release()
	return api.Upgrade{OldPID: os.Getpid(), NewPID: pid}, nil
}

// savedFile writes state, as JSON, into an anonymous in-memory file.
func savedFile(state any) (*os.File, error) {
	fd, err := unix.MemfdCreate("l4lb-state", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("saving the state: %w", err)
	}
	f := os.NewFile(uintptr(fd), "l4lb-state")
	if err := json.NewEncoder(f).Encode(state); err != nil {
		f.Close()
		return nil, fmt.Errorf("saving the state: %w", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

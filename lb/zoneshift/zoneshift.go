// Package zoneshift keeps l4lb's zonal shifts, as NLB's start-zonal-shift
// does: for a while, a zone is taken out of service on purpose. Its health
// endpoint answers 503 and BGP withdraws its prefixes, so new flows go to
// the other zones; established flows are not cut. A shift ends when it
// expires or is cancelled, and survives a reload and a binary upgrade (the
// old process hands it over).
package zoneshift

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/l4lb/l4lb/lb/events"
	"github.com/l4lb/l4lb/pkg/metrics"
)

// Bounds of a shift's expiry, as NLB's: a minute to three days.
const (
	MinExpiry = time.Minute
	MaxExpiry = 72 * time.Hour
)

// Errors the admin API answers 404 and 400.
var (
	ErrNotFound = errors.New("not found")
	ErrInvalid  = errors.New("invalid")
)

// Shift is one zonal shift.
type Shift struct {
	Zone    string    `json:"zone"`
	Started time.Time `json:"started"`
	Expires time.Time `json:"expires"`
}

// Shifts are the zonal shifts in force on this node.
type Shifts struct {
	log *zap.Logger
	m   *metrics.Metrics
	ev  *events.Log
	now func() time.Time

	mu       sync.Mutex
	shifts   map[string]Shift
	timers   map[string]*time.Timer
	onChange []func()
}

// New returns no shift in force.
func New(log *zap.Logger, m *metrics.Metrics, ev *events.Log) *Shifts {
	if log == nil {
		log = zap.NewNop()
	}
	return &Shifts{log: log, m: m, ev: ev, now: time.Now, shifts: map[string]Shift{}, timers: map[string]*time.Timer{}}
}

// OnChange has f called, without blocking on anything of this package's,
// whenever a shift starts or ends.
func (s *Shifts) OnChange(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onChange = append(s.onChange, f)
}

// Start shifts traffic away from zone until d from now (a shift in force
// there is replaced: its expiry moves).
func (s *Shifts) Start(zone string, d time.Duration) (Shift, error) {
	if err := CheckExpiry(d); err != nil {
		return Shift{}, err
	}
	now := s.now()
	sh := Shift{Zone: zone, Started: now.UTC(), Expires: now.Add(d).UTC()}
	s.put(sh)
	s.log.Warn("zonal shift started: the zone's health is 503 and its prefixes are withdrawn until it expires", zap.String("zone", zone), zap.Time("expires", sh.Expires))
	return sh, nil
}

// CheckExpiry says what is wrong with a shift's length, if anything.
func CheckExpiry(d time.Duration) error {
	if d < MinExpiry || d > MaxExpiry {
		return fmt.Errorf("%w: expires_in: %v is outside %v to %v", ErrInvalid, d, MinExpiry, MaxExpiry)
	}
	return nil
}

// Apply puts in force a shift another node started (through the cluster's
// etcd), unless it has expired.
func (s *Shifts) Apply(sh Shift) {
	if !sh.Expires.After(s.now()) {
		return
	}
	if cur, ok := s.Active(sh.Zone); ok && cur == sh {
		return
	}
	s.put(sh)
	s.log.Warn("zonal shift in force, from the cluster: the zone's health is 503 and its prefixes are withdrawn until it expires", zap.String("zone", sh.Zone), zap.Time("expires", sh.Expires))
}

// put puts sh in force, with its timer, and says so.
func (s *Shifts) put(sh Shift) {
	s.mu.Lock()
	if t := s.timers[sh.Zone]; t != nil {
		t.Stop()
	}
	s.shifts[sh.Zone] = sh
	s.timers[sh.Zone] = time.AfterFunc(time.Until(sh.Expires), func() { s.end(sh, "expired") })
	s.m.Gauge(metrics.ZonalShiftActive, sh.Zone).Set(1)
	s.ev.Add(events.ZonalShift, sh.Zone, "until "+sh.Expires.Format(time.RFC3339))
	calls := slices.Clone(s.onChange)
	s.mu.Unlock()
	for _, f := range calls {
		f()
	}
}

// end ends sh, unless another shift of its zone replaced it.
func (s *Shifts) end(sh Shift, why string) bool {
	s.mu.Lock()
	if cur, ok := s.shifts[sh.Zone]; !ok || cur != sh {
		s.mu.Unlock()
		return false
	}
	delete(s.shifts, sh.Zone)
	if t := s.timers[sh.Zone]; t != nil {
		t.Stop()
		delete(s.timers, sh.Zone)
	}
	s.m.Gauge(metrics.ZonalShiftActive, sh.Zone).Set(0)
	s.ev.Add(events.ZonalShiftEnd, sh.Zone, why)
	calls := slices.Clone(s.onChange)
	s.mu.Unlock()
	s.log.Info("zonal shift ended: the zone serves again", zap.String("zone", sh.Zone), zap.String("why", why))
	for _, f := range calls {
		f()
	}
	return true
}

// Cancel ends the shift of zone now.
func (s *Shifts) Cancel(zone string) error {
	sh, ok := s.Active(zone)
	if !ok || !s.end(sh, "cancelled") {
		return fmt.Errorf("%w: no zonal shift away from zone %q", ErrNotFound, zone)
	}
	return nil
}

// Active is zone's shift, if one is in force.
func (s *Shifts) Active(zone string) (Shift, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sh, ok := s.shifts[zone]
	return sh, ok
}

// List is every shift in force, by zone.
func (s *Shifts) List() []Shift {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Shift, 0, len(s.shifts))
	for _, sh := range s.shifts {
		out = append(out, sh)
	}
	slices.SortFunc(out, func(a, b Shift) int { return strings.Compare(a.Zone, b.Zone) })
	return out
}

// Restore puts in force the shifts a previous process handed over; those
// that expired meanwhile are left out.
func (s *Shifts) Restore(saved []Shift) {
	for _, sh := range saved {
		if sh.Expires.After(s.now()) {
			s.put(sh)
			s.log.Info("zonal shift taken over from the previous process", zap.String("zone", sh.Zone), zap.Time("expires", sh.Expires))
		}
	}
}

// Close stops the expiry timers (the process stops).
func (s *Shifts) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range s.timers {
		t.Stop()
	}
}

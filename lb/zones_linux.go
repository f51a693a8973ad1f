package lb

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/l4lb/l4lb/lb/zoneshift"
	"github.com/l4lb/l4lb/pkg/api"
	"github.com/l4lb/l4lb/pkg/config"
)

// Zones and their zonal shifts, as the admin API shows and changes them.

// Zones lists the config's zones with their health and zonal shift.
func (v *view) Zones() []api.Zone {
	out := []api.Zone{}
	for _, z := range v.reg.Config().Zones {
		zh, _ := v.ZoneHealth(z.Name)
		az := api.Zone{Name: z.Name, IPs: []string{}, Healthy: zh.Healthy, ZonalShift: zh.ZonalShift}
		for _, ip := range z.IPs {
			az.IPs = append(az.IPs, ip.String())
		}
		out = append(out, az)
	}
	return out
}

// ShiftZone takes zone out of service for expiresIn (NLB's
// start-zonal-shift): its health answers 503 and BGP withdraws its
// prefixes; established flows are not cut.
func (v *view) ShiftZone(zone, expiresIn string) (api.ZonalShift, error) {
	if !slices.ContainsFunc(v.reg.Config().Zones, func(z config.Zone) bool { return z.Name == zone }) {
		return api.ZonalShift{}, fmt.Errorf("%w: no zone %q", api.ErrNotFound, zone)
	}
	d, err := time.ParseDuration(expiresIn)
	if err != nil {
		return api.ZonalShift{}, fmt.Errorf("%w: expires_in: want a duration such as 30m or 1h, got %q", api.ErrInvalid, expiresIn)
	}
	var sh zoneshift.Shift
	if v.store != nil { // every node's, through etcd
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		sh, err = v.store.Shifts.Start(ctx, zone, d)
	} else {
		sh, err = v.shifts.Start(zone, d)
	}
	if err != nil {
		return api.ZonalShift{}, shiftErr(err)
	}
	return *wireShift(sh), nil
}

// CancelZoneShift ends zone's shift now: on every node, through etcd, with
// the etcd backend.
func (v *view) CancelZoneShift(zone string) error {
	if v.store != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return shiftErr(v.store.Shifts.Cancel(ctx, zone))
	}
	return shiftErr(v.shifts.Cancel(zone))
}

func wireShift(sh zoneshift.Shift) *api.ZonalShift {
	return &api.ZonalShift{Zone: sh.Zone, Started: sh.Started, Expires: sh.Expires}
}

func shiftErr(err error) error {
	switch {
	case errors.Is(err, zoneshift.ErrNotFound):
		return fmt.Errorf("%w: %v", api.ErrNotFound, err)
	case errors.Is(err, zoneshift.ErrInvalid):
		return fmt.Errorf("%w: %v", api.ErrInvalid, err)
	}
	return err
}

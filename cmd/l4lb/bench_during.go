package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/spf13/cobra"

	"github.com/l4lb/l4lb/pkg/api"
)

// The failure scenarios of `l4lb bench --during`.
const (
	duringKillTarget = "kill-target" // SIGKILL --target-pid
	duringDeregister = "deregister"  // DELETE the target through the admin API
	duringReload     = "reload"      // POST /v1/reload
	duringUpgrade    = "upgrade"     // POST /v1/upgrade
	duringHealthFlap = "health-flap" // SIGSTOP --target-pid for --flap, then SIGCONT
)

// duringFlags are the flags a failure scenario needs.
type duringFlags struct {
	what          string
	admin         adminClient
	tokenFile     string
	group, target string
	targetPID     int
	flap          time.Duration
}

func (d *duringFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&d.what, "during", "", "a failure at half the run: kill-target, deregister, reload, upgrade or health-flap")
	f.StringVar(&d.admin.base, "admin", "", "admin API of the l4lb under test (deregister, reload, upgrade)")
	f.StringVar(&d.tokenFile, "token-file", "", "file holding the admin API bearer token")
	f.StringVar(&d.tokenFile, "admin-token-file", "", "serve's name of --token-file")
	f.MarkHidden("admin-token-file")
	f.StringVar(&d.group, "target-group", "", "deregister: the target's group")
	f.StringVar(&d.target, "target", "", "deregister: the target's address")
	f.IntVar(&d.targetPID, "target-pid", 0, "kill-target, health-flap: the target's process")
	f.DurationVar(&d.flap, "flap", 5*time.Second, "health-flap: how long the target stops answering")
}

// build returns the failure scenario as a function, or nil without one.
func (d *duringFlags) build() (func(context.Context) error, error) {
	need := func(ok bool, what string) error {
		if !ok {
			return usageError{fmt.Errorf("--during %s needs %s", d.what, what)}
		}
		return nil
	}
	admin := func() error {
		if err := need(d.admin.base != "", "--admin"); err != nil {
			return err
		}
		return d.admin.init(d.tokenFile)
	}
	switch d.what {
	case "":
		return nil, nil
	case duringKillTarget:
		if err := need(d.targetPID > 0, "--target-pid"); err != nil {
			return nil, err
		}
		return func(context.Context) error { return signalProcess(d.targetPID, "KILL") }, nil
	case duringHealthFlap:
		if err := need(d.targetPID > 0, "--target-pid"); err != nil {
			return nil, err
		}
		return func(ctx context.Context) error {
			if err := signalProcess(d.targetPID, "STOP"); err != nil {
				return err
			}
			select {
			case <-time.After(d.flap):
			case <-ctx.Done():
			}
			return signalProcess(d.targetPID, "CONT")
		}, nil
	case duringDeregister:
		if err := need(d.group != "" && d.target != "", "--target-group and --target"); err != nil {
			return nil, err
		}
		if err := admin(); err != nil {
			return nil, err
		}
		return func(context.Context) error {
			return d.admin.do(http.MethodDelete, "/v1/target-groups/"+url.PathEscape(d.group)+"/targets/"+url.PathEscape(d.target), nil, nil)
		}, nil
	case duringReload:
		if err := admin(); err != nil {
			return nil, err
		}
		return func(context.Context) error {
			var cfg api.Config
			return d.admin.do(http.MethodPost, "/v1/reload", nil, &cfg)
		}, nil
	case duringUpgrade:
		if err := admin(); err != nil {
			return nil, err
		}
		return func(context.Context) error {
			d.admin.http.Timeout = 2 * time.Minute
			var u api.Upgrade
			return d.admin.do(http.MethodPost, "/v1/upgrade", nil, &u)
		}, nil
	}
	return nil, usageError{fmt.Errorf("--during %q: kill-target, deregister, reload, upgrade or health-flap", d.what)}
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/l4lb/l4lb/pkg/api"
)

// announceWait is reload's and upgrade's --wait: after the call, wait until
// the node announces every prefix of its bgp section again, so that a
// rolling operation moves to the next node only once this one carries
// flows (and the routers keep enough next hops).
type announceWait struct {
	on      bool
	timeout time.Duration
	every   time.Duration // how often the node is asked; 200 ms
}

func addWaitFlags(cmd *cobra.Command, w *announceWait) {
	cmd.Flags().BoolVar(&w.on, "wait", false, "return once the node announces every prefix of its bgp section again (with no bgp section: once it is ready); exit 1 at --wait-timeout, saying why not")
	cmd.Flags().DurationVar(&w.timeout, "wait-timeout", 2*time.Minute, "how long --wait waits")
}

// report waits when --wait asks to, and says what it saw on stderr (the
// command's own output stays one JSON document with -o json).
func (w announceWait) report(cmd *cobra.Command, c *adminClient, pid int) error {
	if !w.on {
		return nil
	}
	said, err := w.wait(c, pid)
	if err != nil {
		return err
	}
	fmt.Fprintln(cmd.ErrOrStderr(), said)
	return nil
}

// errNoBGP says the node has no bgp section.
var errNoBGP = errors.New("no bgp section")

// wait returns once the node behind c, answering as process pid (any when
// 0), announces again; or an error naming what it still waits for.
func (w announceWait) wait(c *adminClient, pid int) (string, error) {
	every := w.every
	if every == 0 {
		every = 200 * time.Millisecond
	}
	start := time.Now()
	deadline := start.Add(w.timeout)
	for {
		done, why := w.check(c, pid)
		if done {
			return fmt.Sprintf("%s after %v", why, time.Since(start).Round(10*time.Millisecond)), nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("--wait: after %v: %s", w.timeout, why)
		}
		time.Sleep(every)
	}
}

// check asks the node once: done, and what it waits for or what it does.
func (w announceWait) check(c *adminClient, pid int) (bool, string) {
	var cfg api.Config
	if err := c.get("/v1/config", &cfg); err != nil {
		return false, err.Error()
	}
	if pid != 0 && cfg.PID != pid {
		return false, fmt.Sprintf("the admin address still answers as pid %d, not the new pid %d", cfg.PID, pid)
	}
	var st api.BGPStatus
	switch err := c.get("/v1/bgp", &st); {
	case errors.Is(err, errNoBGP):
		if err := c.get("/readyz", nil); err != nil {
			return false, "not ready: " + err.Error()
		}
		return true, "ready (no bgp section: nothing to announce)"
	case err != nil:
		return false, err.Error()
	}
	if st.Leaving {
		return false, "the node is leaving: every route withdrawn"
	}
	for _, r := range st.Routes {
		if !r.Announced {
			return false, fmt.Sprintf("zone %s's prefix %s is not announced: %s", r.Zone, r.Prefix, r.Why)
		}
	}
	return true, fmt.Sprintf("announcing %d prefixes", len(st.Routes))
}

// get reads path's JSON answer into out (when not nil); a 404 of GET
// /v1/bgp is errNoBGP.
func (c *adminClient) get(path string, out any) error {
	req, err := c.request(context.Background(), http.MethodGet, path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("admin API: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	switch {
	case err != nil:
		return fmt.Errorf("admin API: %w", err)
	case resp.StatusCode == http.StatusNotFound && path == "/v1/bgp":
		return errNoBGP
	case resp.StatusCode/100 != 2:
		return fmt.Errorf("admin API: GET %s: %s: %s", path, resp.Status, data)
	case out == nil:
		return nil
	}
	return json.Unmarshal(data, out)
}

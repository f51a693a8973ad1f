package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/spf13/cobra"

	"github.com/l4lb/l4lb/pkg/api"
)

func newEvents() *cobra.Command {
	var c adminClient
	var follow bool
	var since string
	cmd := &cobra.Command{
		Use:   "events [--follow] [--since T] [-o table|json]",
		Short: "What happened: target states, drains, fail-open, reloads, upgrades, BGP, flow-table pressure, zonal shifts (GET /v1/events)",
		Long: `Show the recent events a running l4lb keeps (a bounded ring), oldest first,
and with --follow the new ones as they happen. --since takes a sequence
number (the events after it) or an RFC 3339 time. With -o json, one JSON
object per event: an array, or with --follow one object per line.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			if since != "" {
				q.Set("since", since)
			}
			out := cmd.OutOrStdout()
			if !follow {
				var evs []api.Event
				if err := c.do(http.MethodGet, "/v1/events?"+q.Encode(), nil, &evs); err != nil {
					return err
				}
				if c.output == "json" {
					return printJSON(out, evs)
				}
				for _, e := range evs {
					printEvent(out, e)
				}
				return nil
			}
			q.Set("follow", "1")
			c.http.Timeout = 0 // the stream lasts until interrupted
			req, err := c.request(cmd.Context(), http.MethodGet, "/v1/events?"+q.Encode(), nil)
			if err != nil {
				return err
			}
			resp, err := c.http.Do(req)
			if err != nil {
				return fmt.Errorf("admin API: %w", err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
				return fmt.Errorf("admin API: %s: %s", resp.Status, b)
			}
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				if len(sc.Bytes()) == 0 {
					continue // a keep-alive
				}
				var e api.Event
				if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
					return fmt.Errorf("admin API: a malformed event: %w", err)
				}
				if c.output == "json" {
					json.NewEncoder(out).Encode(e)
				} else {
					printEvent(out, e)
				}
			}
			if cmd.Context().Err() != nil {
				return nil
			}
			return sc.Err()
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new events as they happen")
	cmd.Flags().StringVar(&since, "since", "", "only events after this sequence number, or at or after this RFC 3339 time")
	addClientFlags(cmd, &c)
	return cmd
}

// printEvent writes one event as a line of the table form.
func printEvent(w io.Writer, e api.Event) {
	fmt.Fprintf(w, "%-6d %s  %-16s %-32s %s\n", e.Seq, e.Time.Local().Format(time.DateTime), e.Kind, e.Object, e.Detail)
}

package main

import (
	"fmt"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/l4lb/l4lb/pkg/api"
)

func newBGP() *cobra.Command {
	cmd := &cobra.Command{Use: "bgp", Short: "The BGP speaker that announces each zone's addresses", Args: cobra.NoArgs}
	cmd.AddCommand(newBGPStatus())
	return cmd
}

func newBGPStatus() *cobra.Command {
	var c adminClient
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the BGP sessions and which prefixes are announced, and why (GET /v1/bgp)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var st api.BGPStatus
			if err := c.do(http.MethodGet, "/v1/bgp", nil, &st); err != nil {
				return err
			}
			if c.output == "json" {
				return printJSON(cmd.OutOrStdout(), st)
			}
			w := cmd.OutOrStdout()
			leaving := ""
			if st.Leaving {
				leaving = " (leaving: every route withdrawn)"
			}
			fmt.Fprintf(w, "local AS %d, router ID %s%s\n\n", st.LocalAS, st.RouterID, leaving)
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PEER\tAS\tSTATE\tSINCE\tHOLD TIME\tBFD")
			for _, p := range st.Peers {
				since, hold := "-", "-"
				if !p.Since.IsZero() {
					since = time.Since(p.Since).Truncate(time.Second).String()
				}
				if p.HoldTime > 0 {
					hold = fmt.Sprintf("%ds", p.HoldTime)
				}
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", p.Address, p.AS, p.State, since, hold, bfdSummary(p.BFD))
			}
			tw.Flush()
			fmt.Fprintln(w)
			tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ZONE\tPREFIX\tANNOUNCED\tCOMMUNITIES\tWHY")
			for _, r := range st.Routes {
				fmt.Fprintf(tw, "%s\t%s\t%t\t%s\t%s\n", r.Zone, r.Prefix, r.Announced, dash(strings.Join(r.Communities, " ")), r.Why)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if n := st.BFDDropped["malformed"] + st.BFDDropped["no_session"]; n > 0 || st.RejectedConnections > 0 {
				fmt.Fprintf(w, "\nrefused: %d BFD packets for no session (%d malformed), %d BGP connections from no configured peer\n",
					n, st.BFDDropped["malformed"], st.RejectedConnections)
			}
			return nil
		},
	}
	addClientFlags(cmd, &c)
	return cmd
}

// bfdSummary is a BFD session in a few words: its state, the detection time
// once the peer is heard, multihop or not, and why it last went down.
func bfdSummary(b *api.BFDSession) string {
	if b == nil {
		return "-"
	}
	out := b.State
	if b.DetectTimeMS > 0 {
		out += fmt.Sprintf(", detect %gms", b.DetectTimeMS)
	}
	if b.Multihop {
		out += ", multihop"
	}
	if b.State != "up" && b.Diagnostic != "" {
		out += " (" + b.Diagnostic + ")"
	}
	if b.Authentication != "" && b.Authentication != "none" {
		out += ", " + b.Authentication
	}
	if n := b.Packets["ttl"] + b.Packets["auth"]; n > 0 {
		out += fmt.Sprintf(", %d dropped (ttl %d, auth %d)", n, b.Packets["ttl"], b.Packets["auth"])
	}
	return out
}

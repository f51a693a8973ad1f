package main

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/l4lb/l4lb/pkg/api"
)

// newFlows lists the flows a node carries, whatever carries them: its own
// sockets, or the kernel path by NAT or by direct server return. With
// several nodes behind ECMP, it says which node carries a flow.
func newFlows() *cobra.Command {
	var c adminClient
	var listener string
	var limit int
	cmd := &cobra.Command{
		Use:   "flows [--listener NAME] [--limit N]",
		Short: "List the flows this node carries, and on which path: socket, kernel (NAT) or dsr (GET /v1/flows)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{"limit": {strconv.Itoa(limit)}}
			if listener != "" {
				q.Set("listener", listener)
			}
			var fl []api.Flow
			if err := c.do(http.MethodGet, "/v1/flows?"+q.Encode(), nil, &fl); err != nil {
				return err
			}
			if c.output == "json" {
				return printJSON(cmd.OutOrStdout(), fl)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "LISTENER\tPROTOCOL\tPATH\tCLIENT\tTARGET\tTARGET GROUP\tAGE\tIDLE")
			for _, f := range fl {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", f.Listener, f.Protocol, f.Path, f.Client, f.Target, f.TargetGroup, seconds(f.AgeSeconds), seconds(f.IdleSeconds))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&listener, "listener", "", "only this listener's flows")
	cmd.Flags().IntVar(&limit, "limit", 100, "at most this many flows (1-100000)")
	addClientFlags(cmd, &c)
	return cmd
}

// seconds is a duration in seconds for a table, or "-" when unknown.
func seconds(s float64) string {
	if s <= 0 {
		return "-"
	}
	return strconv.FormatFloat(s, 'f', 1, 64) + "s"
}

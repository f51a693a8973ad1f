package main

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/l4lb/l4lb/pkg/api"
)

func newZones() *cobra.Command {
	cmd := &cobra.Command{Use: "zones", Short: "The zones: their health, and zonal shifts that take one out of service", Args: cobra.NoArgs}
	cmd.AddCommand(newZonesList(), newZonesShift(), newZonesCancel())
	return cmd
}

func newZonesList() *cobra.Command {
	var c adminClient
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the zones, their addresses and health, and any zonal shift (GET /v1/zones)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var zones []api.Zone
			if err := c.do(http.MethodGet, "/v1/zones", nil, &zones); err != nil {
				return err
			}
			if c.output == "json" {
				return printJSON(cmd.OutOrStdout(), zones)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ZONE\tADDRESSES\tHEALTHY\tZONAL SHIFT")
			for _, z := range zones {
				shift := "-"
				if sh := z.ZonalShift; sh != nil {
					shift = fmt.Sprintf("away until %s (%v left)", sh.Expires.Format(time.RFC3339), time.Until(sh.Expires).Round(time.Second))
				}
				fmt.Fprintf(tw, "%s\t%s\t%t\t%s\n", z.Name, strings.Join(z.IPs, ", "), z.Healthy, shift)
			}
			return tw.Flush()
		},
	}
	addClientFlags(cmd, &c)
	return cmd
}

func newZonesShift() *cobra.Command {
	var c adminClient
	var zone string
	var expires time.Duration
	cmd := &cobra.Command{
		Use:   "shift --away-from ZONE --expires-in D",
		Short: "Take a zone out of service until the shift expires (POST /v1/zones/{zone}/shift): its health is 503, its prefixes are withdrawn, established flows go on",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var sh api.ZonalShift
			if err := c.do(http.MethodPost, "/v1/zones/"+url.PathEscape(zone)+"/shift", api.ZoneShiftRequest{ExpiresIn: expires.String()}, &sh); err != nil {
				return err
			}
			if c.output == "json" {
				return printJSON(cmd.OutOrStdout(), sh)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "zonal shift away from zone %s until %s\n", sh.Zone, sh.Expires.Format(time.RFC3339))
			return nil
		},
	}
	cmd.Flags().StringVar(&zone, "away-from", "", "the zone to take out of service (required)")
	cmd.Flags().DurationVar(&expires, "expires-in", 0, "how long the shift lasts, 1m to 72h (required)")
	cmd.MarkFlagRequired("away-from")
	cmd.MarkFlagRequired("expires-in")
	addClientFlags(cmd, &c)
	return cmd
}

func newZonesCancel() *cobra.Command {
	var c adminClient
	cmd := &cobra.Command{
		Use:   "cancel ZONE",
		Short: "End a zone's zonal shift now (DELETE /v1/zones/{zone}/shift)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := c.do(http.MethodDelete, "/v1/zones/"+url.PathEscape(args[0])+"/shift", nil, nil); err != nil {
				return err
			}
			if c.output == "json" {
				return printJSON(cmd.OutOrStdout(), map[string]string{"zone": args[0], "zonal_shift": "cancelled"})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "zonal shift away from zone %s cancelled: it serves again\n", args[0])
			return nil
		},
	}
	addClientFlags(cmd, &c)
	return cmd
}

package main

import (
	"fmt"
	"net/http"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/l4lb/l4lb/pkg/api"
)

func newCluster() *cobra.Command {
	cmd := &cobra.Command{Use: "cluster", Short: "The l4lb nodes that share registrations", Args: cobra.NoArgs}
	cmd.AddCommand(newClusterStatus())
	return cmd
}

// nodeStatus is one node's line of cluster status.
type nodeStatus struct {
	Admin string `json:"admin"`
	api.Cluster
	Announcing *bool  `json:"announcing,omitempty"` // BGP configured: whether it announces routes now
	Error      string `json:"error,omitempty"`
}

func newClusterStatus() *cobra.Command {
	var c adminClient
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Every node: applied revision, table hash, health and whether it announces",
		Long: `Ask one node (--admin) for the cluster's nodes, which the etcd backend
records, and each of them for its view: the etcd revision it applied, a
hash of its routing tables (nodes with equal hashes pick the same targets),
its healthy targets, and whether it announces its routes over BGP. With
the file backend, the node asked is the only one shown.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var self api.Cluster
			if err := c.do(http.MethodGet, "/v1/cluster", nil, &self); err != nil {
				return err
			}
			admins := self.Nodes
			if len(admins) == 0 {
				admins = []string{c.base}
			}
			var out []nodeStatus
			for _, a := range admins {
				n := nodeStatus{Admin: a}
				node := adminClient{base: a}
				if err := node.init(""); err != nil {
					return err
				}
				node.token = c.token // one token for the cluster's admin APIs
				if err := node.do(http.MethodGet, "/v1/cluster", nil, &n.Cluster); err != nil {
					n.Error = err.Error()
				} else {
					var bgp api.BGPStatus
					if node.do(http.MethodGet, "/v1/bgp", nil, &bgp) == nil {
						announcing := false
						for _, r := range bgp.Routes {
							announcing = announcing || r.Announced
						}
						n.Announcing = &announcing
					}
				}
				out = append(out, n)
			}
			if c.output == "json" {
				return printJSON(cmd.OutOrStdout(), out)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NODE\tBACKEND\tREVISION\tETCD\tTABLE HASH\tHEALTHY\tANNOUNCING")
			for _, n := range out {
				if n.Error != "" {
					fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t%s\n", n.Admin, n.Error)
					continue
				}
				etcd, announcing := "-", "-"
				if n.Backend == "etcd" {
					etcd = "up"
					if !n.Connected {
						etcd = "away"
					}
				}
				if n.Announcing != nil {
					announcing = fmt.Sprint(*n.Announcing)
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%d/%d\t%s\n", n.Admin, n.Backend, n.AppliedRevision, etcd, n.TableHash, n.Healthy, n.Targets, announcing)
			}
			return tw.Flush()
		},
	}
	addClientFlags(cmd, &c)
	return cmd
}

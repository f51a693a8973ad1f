package main

import (
	"github.com/spf13/cobra"

	"github.com/l4lb/l4lb/pkg/config"
)

// newKernel is `l4lb kernel status|detach`: what the kernel paths have
// pinned on the BPF filesystem, by instance, and which process owns it.
func newKernel() *cobra.Command {
	var bpffs, output string
	cmd := &cobra.Command{
		Use:   "kernel status|detach",
		Short: "What the kernel paths have pinned (they forward on while l4lb is down), and removing an orphan's pins",
		Long: `The kernel paths pin their programs' links and maps under
load_balancer.bpffs (` + config.DefaultBPFFS + `), one directory per l4lb instance
(the config file's name and a hash of its path), so that they go on
forwarding if l4lb dies; a restarted l4lb with the same config adopts them.
"status" lists each instance's pins and owner, and whether the owner runs.
"detach INSTANCE" removes an instance's pins, so its programs detach and
its maps go: refused while the owner runs, unless --force.`,
	}
	status := &cobra.Command{
		Use:   "status",
		Short: "Each instance's pinned links and maps, and the process that owns them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return kernelStatus(cmd.OutOrStdout(), bpffs, output)
		},
	}
	status.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	var force bool
	detach := &cobra.Command{
		Use:   "detach INSTANCE",
		Short: "Remove an instance's pins: its programs detach, its maps go",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return kernelDetach(cmd.OutOrStdout(), bpffs, args[0], force)
		},
	}
	detach.Flags().BoolVar(&force, "force", false, "detach although the owning process runs")
	cmd.PersistentFlags().StringVar(&bpffs, "bpffs", config.DefaultBPFFS, "where the kernel paths pin (load_balancer.bpffs)")
	cmd.AddCommand(status, detach)
	return cmd
}

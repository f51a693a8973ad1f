package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// version and commit are set at build time (make build: -ldflags "-X
// main.version=$(git describe --tags) -X main.commit=$(git rev-parse HEAD)").
// Without them the commit comes from the build's VCS stamp, if any.
var (
	version = "dev"
	commit  = ""
)

func newVersion() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print version, commit and Go version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rev := commit
			if bi, ok := debug.ReadBuildInfo(); ok && rev == "" {
				for _, s := range bi.Settings {
					if s.Key == "vcs.revision" {
						rev = s.Value
					}
				}
			}
			if rev == "" {
				rev = "unknown (built without make build or git)"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "l4lb %s\ncommit %s\n%s %s/%s\n", version, rev, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return nil
		},
	}
}

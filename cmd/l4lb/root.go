package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/l4lb/l4lb/pkg/config"
)

// Exit codes: 0 ok, 1 runtime error, 2 usage or config error.
const (
	exitOK      = 0
	exitRuntime = 1
	exitUsage   = 2
)

// usageError marks an error as the caller's (exit 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// run executes the command line with injected output streams, so tests run the
// CLI in-process.
func run(args []string, stdout, stderr io.Writer) int {
	root := newRoot(stdout, stderr)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return exitOK
	}
	var cerrs config.Errors
	var uerr usageError
	switch {
	case errors.As(err, &cerrs):
		for _, e := range cerrs {
			fmt.Fprintln(stderr, e.Error())
		}
		return exitUsage
	case errors.As(err, &uerr):
		fmt.Fprintln(stderr, "l4lb:", err)
		return exitUsage
	}
	fmt.Fprintln(stderr, "l4lb:", err)
	return exitRuntime
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "l4lb",
		Short:         "An NLB-style layer-4 load balancer",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newServe(), newValidate(), newVersion(), newDemo(), newTargets(), newRoute(), newReload(), newUpgrade(), newBench(), newBGP(), newDSRTarget(), newKernel(), newCluster(), newFlows(), newZones(), newEvents(), newGenDocs())
	// Unknown subcommands and bad arguments are usage errors too.
	root.Args = cobra.ArbitraryArgs
	root.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 {
			return usageError{fmt.Errorf("unknown command %q (see l4lb --help)", strings.Join(args, " "))}
		}
		return cmd.Help()
	}
	addExamples(root)
	return root
}

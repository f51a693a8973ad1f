package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/l4lb/l4lb/pkg/config"
)

func newValidate() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "validate --config FILE",
		Short: `Print the normalized config; on error one "path.to.field: problem" line each`,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if path == "" {
				return usageError{errMissingConfig}
			}
			cfg, err := config.Load(path)
			if err != nil {
				return asUsage(err)
			}
			// As strict as serve, in the same words.
			if err := checkBeforeServing(cfg); err != nil {
				return err
			}
			for _, w := range config.Warnings(cfg) {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning:", w.Error())
			}
			out, err := cfg.YAML()
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(out)
			return err
		},
	}
	cmd.Flags().StringVar(&path, "config", "", "config file (YAML)")
	return cmd
}

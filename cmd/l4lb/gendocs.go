package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// newGenDocs writes the man pages and shell completions the packages ship
// (make deb), from the commands themselves, so they never disagree with
// --help.
func newGenDocs() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:    "gen-docs --dir DIR",
		Short:  "Write man pages (DIR/man1) and shell completions (DIR/completions) for the packages",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			root := cmd.Root()
			man := filepath.Join(dir, "man1")
			comp := filepath.Join(dir, "completions")
			for _, d := range []string{man, comp} {
				if err := os.MkdirAll(d, 0o755); err != nil {
					return err
				}
			}
			root.DisableAutoGenTag = true
			if err := doc.GenManTree(root, &doc.GenManHeader{Title: "L4LB", Section: "1", Source: "l4lb " + version, Manual: "l4lb manual"}, man); err != nil {
				return fmt.Errorf("man pages: %w", err)
			}
			for file, gen := range map[string]func(string) error{
				"l4lb.bash": func(f string) error { return root.GenBashCompletionFileV2(f, true) },
				"_l4lb":     root.GenZshCompletionFile,
				"l4lb.fish": func(f string) error { return root.GenFishCompletionFile(f, true) },
			} {
				if err := gen(filepath.Join(comp, file)); err != nil {
					return fmt.Errorf("completions: %w", err)
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "where to write (required)")
	cmd.MarkFlagRequired("dir")
	return cmd
}

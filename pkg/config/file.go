package config

import (
	"fmt"
	"io"
	"os"
)

// MaxFileSize is the largest config file l4lb reads: a config of thousands
// of targets is a few hundred kilobytes, and the YAML decoder needs several
// times a file's size in memory, so a larger file is refused before it is
// parsed (by validate, serve and every reload).
const MaxFileSize = 4 << 20

// ReadFile reads a config file of at most MaxFileSize bytes.
func ReadFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	defer f.Close()
	// The size is checked on what is read, not on Stat alone: a pipe or a
	// file that grows while it is read has no size to trust.
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("reading config: %s is larger than %d MiB, the most l4lb reads", path, MaxFileSize>>20)
	}
	return data, nil
}

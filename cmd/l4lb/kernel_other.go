//go:build !linux

package main

import (
	"errors"
	"io"
)

func kernelStatus(io.Writer, string, string) error {
	return errors.New("the kernel paths run on Linux only")
}

func kernelDetach(io.Writer, string, string, bool) error {
	return errors.New("the kernel paths run on Linux only")
}

package main

import (
	"os"
	"testing"
)

// runMainEnv makes the test binary act as l4lb itself, so tests can run it
// as a separate process (under prlimit, say) without building it first.
const runMainEnv = "L4LB_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// Command l4lb is an NLB-style layer-4 load balancer.
package main

import "os"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

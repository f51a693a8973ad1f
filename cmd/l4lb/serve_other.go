//go:build !linux

package main

import (
	"context"
	"errors"
	"net"
	"time"

	"go.uber.org/zap"
)

// errNeedsLinux is what serve and demo say elsewhere: the data plane is built
// on Linux interfaces (SO_REUSEPORT groups, splice(2), epoll, recvmmsg, IP_TRANSPARENT
// and eBPF). The client commands (validate, targets, route, version) work on
// any system, against an l4lb that runs on Linux.
var errNeedsLinux = errors.New("serving needs Linux: l4lb's data plane uses splice(2), epoll, recvmmsg and eBPF; validate, targets, route and version work here")

type signals struct{}

func catchSignals() *signals { return nil }

func runServe(context.Context, loaded, *zap.Logger, time.Duration, func(net.Addr)) error {
	return errNeedsLinux
}

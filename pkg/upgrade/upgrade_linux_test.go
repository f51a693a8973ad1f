package upgrade

import (
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// A listener handed to a new process stays non-blocking: os/exec's Fd
// would otherwise make the shared socket blocking, and the old process's
// accept would then hang on close.
func TestPassableKeepsSocketNonBlocking(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p, err := passable(f)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	fd := p.Fd() // what os/exec calls
	flags, err := unix.FcntlInt(fd, unix.F_GETFL, 0)
	if err != nil {
		t.Fatal(err)
	}
	if flags&unix.O_NONBLOCK == 0 {
		t.Fatal("the socket became blocking")
	}
	// The way it went wrong: Fd on the net package's own file.
	f.Fd()
	if flags, _ := unix.FcntlInt(fd, unix.F_GETFL, 0); flags&unix.O_NONBLOCK != 0 {
		t.Log("note: TCPListener.File's Fd no longer makes the socket blocking")
	}
}

package hostaddr

import (
	"time"

	"golang.org/x/sys/unix"
)

// Watch refreshes s when an address is added to or removed from the host
// (rtnetlink's address groups), and every minute in case a message was
// lost, until stop is closed; changed is called after each change.
func (s *Set) Watch(stop <-chan struct{}, changed func()) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		s.poll(stop, changed)
		return
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV6_IFADDR}); err != nil {
		unix.Close(fd)
		s.poll(stop, changed)
		return
	}
	// A read wakes every second to look at stop; what it reads matters
	// only as a sign that something changed.
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 1})
	defer unix.Close(fd)
	buf := make([]byte, 16<<10)
	last := time.Now()
	for {
		select {
		case <-stop:
			return
		default:
		}
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if (err == nil && n > 0) || err == unix.ENOBUFS || time.Since(last) > time.Minute {
			last = time.Now()
			if s.Refresh() && changed != nil {
				changed()
			}
		}
	}
}

package upgrade

import (
	"net"
	"os"
)

// Notify sends state to systemd (sd_notify(3)): "READY=1", "MAINPID=123",
// "RELOADING=1", several separated by newlines. Without NOTIFY_SOCKET (not
// run by systemd with Type=notify) it does nothing.
func Notify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' {
		path = "\x00" + path[1:] // an abstract socket
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}

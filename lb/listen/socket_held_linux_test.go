package listen

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// A socket another process holds is refused, naming that process; one of
// this process, or a free address, is not.
func TestCheckFreeNamesTheHolder(t *testing.T) {
	for _, proto := range []string{"tcp", "udp"} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHoldAddressHelper$")
		cmd.Env = append(os.Environ(), "L4LB_HOLD="+proto)
		out, _ := cmd.StdoutPipe()
		in, _ := cmd.StdinPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(out).ReadString('\n')
		if err != nil {
			t.Fatalf("%s helper: %v", proto, err)
		}
		at := netip.MustParseAddrPort(strings.TrimSpace(line))
		err = checkFree(proto, at)
		in.Close()
		cmd.Wait()
		if !errors.Is(err, ErrHeld) || !strings.Contains(err.Error(), "process "+strconv.Itoa(cmd.Process.Pid)) {
			t.Errorf("%s %s held by process %d: %v", proto, at, cmd.Process.Pid, err)
		}
		if err := checkFree(proto, at); err != nil {
			t.Errorf("%s %s once its holder left: %v", proto, at, err)
		}
	}
	own, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	if err := checkFree("tcp", own.Addr().(*net.TCPAddr).AddrPort()); err != nil {
		t.Errorf("this process's own listener: %v", err)
	}
}

// TestHoldAddressHelper holds an address for TestCheckFreeNamesTheHolder
// until its standard input closes; it does nothing on its own.
func TestHoldAddressHelper(t *testing.T) {
	switch os.Getenv("L4LB_HOLD") {
	case "tcp":
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		fmt.Println(ln.Addr())
	case "udp":
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		fmt.Println(c.LocalAddr())
	default:
		t.Skip("a helper of TestCheckFreeNamesTheHolder")
	}
	bufio.NewReader(os.Stdin).ReadString('\n')
}

func TestProcAddr(t *testing.T) {
	for in, want := range map[string]string{
		"0100007F:1F90":                         "127.0.0.1:8080",
		"00000000:0035":                         "0.0.0.0:53",
		"00000000000000000000000001000000:1F90": "[::1]:8080",
		"0000000000000000FFFF00000100007F:0050": "127.0.0.1:80",
	} {
		got, ok := procAddr(in)
		if !ok || got.String() != want {
			t.Errorf("procAddr(%s) = %v, %v; want %s", in, got, ok, want)
		}
	}
	if _, ok := procAddr("zz:1"); ok {
		t.Error("procAddr took a bad address")
	}
}

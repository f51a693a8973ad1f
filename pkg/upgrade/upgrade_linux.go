package upgrade

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The environment the new process is started with.
const (
	envFiles = "L4LB_UPGRADE_FILES" // name=fd,name=fd,...
	envReady = "L4LB_UPGRADE_READY" // the descriptor to write "ready" to
)

// DefaultTimeout is how long the old process waits for the new one.
const DefaultTimeout = time.Minute

// Options say what to start.
type Options struct {
	Path    string        // the binary: the path the running one was started from
	Args    []string      // its arguments, without the program name
	Timeout time.Duration // 0: DefaultTimeout
	Stdout  io.Writer     // nil: this process's
	Stderr  io.Writer     // nil: this process's
}

// Start starts the new process with files, named, and waits until it is
// ready. It returns the new process's PID, or why it did not become ready
// (it exited, or the timeout passed and it was killed). files stay the
// caller's to close.
func Start(o Options, files map[string]*os.File) (int, error) {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Stdout == nil {
		o.Stdout = os.Stdout
	}
	if o.Stderr == nil {
		o.Stderr = os.Stderr
	}
	names := make([]string, 0, len(files))
	for n := range files {
		if strings.ContainsAny(n, ",=") {
			return 0, fmt.Errorf("upgrade: descriptor name %q has a ',' or '='", n)
		}
		names = append(names, n)
	}
	slices.Sort(names)
	r, w, err := os.Pipe()
	if err != nil {
		return 0, fmt.Errorf("upgrade: %w", err)
	}
	defer r.Close()
	cmd := exec.Command(o.Path, o.Args...)
	cmd.Stdout, cmd.Stderr = o.Stdout, o.Stderr
	var list []string
	for i, n := range names {
		f, err := passable(files[n])
		if err != nil {
			return 0, fmt.Errorf("upgrade: %s: %w", n, err)
		}
		defer f.Close()
		cmd.ExtraFiles = append(cmd.ExtraFiles, f)
		list = append(list, n+"="+strconv.Itoa(3+i))
	}
	cmd.ExtraFiles = append(cmd.ExtraFiles, w)
	cmd.Env = append(slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, envFiles+"=") || strings.HasPrefix(kv, envReady+"=")
	}), envFiles+"="+strings.Join(list, ","), envReady+"="+strconv.Itoa(3+len(names)))
	err = cmd.Start()
	w.Close() // the child has its own copy; EOF on r then means it is gone
	if err != nil {
		return 0, fmt.Errorf("upgrade: starting %s: %w", o.Path, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reaps it whenever it ends
	ready := make(chan error, 1)
	go func() {
		b := make([]byte, 16)
		n, err := io.ReadAtLeast(r, b, len("ready"))
		switch {
		case err == nil && string(b[:n]) == "ready\n":
			ready <- nil
		case err != nil:
			ready <- errors.New("it closed the readiness pipe without saying ready")
		default:
			ready <- fmt.Errorf("it said %q instead of ready", b[:n])
		}
	}()
	timer := time.NewTimer(o.Timeout)
	defer timer.Stop()
	pid := cmd.Process.Pid
	select {
	case err := <-ready:
		if err == nil {
			return pid, nil
		}
		// A closed pipe most often means it exited: say so, with its status.
		select {
		case xerr := <-exited:
			return 0, fmt.Errorf("upgrade: new process %d exited before it was ready: %v", pid, exitText(xerr))
		case <-time.After(2 * time.Second):
		}
		cmd.Process.Kill()
		return 0, fmt.Errorf("upgrade: new process %d: %v (%v)", pid, err, waitBriefly(exited))
	case err := <-exited:
		return 0, fmt.Errorf("upgrade: new process %d exited before it was ready: %v", pid, exitText(err))
	case <-timer.C:
		cmd.Process.Kill()
		return 0, fmt.Errorf("upgrade: new process %d was not ready within %v; killed it", pid, o.Timeout)
	}
}

// passable duplicates f for os/exec to pass on. os/exec takes each file's
// descriptor with Fd, which puts a socket that came from the net package
// (TCPListener.File, say) into blocking mode: that mode belongs to the
// socket, shared by every process that has it, and a blocking listener
// ties up a thread in accept(2), which then never returns when the listener
// is closed. A duplicate made with os.NewFile is left as it is.
func passable(f *os.File) (*os.File, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	dup := -1
	cerr := rc.Control(func(fd uintptr) {
		dup, err = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	})
	if cerr != nil {
		return nil, cerr
	}
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(dup), f.Name()), nil
}

func waitBriefly(exited <-chan error) string {
	select {
	case err := <-exited:
		return exitText(err)
	case <-time.After(2 * time.Second):
		return "still running; killed"
	}
}

func exitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// Child is what a process started by Start inherited.
type Child struct {
	mu    sync.Mutex
	files map[string]*os.File
	ready *os.File
	done  bool
}

// Inherited returns what this process inherited from an upgrade, or nil when
// it was started some other way. It clears the environment that said so, so
// nothing this process starts believes it too.
func Inherited() (*Child, error) {
	list, ok := os.LookupEnv(envFiles)
	readyFD := os.Getenv(envReady)
	if !ok || readyFD == "" {
		return nil, nil
	}
	os.Unsetenv(envFiles)
	os.Unsetenv(envReady)
	c := &Child{files: map[string]*os.File{}}
	fd, err := strconv.Atoi(readyFD)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("upgrade: %s=%q is not a descriptor", envReady, readyFD)
	}
	c.ready = os.NewFile(uintptr(fd), "upgrade-ready")
	for _, kv := range strings.Split(list, ",") {
		if kv == "" {
			continue
		}
		name, num, ok := strings.Cut(kv, "=")
		fd, err := strconv.Atoi(num)
		if !ok || err != nil || fd < 3 {
			return nil, fmt.Errorf("upgrade: %s entry %q is not name=descriptor", envFiles, kv)
		}
		c.files[name] = os.NewFile(uintptr(fd), name)
	}
	return c, nil
}

// Take returns the inherited file of that name, once; nil if there is none
// (or c is nil). The caller owns it.
func (c *Child) Take(name string) *os.File {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	f := c.files[name]
	delete(c.files, name)
	return f
}

// Ready closes every inherited file nobody took (a listener the new
// configuration no longer has) and tells the old process this one serves.
func (c *Child) Ready() error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return nil
	}
	c.done = true
	for n, f := range c.files {
		f.Close()
		delete(c.files, n)
	}
	_, err := c.ready.Write([]byte("ready\n"))
	c.ready.Close()
	if err != nil {
		return fmt.Errorf("upgrade: telling the old process: %w", err)
	}
	return nil
}

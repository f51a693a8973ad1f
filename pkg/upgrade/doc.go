// Package upgrade replaces a running l4lb with a new process of the binary
// at the same path, without refusing a connection: the old process starts
// the new one with its listening sockets (and any other descriptors it names:
// kernel maps and links, a state file), the new one takes what it
// recognises, starts serving on the very same sockets, and says it is ready;
// only then does the old one stop accepting and drain. A new process that
// exits, or is not ready in time, leaves the old one serving.
//
//	// old process, on SIGUSR2:
//	pid, err := upgrade.Start(upgrade.Options{Path: exe, Args: os.Args[1:]}, files)
//	// new process, at start:
//	in, err := upgrade.Inherited() // nil when not started by an upgrade
//	f := in.Take("tcp/web/10.0.1.5/80/0")
//	in.Ready()
//
// It does what github.com/cloudflare/tableflip does, with two differences
// l4lb needs: a live reload can remove a listener, and its socket must then
// close at once (tableflip keeps a duplicate of every socket it was given
// until the next upgrade, with no way to drop one, so the kernel would keep
// steering connections to a socket nobody accepts on); and one address has
// several SO_REUSEPORT sockets, named here by listener, address and index.
//
// The package is built on Linux only: on other systems it is empty, so that
// the commands that only read a config or talk to the admin API build there.
package upgrade

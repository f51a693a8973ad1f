package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/l4lb/l4lb/bench"
)

// benchScenarios are the scenarios, with what each measures and which of
// the scenario flags it takes.
var benchScenarios = []struct {
	s                                  bench.Scenario
	short                              string
	rate, verify, request, during, pid bool
}{
	{bench.TCPThroughput, "stream writes to a sink target; Gbit/s", false, false, false, true, false},
	{bench.TCPConnect, "connect, --size bytes each way, close; connections/s and latency", true, true, false, true, false},
	{bench.TCPRR, "--size bytes each way on persistent connections; requests/s and latency", true, true, true, true, false},
	{bench.UDPRR, "a datagram and its reply; requests/s and latency", true, true, false, true, false},
	{bench.UDPPPS, "datagrams as fast as they go; sent and replied per second", false, false, false, true, false},
	{bench.IdleConns, "hold --connections connections; memory per connection of --pid", false, false, false, false, true},
}

func newBench() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench SCENARIO ADDR",
		Short: "Load-test an address (l4lb, another balancer, a target) and report rates and latency percentiles",
		Long: `Load-test ADDR (host:port) with one scenario and print what it measured.

With --during, a failure happens at half the run (kill-target, deregister,
reload, upgrade, health-flap), and the report tells failed connects, resets,
broken exchanges (replies are checksummed against their requests) and the
time from the failure to the last error.

With --rate the load is open-loop: requests are due on a fixed schedule and
latency counts from when each was due (coordinated omission corrected).
Every run is bounded by --duration (after --warmup) and --max-ops;
idle-conns opens connections for --duration at most, then waits --settle.
A run in which every operation failed exits 1 and says why.
"l4lb bench target" runs echo, sink and rr targets to load.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Errorf("no scenario %q; one of %s", args[0], strings.Join(scenarioNames(), ", "))}
			}
			return usageError{fmt.Errorf("want a scenario (%s) and an address", strings.Join(scenarioNames(), ", "))}
		},
		RunE: func(cmd *cobra.Command, args []string) error { return nil },
	}
	for _, sc := range benchScenarios {
		cmd.AddCommand(newBenchScenario(sc.s, sc.short, sc.rate, sc.verify, sc.request, sc.during, sc.pid))
	}
	cmd.AddCommand(newBenchTarget())
	return cmd
}

func scenarioNames() []string {
	names := make([]string, len(benchScenarios))
	for i, sc := range benchScenarios {
		names[i] = string(sc.s)
	}
	return names
}

// newBenchScenario is one scenario's command, with the common flags and
// those of its own.
func newBenchScenario(s bench.Scenario, short string, rate, verify, request, during, pid bool) *cobra.Command {
	var o bench.Options
	var output, requestFile, plotFile string
	var dflags duringFlags
	cmd := &cobra.Command{
		Use:   string(s) + " ADDR",
		Short: short,
		Args: func(cmd *cobra.Command, args []string) error {
			switch {
			case len(args) == 0:
				return usageError{fmt.Errorf("want an address (host:port)")}
			case len(args) > 1:
				// --pid $(pidof l4lb) with two l4lb processes leaves the
				// second PID here.
				return usageError{fmt.Errorf("want one address, got %q: is a flag given several values (--pid $(pidof l4lb) with two l4lb processes running)?", strings.Join(args, " "))}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "table" && output != "json" {
				return usageError{fmt.Errorf("-o %q: table or json", output)}
			}
			if s == bench.IdleConns && o.PID <= 0 {
				return usageError{fmt.Errorf("idle-conns needs --pid, the process whose memory to read")}
			}
			o.Addr = args[0]
			if requestFile != "" {
				b, err := os.ReadFile(requestFile)
				if err != nil {
					return usageError{fmt.Errorf("--request-file: %w", err)}
				}
				if o.ResponseSize <= 0 {
					return usageError{fmt.Errorf("--request-file needs --response-size")}
				}
				o.Request = b
			}
			d, err := dflags.build()
			if err != nil {
				return err
			}
			o.During = d
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			done := showProgress(cmd.ErrOrStderr(), s, &o)
			res, err := bench.Run(ctx, s, o)
			done()
			if err != nil {
				return err
			}
			if plotFile != "" {
				f, err := os.Create(plotFile)
				if err != nil {
					return err
				}
				err = bench.WriteSVG(f, res)
				if cerr := f.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					return err
				}
			}
			write := bench.WriteTable
			if output == "json" {
				write = bench.WriteJSON
			}
			if err := write(cmd.OutOrStdout(), res); err != nil {
				return err
			}
			return res.Failed(o.NoVerify) // a run where nothing worked exits 1
		},
	}
	f := cmd.Flags()
	f.DurationVar(&o.Duration, "duration", 10*time.Second, "measured time")
	f.StringVarP(&output, "output", "o", "table", "table or json")
	f.Int64Var(&o.MaxOps, "max-ops", 100_000_000, "stop after this many operations")
	if s == bench.IdleConns {
		f.IntVar(&o.Connections, "connections", 16, "connections to hold")
	} else {
		f.IntVar(&o.Connections, "connections", 16, "concurrent connections or sockets")
		f.DurationVar(&o.Warmup, "warmup", time.Second, "load before measuring, not counted (0s: none)")
		size := "payload bytes (default 64)"
		if s == bench.TCPThroughput {
			size = "bytes per write (default 131072)"
		}
		f.IntVar(&o.Size, "size", 0, size)
		f.StringVar(&plotFile, "plot", "", "also draw the run as SVG in this file: the rate each second, and latency by percentile")
	}
	if rate {
		f.Float64Var(&o.Rate, "rate", 0, "requests per second over all connections, open-loop (0: as fast as replies come)")
	}
	if verify {
		f.BoolVar(&o.NoVerify, "no-verify", false, "do not compare replies with requests (targets that do not echo)")
	}
	if request {
		f.StringVar(&requestFile, "request-file", "", "send this file as each request (an HTTP request, a Redis PING) instead of --size bytes")
		f.IntVar(&o.ResponseSize, "response-size", 0, "with --request-file: the bytes of each response")
	}
	if pid {
		f.IntVar(&o.PID, "pid", 0, "the process whose resident memory is read (required)")
		f.DurationVar(&o.Settle, "settle", 5*time.Second, "wait before reading memory")
	}
	if during {
		dflags.add(cmd)
	}
	cmd.PreRun = func(cmd *cobra.Command, _ []string) {
		if cmd.Flags().Changed("warmup") && o.Warmup == 0 {
			o.Warmup = -1 // asked for none
		}
	}
	return cmd
}

// showProgress shows a run's progress on w: a bar with the live rate and
// errors on a terminal, a plain line a second otherwise. It returns the
// function that ends the display.
func showProgress(w io.Writer, s bench.Scenario, o *bench.Options) func() {
	if f, ok := w.(*os.File); ok && isTerminal(f) {
		total := o.Duration
		if s == bench.IdleConns {
			bar := progressbar.NewOptions(o.Connections, progressbar.OptionSetWriter(w), progressbar.OptionSetDescription("connections"),
				progressbar.OptionShowCount(), progressbar.OptionClearOnFinish())
			o.Progress = func(p bench.Progress) { bar.Set64(p.Ops) }
			return func() { bar.Finish() }
		}
		bar := progressbar.NewOptions64(int64(total/time.Second), progressbar.OptionSetWriter(w), progressbar.OptionSetDescription(string(s)),
			progressbar.OptionClearOnFinish(), progressbar.OptionSetPredictTime(false))
		o.Progress = func(p bench.Progress) {
			bar.Describe(fmt.Sprintf("%s  %.0f/s  %d errors", s, p.Rate, p.Errors))
			bar.Set64(int64(p.Elapsed / time.Second))
		}
		return func() { bar.Finish() }
	}
	o.Progress = func(p bench.Progress) {
		fmt.Fprintf(w, "%s: %v/%v %d ops, %.0f/s, %d errors\n", s, p.Elapsed.Round(time.Second), p.Total, p.Ops, p.Rate, p.Errors)
	}
	return func() {}
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func newBenchTarget() *cobra.Command {
	var listen string
	var size int
	cmd := &cobra.Command{
		Use:   "target echo|sink|rr --listen tcp://IP:PORT|udp://IP:PORT",
		Short: "Run a load target: echo, sink (answers the byte count at EOF) or rr (answers each read with --size bytes)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if listen == "" {
				return usageError{fmt.Errorf("--listen is required")}
			}
			network, addr, err := bench.ParseListen(listen)
			if err != nil {
				return usageError{err}
			}
			t, err := bench.StartTarget(args[0], network, addr, size)
			if err != nil {
				return usageError{err}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s target on %s://%s\n", args[0], network, t.Addr)
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			<-ctx.Done()
			return t.Close()
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "", "tcp://IP:PORT or udp://IP:PORT")
	cmd.Flags().IntVar(&size, "size", 64, "rr: bytes in each answer")
	return cmd
}

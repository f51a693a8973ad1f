package main

import (
	"os"
	"strconv"
	"strings"
)

// clockTicks is the unit of /proc's CPU times (USER_HZ, 100 on every
// Linux this runs on).
const clockTicks = 100

// procCPU is the CPU time, user and system, that the processes pids have
// used, in seconds: every thread of each (utime and stime in
// /proc/PID/stat count them all).
func procCPU(pids []int) float64 {
	total := 0.0
	for _, pid := range pids {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			continue
		}
		// The command name may hold spaces: the fields start after ')'.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseFloat(f[11], 64) // utime, field 14 of stat
		k, _ := strconv.ParseFloat(f[12], 64) // stime, field 15
		total += (u + k) / clockTicks
	}
	return total
}

// machineCPU is the CPU time the whole machine has been busy, in seconds:
// /proc/stat's cpu line, less idle and iowait (softirq included: the
// kernel's forwarding is spent there).
func machineCPU() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	busy := 0.0
	for i, v := range f[1:] {
		n, _ := strconv.ParseFloat(v, 64)
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		if i >= 8 { // guest time is counted in user already
			break
		}
		busy += n
	}
	return busy / clockTicks
}

// perThousand is a CPU time in milliseconds per 1000 of ops; 0 when none.
func perThousand(cpu float64, ops int64) float64 {
	if ops == 0 {
		return 0
	}
	return cpu * 1000 / (float64(ops) / 1000)
}

// perGB is a CPU time in seconds per 10^9 bytes; 0 when none moved.
func perGB(cpu float64, bytes int64) float64 {
	if bytes == 0 {
		return 0
	}
	return cpu / (float64(bytes) / 1e9)
}

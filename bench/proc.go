package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times on Linux.
const clockTicks = 100

// procTimes reads a process's stat: its own CPU seconds (utime+stime), those
// of its children it has reaped (cutime+cstime), and its parent's pid.
func procTimes(pid string) (own, reaped float64, ppid int, err error) {
	b, err := os.ReadFile(filepath.Join("/proc", pid, "stat"))
	if err != nil {
		return 0, 0, 0, err
	}
	// The command name may hold spaces; the fields follow its last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, 0, fmt.Errorf("/proc/%s/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 15 {
		return 0, 0, 0, fmt.Errorf("/proc/%s/stat: %d fields", pid, len(f))
	}
	n := func(s string) float64 { v, _ := strconv.ParseFloat(s, 64); return v / clockTicks }
	ppid, _ = strconv.Atoi(f[1])
	return n(f[11]) + n(f[12]), n(f[13]) + n(f[14]), ppid, nil
}

// cpuSeconds is a process's own CPU time.
func cpuSeconds(pid int) float64 {
	own, _, _, _ := procTimes(strconv.Itoa(pid))
	return own
}

// treeCPUSeconds is the CPU time of a process and all its descendants,
// living or reaped (a Postgres cluster's postmaster, its backends and its
// walsenders), and the pids of the living ones.
func treeCPUSeconds(root int) (float64, []int) {
	entries, _ := os.ReadDir("/proc")
	children := map[int][]int{}
	own := map[int]float64{}
	var rootReaped float64
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		o, r, ppid, err := procTimes(e.Name())
		if err != nil {
			continue // gone meanwhile
		}
		children[ppid] = append(children[ppid], pid)
		own[pid] = o
		if pid == root {
			rootReaped = r
		}
	}
	total := rootReaped
	var pids []int
	stack := []int{root}
	for len(stack) > 0 {
		pid := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		total += own[pid]
		pids = append(pids, pid)
		stack = append(stack, children[pid]...)
	}
	return total, pids
}

// runQueueSeconds is how long the threads of the processes pids have been
// runnable and waiting for a core (the second field of each thread's
// schedstat): what queueing for the machine's cores cost them. A thread
// that exited takes its share with it.
func runQueueSeconds(pids ...int) float64 {
	var ns float64
	for _, pid := range pids {
		dir := filepath.Join("/proc", strconv.Itoa(pid), "task")
		tasks, _ := os.ReadDir(dir)
		for _, t := range tasks {
			b, err := os.ReadFile(filepath.Join(dir, t.Name(), "schedstat"))
			if err != nil {
				continue // gone meanwhile, or no schedstats in this kernel
			}
			if f := strings.Fields(string(b)); len(f) >= 2 {
				v, _ := strconv.ParseFloat(f[1], 64)
				ns += v
			}
		}
	}
	return ns / 1e9
}

// peakRSS is a process's peak resident set size (VmHWM), in bytes.
func peakRSS(pid int) (int64, error) {
	f, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("pid %d: no VmHWM", pid)
}

func mib(b int64) float64 { return round(float64(b)/(1<<20), 1) }

// machineTicks reads the machine's busy and total CPU time from /proc/stat.
func machineTicks() (busy, total float64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	for i, s := range f[1:] {
		v, _ := strconv.ParseFloat(s, 64)
		if i >= 8 { // guest times are already in user and nice
			break
		}
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy / clockTicks, total / clockTicks
}

// cpuSample is the CPU time of every process of the benchmark at a moment.
type cpuSample struct {
	at        time.Time
	names     []string
	seconds   map[string]float64
	waited    map[string]float64 // runQueueSeconds
	busy, all float64
}

// sampleCPU reads the CPU time of the services, of Postgres and Redis with
// all their processes, and of this process, which embeds NATS and runs the
// load generator and the observer.
func (e *env) sampleCPU(ctx context.Context, p *pipeline) cpuSample {
	s := cpuSample{at: time.Now(), seconds: map[string]float64{}, waited: map[string]float64{}}
	add := func(name string, sec float64, pids ...int) {
		s.names = append(s.names, name)
		s.seconds[name] = sec
		s.waited[name] = runQueueSeconds(pids...)
	}
	if p != nil { // nil: the services are stopped
		for _, svc := range p.services() {
			add(svc.name, cpuSeconds(svc.Pid()), svc.Pid())
		}
	}
	if pid, err := e.postgresPID(); err == nil {
		sec, pids := treeCPUSeconds(pid)
		add("postgres", sec, pids...)
	}
	if pid, err := e.redisPID(ctx); err == nil {
		add("redis", cpuSeconds(pid), pid)
	}
	add("bench+nats", cpuSeconds(os.Getpid()), os.Getpid())
	s.busy, s.all = machineTicks()
	return s
}

// cpuUse is one process's CPU time over a measured interval.
type cpuUse struct {
	Process string  `json:"process"`
	Seconds float64 `json:"cpu_seconds"`
	// Cores is the seconds divided by the interval: 1 is one core busy.
	Cores float64 `json:"cores"`
	// Waiting is the time its threads were runnable and waiting for a
	// core, divided by the interval: 0.5 is one thread kept waiting half
	// the time. For "machine", the sum over the processes.
	Waiting float64 `json:"waiting_for_a_core"`
}

// cpuBetween is what each process used from a to b, and the machine's
// busy cores as a last entry.
func cpuBetween(a, b cpuSample) []cpuUse {
	wall := b.at.Sub(a.at).Seconds()
	var out []cpuUse
	var waiting float64
	for _, n := range b.names {
		sec := b.seconds[n] - a.seconds[n]
		w := max(b.waited[n]-a.waited[n], 0) / wall // a thread gone takes its share
		waiting += w
		out = append(out, cpuUse{Process: n, Seconds: round(sec, 2), Cores: round(sec/wall, 2), Waiting: round(w, 2)})
	}
	if b.all > a.all {
		busy := b.busy - a.busy
		cores := busy / (b.all - a.all) * float64(numCPU())
		out = append(out, cpuUse{Process: "machine", Seconds: round(cores*wall, 2), Cores: round(cores, 2), Waiting: round(waiting, 2)})
	}
	return out
}

func (e *env) postgresPID() (int, error) {
	b, err := os.ReadFile(filepath.Join(e.pg.Dir, "data", "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	return strconv.Atoi(strings.TrimSpace(line))
}

func (e *env) redisPID(ctx context.Context) (int, error) {
	info, err := e.rc.Info(ctx, "server").Result()
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "process_id:"); ok {
			return strconv.Atoi(v)
		}
	}
	return 0, fmt.Errorf("redis INFO has no process_id")
}

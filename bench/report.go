package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/nats-io/nats-server/v2/server"
)

// results are every figure of a run, as written to the JSON file.
type results struct {
	Started  string          `json:"started"`
	Machine  machine         `json:"machine"`
	Build    buildInfo       `json:"build"`
	Settings settings        `json:"settings"`
	CatchUp  []catchUpResult `json:"catch_up"`
	Latency  []latencyResult `json:"latency"`
	// Floors are Postgres alone at the latency runs' rates.
	Floors []floorResult `json:"floors"`
	// Peaks are the services' peak memory over the first run's catch-up
	// and latency runs.
	Peaks    []peak    `json:"peak_rss"`
	Ceilings []ceiling `json:"ceilings"`
	Summary  summary   `json:"summary"`
}

type settings struct {
	Changes         int     `json:"changes"`
	Rates           []int   `json:"rates"`
	DurationSeconds float64 `json:"duration_seconds"`
	Writers         []int   `json:"writers"`
	Partitions      int     `json:"partitions"`
	Seed            uint64  `json:"seed"`
}

type summary struct {
	CatchUpPerSecond        float64 `json:"catch_up_changes_per_second"`
	SlowestCeiling          string  `json:"slowest_ceiling"`
	SlowestCeilingPerSecond float64 `json:"slowest_ceiling_ops_per_second"`
	RatioToSlowestCeiling   float64 `json:"ratio_to_slowest_ceiling"`
}

// summarise compares the first catch-up run, with the ceilings measured on
// its data, to the slowest ceiling.
func (r *results) summarise() {
	if len(r.CatchUp) == 0 || len(r.Ceilings) == 0 {
		return
	}
	s := summary{CatchUpPerSecond: r.CatchUp[0].ChangesPerSecond}
	for _, c := range r.Ceilings {
		if c.Error != "" {
			continue
		}
		if s.SlowestCeiling == "" || c.OpsPerSecond < s.SlowestCeilingPerSecond {
			s.SlowestCeiling, s.SlowestCeilingPerSecond = c.Stage, c.OpsPerSecond
		}
	}
	if s.SlowestCeilingPerSecond > 0 {
		s.RatioToSlowestCeiling = round(s.CatchUpPerSecond/s.SlowestCeilingPerSecond, 2)
	}
	r.Summary = s
}

func (r *results) write(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// machine describes where the benchmark ran.
type machine struct {
	CPUs      int     `json:"cpus"`
	CPUModel  string  `json:"cpu_model"`
	MemoryGiB float64 `json:"memory_gib"`
	Kernel    string  `json:"kernel"`
	Postgres  string  `json:"postgres"`
	Redis     string  `json:"redis"`
	NATS      string  `json:"nats_server"`
}

func numCPU() int { return runtime.NumCPU() }

func describeMachine() machine {
	m := machine{CPUs: numCPU(), NATS: server.VERSION}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		if f := strings.Fields(line); len(f) >= 2 {
			kb, _ := strconv.ParseFloat(f[1], 64)
			m.MemoryGiB = round(kb/(1<<20), 1)
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

// addVersions asks the servers for their versions.
func (m *machine) addVersions(ctx context.Context, e *env) {
	_ = e.conn.QueryRow(ctx, "SHOW server_version").Scan(&m.Postgres)
	if info, err := e.rc.Info(ctx, "server").Result(); err == nil {
		for line := range strings.SplitSeq(info, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
				m.Redis = v
			}
		}
	}
}

// markdown renders the results as tables.
func (r *results) markdown() string {
	var b strings.Builder
	m := r.Machine
	fmt.Fprintf(&b, "\n## Sluice benchmark, %s\n\n", r.Started)
	fmt.Fprintf(&b, "Machine: %d × %s, %.0f GiB, Linux %s; PostgreSQL %s, Redis %s, NATS server %s (embedded).  \n",
		m.CPUs, m.CPUModel, m.MemoryGiB, m.Kernel, m.Postgres, m.Redis, m.NATS)
	rev := r.Build.Revision
	if r.Build.Modified {
		rev += " (with uncommitted changes)"
	}
	fmt.Fprintf(&b, "Services built from %s with %s; %d partitions, default batch size.\n\n", orUnknown(rev), r.Build.Go, r.Settings.Partitions)

	b.WriteString("### Catch-up: a backlog committed while the services were stopped\n\n")
	b.WriteString("| writers | changes | transactions | seconds | changes/s | stream complete after s | CPU s: capture | writers | postgres | redis | bench+nats | machine busy cores | threads waiting for a core | peak RSS MiB: capture | writer (max) | Redis = Postgres |\n")
	b.WriteString("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|\n")
	for _, c := range r.CatchUp {
		fmt.Fprintf(&b, "| %d | %d | %d | %.1f | **%.0f** | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.2f | %.2f | %.1f | %.1f | %s |\n",
			c.Writers, c.Backlog.Changes, c.Backlog.Transactions, c.Seconds, c.ChangesPerSecond, c.CapturedSeconds,
			cpuOf(c.CPU, "capture").Seconds, cpuOf(c.CPU, "writer-").Seconds, cpuOf(c.CPU, "postgres").Seconds,
			cpuOf(c.CPU, "redis").Seconds, cpuOf(c.CPU, "bench+nats").Seconds, cpuOf(c.CPU, "machine").Cores,
			cpuOf(c.CPU, "machine").Waiting, peakOf(c.Peaks, "capture"), peakOf(c.Peaks, "writer-"), yes(c.Equal))
	}
	if len(r.CatchUp) > 0 {
		bl := r.CatchUp[0].Backlog
		fmt.Fprintf(&b, "\nBacklog: 60%% inserts, 30%% updates, 10%% deletes, rows of %.0f bytes (to_jsonb), %.1f MiB of WAL, committed in %.1fs.\n",
			bl.RowBytes, float64(bl.WALBytes)/(1<<20), bl.Seconds)
	}

	if len(r.Latency) > 0 {
		b.WriteString("\n### Steady state: commit to Redis, seen by a keyspace-notification observer\n\n")
		b.WriteString("| rate/s | achieved/s | values timed | mean ms | p50 ms | p99 ms | p99.9 ms | max ms | peak backlog | drain s | kept up | cores: capture | writer | postgres | redis | bench+nats | machine | threads waiting for a core |\n")
		b.WriteString("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, l := range r.Latency {
			fmt.Fprintf(&b, "| %d | %.0f | %d | %.1f | %.1f | **%.1f** | %.1f | %.1f | %d | %.2f | %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n",
				l.Rate, l.Achieved, l.Samples, l.MeanMs, l.P50Ms, l.P99Ms, l.P999Ms, l.MaxMs, l.PeakBacklog, l.DrainSeconds, yes(l.KeptUp),
				cpuOf(l.CPU, "capture").Cores, cpuOf(l.CPU, "writer-").Cores, cpuOf(l.CPU, "postgres").Cores,
				cpuOf(l.CPU, "redis").Cores, cpuOf(l.CPU, "bench+nats").Cores, cpuOf(l.CPU, "machine").Cores,
				cpuOf(l.CPU, "machine").Waiting)
		}
	}
	if len(r.Floors) > 0 {
		b.WriteString("\n### Floor: Postgres alone at the same rates, its changes received by a bare replication client\n\n")
		b.WriteString("| rate/s | achieved/s | values timed | mean ms | p50 ms | p99 ms | p99.9 ms | max ms | cores: postgres | bench+nats | machine | threads waiting for a core | Sluice's p99 ÷ this |\n")
		b.WriteString("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, f := range r.Floors {
			if f.Error != "" {
				fmt.Fprintf(&b, "| %d | failed: %s | | | | | | | | | | | |\n", f.Rate, f.Error)
				continue
			}
			ratio := "–"
			for _, l := range r.Latency {
				if l.Rate == f.Rate && f.P99Ms > 0 {
					ratio = fmt.Sprintf("%.1f", l.P99Ms/f.P99Ms)
				}
			}
			fmt.Fprintf(&b, "| %d | %.0f | %d | %.1f | %.1f | **%.1f** | %.1f | %.1f | %.2f | %.2f | %.2f | %.2f | %s |\n",
				f.Rate, f.Achieved, f.Samples, f.MeanMs, f.P50Ms, f.P99Ms, f.P999Ms, f.MaxMs,
				cpuOf(f.CPU, "postgres").Cores, cpuOf(f.CPU, "bench+nats").Cores, cpuOf(f.CPU, "machine").Cores,
				cpuOf(f.CPU, "machine").Waiting, ratio)
		}
	}
	if len(r.Peaks) > 0 {
		b.WriteString("\nPeak RSS over the catch-up and latency runs:")
		for _, p := range r.Peaks {
			fmt.Fprintf(&b, " %s %.1f MiB;", p.Process, p.PeakRSSMiB)
		}
		b.WriteString("\n")
	}

	if len(r.Ceilings) > 0 {
		b.WriteString("\n### Ceilings: each stage alone, on the same data\n\n")
		b.WriteString("| stage | operations | seconds | ops/s | Sluice catch-up ÷ this |\n|---|---:|---:|---:|---:|\n")
		for _, c := range r.Ceilings {
			if c.Error != "" {
				fmt.Fprintf(&b, "| %s | %d | failed: %s | | |\n", c.Stage, c.Operations, c.Error)
				continue
			}
			fmt.Fprintf(&b, "| %s | %d | %.2f | %.0f | %.2f |\n", c.Stage, c.Operations, c.Seconds, c.OpsPerSecond, r.Summary.CatchUpPerSecond/c.OpsPerSecond)
		}
		s := r.Summary
		fmt.Fprintf(&b, "\nSluice's catch-up (%.0f changes/s, %d writer(s)) is **%.2f** of the slowest ceiling, %s (%.0f/s).\n",
			s.CatchUpPerSecond, r.CatchUp[0].Writers, s.RatioToSlowestCeiling, s.SlowestCeiling, s.SlowestCeilingPerSecond)
	}
	return b.String()
}

// cpuOf is the use of the process named name, or the sum over the
// processes whose names start with it when it ends in "-".
func cpuOf(uses []cpuUse, name string) cpuUse {
	var sum cpuUse
	for _, u := range uses {
		if u.Process == name || strings.HasSuffix(name, "-") && strings.HasPrefix(u.Process, name) {
			sum.Seconds += u.Seconds
			sum.Cores += u.Cores
			sum.Waiting += u.Waiting
		}
	}
	return sum
}

// peakOf is the largest peak of the processes named like name (see cpuOf).
func peakOf(peaks []peak, name string) float64 {
	var m float64
	for _, p := range peaks {
		if p.Process == name || strings.HasSuffix(name, "-") && strings.HasPrefix(p.Process, name) {
			m = max(m, p.PeakRSSMiB)
		}
	}
	return m
}

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "**no**"
}

func orUnknown(s string) string {
	if s == "" {
		return "an unknown revision"
	}
	return s
}

func round(v float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(v*p) / p
}

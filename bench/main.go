// Command bench measures the whole Sluice pipeline on this machine: it
// starts its own Postgres, NATS JetStream (embedded) and Redis, runs
// sluice-capture and sluice-redis-writer as separate processes, and reports
// catch-up throughput, steady-state commit-to-Redis latency, the CPU and
// memory of each service, and the throughput of each stage alone.
//
//	go run ./bench -changes 1000000 -rates 1000,5000,20000 -duration 30s -writers 1,2,4
//
// It prints Markdown tables and writes every figure to a JSON file. It is
// not a test: nothing in it asserts a time.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// options are the command's flags.
type options struct {
	changes    int
	rates      []int
	duration   time.Duration
	writers    []int
	partitions int
	out        string
	bin        string
	seed       uint64
	keep       bool
	logLevel   string
	profiles   string
}

func main() {
	o := options{}
	flag.IntVar(&o.changes, "changes", 1_000_000, "row changes in each catch-up backlog")
	rates := flag.String("rates", "1000,5000,20000", "steady-state load rates, changes/s, comma-separated (empty: no latency runs)")
	flag.DurationVar(&o.duration, "duration", 30*time.Second, "how long each steady-state rate is held")
	writers := flag.String("writers", "1,2,4", "writer counts of the catch-up runs, comma-separated; the first run also measures latency and the ceilings")
	flag.IntVar(&o.partitions, "partitions", 16, "nats.partitions of the pipeline")
	flag.StringVar(&o.out, "out", "bench/results/latest.json", "where to write the JSON results")
	flag.StringVar(&o.bin, "bin", "", "directory holding sluice-capture and sluice-redis-writer (default: build them from the workspace)")
	flag.Uint64Var(&o.seed, "seed", 1, "seed of the workload's random choices")
	flag.BoolVar(&o.keep, "keep", false, "keep each run's service logs and config, and print where")
	flag.StringVar(&o.logLevel, "log-level", "warn", "log.level of the services")
	flag.StringVar(&o.profiles, "profiles", "", "write the services' CPU profiles (SLUICE_CPUPROFILE), and the benchmark's own over each catch-up, to this directory, for go tool pprof")
	flag.Parse()
	var err error
	if o.rates, err = intList(*rates); err != nil {
		fail(fmt.Errorf("-rates: %w", err))
	}
	if o.writers, err = intList(*writers); err != nil || len(o.writers) == 0 {
		fail(fmt.Errorf("-writers: needs at least one count (%v)", err))
	}
	if o.changes < 1 {
		fail(fmt.Errorf("-changes: must be at least 1"))
	}
	if o.profiles != "" {
		if o.profiles, err = filepath.Abs(o.profiles); err == nil {
			err = os.MkdirAll(o.profiles, 0o755)
		}
		if err != nil {
			fail(fmt.Errorf("-profiles: %w", err))
		}
	}

	log.SetFlags(log.Ltime)
	log.SetPrefix("bench: ")
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	res, err := run(ctx, o)
	if err != nil {
		fail(err)
	}
	fmt.Print(res.markdown())
	if err := res.write(o.out); err != nil {
		fail(err)
	}
	log.Printf("wrote %s", o.out)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

func intList(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive integer", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// run performs every measurement. The first catch-up run's servers also
// host the latency runs and the ceilings, so that those compare with the
// same data; every other writer count gets fresh servers and a fresh
// backlog.
func run(ctx context.Context, o options) (*results, error) {
	bins, err := prepareBinaries(ctx, o.bin)
	if err != nil {
		return nil, err
	}
	defer bins.cleanup()
	res := &results{
		Started: time.Now().UTC().Format(time.RFC3339),
		Machine: describeMachine(),
		Build:   bins.build,
		Settings: settings{Changes: o.changes, Rates: o.rates, DurationSeconds: o.duration.Seconds(),
			Writers: o.writers, Partitions: o.partitions, Seed: o.seed},
	}
	for i, w := range o.writers {
		if err := runEnv(ctx, o, bins, w, i == 0, res); err != nil {
			return nil, fmt.Errorf("run with %d writer(s): %w", w, err)
		}
	}
	res.summarise()
	return res, nil
}

// runEnv runs one catch-up with w writers on fresh servers and, when first,
// the latency runs and the ceilings too.
func runEnv(ctx context.Context, o options, bins *binaries, w int, first bool, res *results) error {
	log.Printf("starting postgres, nats and redis for the run with %d writer(s)", w)
	e, err := startEnv(ctx, o, bins)
	if err != nil {
		return err
	}
	defer e.close()
	if first {
		res.Machine.addVersions(ctx, e)
	}
	gen, err := newGenerator(ctx, e.pg.URL, o.seed+uint64(w))
	if err != nil {
		return err
	}
	defer gen.close()

	bl, err := commitBacklog(ctx, e, gen, o.changes)
	if err != nil {
		return err
	}
	if first {
		res.Ceilings = append(res.Ceilings, measureCeiling(recvlogicalCeiling(ctx, e, bl)))
	}
	p, cu, err := catchUp(ctx, e, w, bl)
	if err != nil {
		return err
	}
	defer p.stop()
	res.CatchUp = append(res.CatchUp, cu)
	if !first {
		return nil
	}
	for _, rate := range o.rates {
		l, err := steadyState(ctx, e, p, gen, rate, o.duration)
		if err != nil {
			return err
		}
		res.Latency = append(res.Latency, l)
	}
	res.Peaks = p.peaks()
	p.stop()
	for _, rate := range o.rates {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		f, err := postgresFloor(ctx, e, gen, rate, o.duration)
		if err != nil {
			// Recorded, not fatal, as a ceiling's failure is.
			log.Printf("floor: %v", err)
			f = floorResult{Rate: rate, Error: err.Error()}
		}
		res.Floors = append(res.Floors, f)
	}
	for _, measure := range []func(context.Context, *env, int) (ceiling, error){jetstreamCeiling, redisCeiling} {
		res.Ceilings = append(res.Ceilings, measureCeiling(measure(ctx, e, bl.Changes)))
	}
	return ctx.Err()
}

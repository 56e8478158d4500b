package main

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/sluicehq/sluice/pkg/testenv"
)

// catchUpResult is one catch-up run.
type catchUpResult struct {
	Writers int     `json:"writers"`
	Backlog backlog `json:"backlog"`
	// Seconds runs from the services' start until Redis equals Postgres.
	Seconds          float64 `json:"seconds"`
	ChangesPerSecond float64 `json:"changes_per_second"`
	// CapturedSeconds is when the stream held every change.
	CapturedSeconds float64  `json:"captured_seconds"`
	Equal           bool     `json:"redis_equals_postgres"`
	Diffs           []string `json:"diffs,omitempty"`
	CPU             []cpuUse `json:"cpu"`
	Peaks           []peak   `json:"peak_rss"`
}

// peak is a service's peak resident memory.
type peak struct {
	Process    string  `json:"process"`
	PeakRSSMiB float64 `json:"peak_rss_mib"`
}

// stallTimeout is how long the pipeline may make no progress before a run
// is given up.
const stallTimeout = 2 * time.Minute

// catchUp starts the services on the committed backlog and times them
// until Redis equals Postgres, then checks every row. The pipeline is left
// running for the latency runs.
func catchUp(ctx context.Context, e *env, writers int, bl backlog) (*pipeline, catchUpResult, error) {
	r := catchUpResult{Writers: writers, Backlog: bl}
	log.Printf("catch-up: starting capture and %d writer(s)", writers)
	start := time.Now()
	p, err := startPipeline(e, writers)
	if err != nil {
		return nil, r, err
	}
	before := e.sampleCPU(ctx, p)
	stopProfile, err := e.profileSelf(fmt.Sprintf("writers%d-bench.pprof", writers))
	if err != nil {
		p.stop()
		return nil, r, err
	}
	captured, done, err := waitCaughtUp(ctx, e, p, bl.marker, uint64(bl.Changes))
	stopProfile()
	if err != nil {
		p.stop()
		return nil, r, fmt.Errorf("catch-up: %w", err)
	}
	r.CPU = cpuBetween(before, e.sampleCPU(ctx, p))
	r.Peaks = p.peaks()
	r.Seconds = round(done.Sub(start).Seconds(), 2)
	r.CapturedSeconds = round(captured.Sub(start).Seconds(), 2)
	r.ChangesPerSecond = round(float64(bl.Changes)/done.Sub(start).Seconds(), 0)
	log.Printf("catch-up: %d changes in %.1fs (%.0f/s; the stream held them all after %.1fs); comparing every row",
		bl.Changes, r.Seconds, r.ChangesPerSecond, r.CapturedSeconds)

	diffs, err := testenv.TableDiff(ctx, e.conn, e.rc, benchTable)
	if err != nil {
		p.stop()
		return nil, r, fmt.Errorf("compare redis with postgres: %w", err)
	}
	r.Equal = len(diffs) == 0
	r.Diffs = diffs[:min(len(diffs), 10)]
	if !r.Equal {
		log.Printf("catch-up: redis differs from postgres in %d ways, first: %s", len(diffs), diffs[0])
	}
	return p, r, nil
}

// waitCaughtUp waits until the marker's key is in Redis and every partition
// of the sink is drained: the marker was committed last, so by then every
// change before it has been published, and nothing published is left
// unacknowledged, which a writer does only after Redis applied it. It
// returns when the stream first held wantMsgs events, and when it was done.
// Cheap checks, so that polling does not slow what it measures.
func waitCaughtUp(ctx context.Context, e *env, p *pipeline, marker string, wantMsgs uint64) (captured, done time.Time, err error) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	markerSeen := false
	var lastMsgs, lastPending uint64
	lastProgress := time.Now()
	polls := 0
	for {
		select {
		case <-ctx.Done():
			return captured, done, ctx.Err()
		case <-tick.C:
		}
		now := time.Now()
		var err error
		if err = p.check(); err != nil {
			return captured, done, err
		}
		// Capture serves its metrics for each read: read them every fifth
		// tick only, which times the stream's completion to 0.1 s.
		polls++
		msgs := lastMsgs
		if polls%5 == 1 {
			if msgs, err = p.published(); err != nil {
				return captured, done, fmt.Errorf("capture's metrics: %w", err)
			}
		}
		if captured.IsZero() && msgs >= wantMsgs {
			captured = now
		}
		if !markerSeen {
			n, err := e.rc.Exists(ctx, marker).Result()
			if err != nil {
				return captured, done, fmt.Errorf("redis: %w", err)
			}
			markerSeen = n == 1
		}
		// Before the marker, pending is read only now and then, to see
		// progress.
		pending := lastPending
		if markerSeen || polls%50 == 0 {
			var ok bool
			if pending, ok, err = e.sinkPending(ctx); err != nil {
				return captured, done, fmt.Errorf("consumer info: %w", err)
			}
			if markerSeen && ok && pending == 0 {
				if captured.IsZero() {
					captured = now
				}
				return captured, now, nil
			}
		}
		if msgs != lastMsgs || pending != lastPending {
			lastMsgs, lastPending, lastProgress = msgs, pending, now
		} else if now.Sub(lastProgress) > stallTimeout {
			return captured, done, fmt.Errorf("no progress for %s: the stream holds %d events (want %d), marker in redis: %v", stallTimeout, msgs, wantMsgs, markerSeen)
		}
	}
}

package main

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/pkg/testenv"
)

// latencyResult is one steady-state rate.
type latencyResult struct {
	Rate         int     `json:"rate"`
	Seconds      float64 `json:"seconds"`
	Changes      int     `json:"changes"`
	Transactions int     `json:"transactions"`
	Achieved     float64 `json:"achieved_per_second"`
	// Its samples are the SETs whose commit-to-Redis time was measured,
	// of the keys whose id ends in 7 (see observe); a DEL leaves no value
	// to read a commit time from.
	spread
	// Backlog is committed changes not yet in Redis: not yet in the stream,
	// or in it and not acknowledged by the sink, sampled twice a second.
	PeakBacklog    int64   `json:"peak_backlog"`
	EndBacklog     int64   `json:"end_backlog"`
	BacklogSamples []int64 `json:"backlog_samples"`
	// DrainSeconds runs from the load's end until Redis equals Postgres.
	DrainSeconds float64  `json:"drain_seconds"`
	KeptUp       bool     `json:"kept_up"`
	CPU          []cpuUse `json:"cpu"`
}

// loadTick is how often the load generator commits: each transaction holds
// the changes due since the last one.
const loadTick = 10 * time.Millisecond

// markerID gives each run's marker row its own id; the load uses positive
// ids, the backlog's marker -1.
var markerID atomic.Int64

func init() { markerID.Store(-1) }

// steadyState commits rate changes a second for d while an observer times
// each change's arrival in Redis.
func steadyState(ctx context.Context, e *env, p *pipeline, g *generator, rate int, d time.Duration) (latencyResult, error) {
	r := latencyResult{Rate: rate}
	log.Printf("latency: %d changes/s for %s", rate, d)
	if err := e.rc.ConfigSet(ctx, "notify-keyspace-events", "K$").Err(); err != nil {
		return r, fmt.Errorf("enable keyspace notifications: %w", err)
	}
	defer e.rc.ConfigSet(context.WithoutCancel(ctx), "notify-keyspace-events", "")
	base, err := p.handled()
	if err != nil {
		return r, err
	}
	start := time.Now()
	obs, err := observe(ctx, e.redis, benchTable, start)
	if err != nil {
		return r, err
	}
	defer obs.stop()
	before := e.sampleCPU(ctx, p)

	var committed atomic.Int64
	// The backlog: changes committed and not yet settled by a writer.
	backlogNow := func() (int64, error) {
		handled, err := p.handled()
		if err != nil {
			return 0, err
		}
		return committed.Load() - int64(handled-base), nil
	}
	samplerDone := make(chan struct{})
	stopSampler := make(chan struct{})
	go func() {
		defer close(samplerDone)
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stopSampler:
				return
			case <-t.C:
			}
			if b, err := backlogNow(); err == nil {
				r.PeakBacklog = max(r.PeakBacklog, b)
				r.BacklogSamples = append(r.BacklogSamples, b)
			}
		}
	}()

	n, err := hold(ctx, g, rate, d, start, &committed)
	r.Transactions = n
	loadEnd := time.Now()
	close(stopSampler)
	<-samplerDone
	if err != nil {
		return r, err
	}
	r.Seconds = round(loadEnd.Sub(start).Seconds(), 2)
	r.Changes = int(committed.Load())
	r.Achieved = round(float64(r.Changes)/loadEnd.Sub(start).Seconds(), 0)
	if r.EndBacklog, err = backlogNow(); err != nil {
		return r, err
	}
	r.PeakBacklog = max(r.PeakBacklog, r.EndBacklog)

	key, err := g.marker(ctx, markerID.Add(-1))
	if err != nil {
		return r, err
	}
	_, done, err := waitCaughtUp(ctx, e, p, key, base+uint64(r.Changes)+1)
	if err != nil {
		return r, fmt.Errorf("latency at %d/s: %w", rate, err)
	}
	r.DrainSeconds = round(done.Sub(loadEnd).Seconds(), 2)
	r.CPU = cpuBetween(before, e.sampleCPU(ctx, p))
	time.Sleep(200 * time.Millisecond) // the observer's last notifications
	lat := obs.stop()
	r.spread = summarise(lat)
	// Kept up: the generator held the rate, and at the end of the load
	// less than a second of changes was still on its way.
	r.KeptUp = r.Achieved >= 0.97*float64(rate) && r.EndBacklog <= int64(rate)
	log.Printf("latency: %d/s achieved %.0f/s; p50 %.1f ms, p99 %.1f ms, p99.9 %.1f ms, max %.1f ms over %d values; backlog peak %d, at the end %d; kept up: %v",
		rate, r.Achieved, r.P50Ms, r.P99Ms, r.P999Ms, r.MaxMs, r.Samples, r.PeakBacklog, r.EndBacklog, r.KeptUp)
	return r, nil
}

// hold commits rate changes a second from start until d has passed, one
// transaction every loadTick holding the changes due, and counts them in
// committed; it returns how many transactions it committed.
func hold(ctx context.Context, g *generator, rate int, d time.Duration, start time.Time, committed *atomic.Int64) (int, error) {
	tick := time.NewTicker(loadTick)
	defer tick.Stop()
	txns := 0
	for time.Since(start) < d {
		select {
		case <-ctx.Done():
			return txns, ctx.Err()
		case <-tick.C:
		}
		due := int(float64(rate)*time.Since(start).Seconds()) - int(committed.Load())
		if due <= 0 {
			continue
		}
		n, err := g.commit(ctx, g.plan(min(due, maxTxn)))
		if err != nil {
			return txns, err
		}
		committed.Add(int64(n))
		txns++
	}
	return txns, nil
}

// spread summarises latencies, in milliseconds.
type spread struct {
	Samples int     `json:"samples"`
	MeanMs  float64 `json:"mean_ms"`
	P50Ms   float64 `json:"p50_ms"`
	P99Ms   float64 `json:"p99_ms"`
	P999Ms  float64 `json:"p99_9_ms"`
	MaxMs   float64 `json:"max_ms"`
}

// summarise returns the spread of lat, which it sorts.
func summarise(lat []float64) spread {
	if len(lat) == 0 {
		return spread{}
	}
	slices.Sort(lat)
	var sum float64
	for _, v := range lat {
		sum += v
	}
	q := func(f float64) float64 {
		i := int(math.Ceil(f*float64(len(lat)))) - 1
		return round(lat[min(max(i, 0), len(lat)-1)], 2)
	}
	return spread{Samples: len(lat), MeanMs: round(sum/float64(len(lat)), 2), P50Ms: q(0.5), P99Ms: q(0.99), P999Ms: q(0.999), MaxMs: round(lat[len(lat)-1], 2)}
}

// sampled ends the keys the observer times.
const sampled = "7"

// observer times each value's arrival in Redis from keyspace notifications:
// the arrival is when the notification is received, the commit time is the
// value's metadata.commit_timestamp (Postgres runs on this machine, so
// both are this machine's clock).
type observer struct {
	rc    *redis.Client
	sub   *redis.PubSub
	since time.Time
	notes chan note
	done  chan struct{}
	once  sync.Once
	lat   []float64 // milliseconds
}

type note struct {
	key string
	at  time.Time
}

func observe(ctx context.Context, r *testenv.Redis, t testenv.Table, since time.Time) (*observer, error) {
	o := &observer{rc: r.Client(), since: since, notes: make(chan note, 1<<18), done: make(chan struct{})}
	// One key in ten, those whose id ends in 7: observing every value cost
	// the machine as much as a writer does, and its queueing showed in the
	// latencies it measured.
	const channel = "__keyspace@0__:"
	o.sub = o.rc.PSubscribe(ctx, channel+t.KeyPrefix+":"+t.Name+":*"+sampled)
	if _, err := o.sub.Receive(ctx); err != nil {
		o.rc.Close()
		return nil, fmt.Errorf("subscribe to keyspace notifications: %w", err)
	}
	// Receiving only stamps the time, so that reading values never delays
	// the stamp of the next notification.
	go func() {
		defer close(o.notes)
		for {
			m, err := o.sub.ReceiveMessage(ctx)
			if err != nil {
				return
			}
			if m.Payload == "set" {
				o.notes <- note{key: strings.TrimPrefix(m.Channel, channel), at: time.Now()}
			}
		}
	}()
	go o.read(context.WithoutCancel(ctx))
	return o, nil
}

// read gets the values of notified keys in pipelined batches.
func (o *observer) read(ctx context.Context) {
	defer close(o.done)
	batch := make([]note, 0, 512)
	for n := range o.notes {
		batch = append(batch[:0], n)
	more:
		for len(batch) < cap(batch) {
			select {
			case n, ok := <-o.notes:
				if !ok {
					break more
				}
				batch = append(batch, n)
			default:
				break more
			}
		}
		pipe := o.rc.Pipeline()
		gets := make([]*redis.StringCmd, len(batch))
		for i, n := range batch {
			gets[i] = pipe.Get(ctx, n.key)
		}
		_, _ = pipe.Exec(ctx)
		for i, g := range gets {
			b, err := g.Bytes()
			if err != nil {
				continue // deleted meanwhile
			}
			ts, ok := commitTime(b)
			if !ok || ts.Before(o.since) {
				continue
			}
			o.lat = append(o.lat, float64(batch[i].at.Sub(ts).Microseconds())/1000)
		}
	}
}

// stop ends the subscription and returns the latencies measured.
func (o *observer) stop() []float64 {
	o.once.Do(func() {
		o.sub.Close()
		<-o.done
		o.rc.Close()
	})
	return o.lat
}

// commitTime finds metadata.commit_timestamp in a message JSON without
// decoding all of it.
func commitTime(v []byte) (time.Time, bool) {
	const field = `"commit_timestamp":`
	i := bytes.Index(v, []byte(field))
	if i < 0 {
		return time.Time{}, false
	}
	rest := bytes.TrimLeft(v[i+len(field):], " ")
	if len(rest) == 0 || rest[0] != '"' {
		return time.Time{}, false
	}
	end := bytes.IndexByte(rest[1:], '"')
	if end < 0 {
		return time.Time{}, false
	}
	ts, err := time.Parse(time.RFC3339Nano, string(rest[1:1+end]))
	return ts, err == nil
}

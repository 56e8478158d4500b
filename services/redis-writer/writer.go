// Package rediswriter is the Redis writer service: for one sink it consumes
// the partitions it owns, writes each change to Redis as a versioned SET or
// DEL in pipelined batches, and acknowledges a message only after Redis
// applied (or, the change being older than the key's, skipped) every
// command of it.
//
// Any number of writers of one sink may run: they share the partitions
// (package group), and the versioned writes keep every key at its latest
// committed change whatever order batches land in, through scale-out,
// crashes, pauses and redeliveries.
package rediswriter

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/sluicehq/sluice/pkg/admin"
	"github.com/sluicehq/sluice/pkg/backfill"
	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/deadletter"
	"github.com/sluicehq/sluice/pkg/fragment"
	"github.com/sluicehq/sluice/pkg/topology"
	"github.com/sluicehq/sluice/services/redis-writer/internal/command"
	"github.com/sluicehq/sluice/services/redis-writer/internal/group"
	"github.com/sluicehq/sluice/services/redis-writer/internal/store"
)

const (
	// applyTimeout bounds one batch's round trip to Redis.
	applyTimeout = 30 * time.Second
	// While Redis is unavailable, the held messages are tried again after
	// holdMin, then twice as long each time, up to holdMax: a restarted
	// Redis is written to again within seconds.
	holdMin, holdMax = 100 * time.Millisecond, 5 * time.Second
	// tickEvery paces the backlog gauges and, when idle, the Redis ping.
	tickEvery = 5 * time.Second
)

// Service writes one sink.
type Service struct {
	cfg     *config.Config
	sink    *config.Sink
	log     *zap.Logger
	topo    topology.Topology
	tables  map[string]bool
	actions map[string]bool
	id      string
	warn    throttle
}

// New returns a writer of the sink called name.
func New(cfg *config.Config, name string, log *zap.Logger) (*Service, error) {
	sink, err := cfg.Sink(name)
	if err != nil {
		return nil, err
	}
	id := group.NewID()
	s := &Service{cfg: cfg, sink: sink, log: log.With(zap.String("sink", name), zap.String("writer", id)), topo: topology.New(cfg.NATS),
		tables: map[string]bool{}, actions: map[string]bool{}, id: id}
	// Each lane renders with its own renderer; this one checks the sink.
	if _, err := s.renderer(); err != nil {
		return nil, err
	}
	for _, t := range sink.Tables {
		s.tables[t] = true
	}
	for _, a := range sink.Actions {
		s.actions[a] = true
	}
	return s, nil
}

// Run writes until ctx is cancelled; then it finishes and acknowledges the
// batch in flight, hands back the messages it holds, leaves the group and
// returns nil.
//
// While Redis is unavailable (down, loading, read-only, out of memory, or
// refusing the user), the writer holds the messages it has, keeps them
// from being redelivered, reports itself not ready, and tries again with
// backoff until Redis takes them; the sink's backlog waits in the stream.
//
// A writer writes only while its lease in the group holds: one that was
// paused or cut off past the failover time gives up everything it holds
// before it writes again, since its partitions may have moved on.
func (s *Service) Run(ctx context.Context) error {
	store.LogTo(s.log)
	st, err := store.Open(ctx, s.sink.Destination)
	if err != nil {
		return fmt.Errorf("sink %s: %w", s.sink.Name, err)
	}
	defer st.Close()
	nc, js, err := topology.Dial(s.cfg.NATS, "sluice-redis-writer "+s.sink.Name, s.log)
	if err != nil {
		return err
	}
	defer nc.Close()
	// A writer may start before the cluster has elected its leaders.
	stream, err := topology.Create(ctx, s.log, "create stream "+s.topo.Stream, func(ctx context.Context) (jetstream.Stream, error) {
		return s.topo.Ensure(ctx, js, *s.sink)
	})
	if err != nil {
		return err
	}
	retries, err := topology.Create(ctx, s.log, "create stream "+s.topo.RetryStream(), func(ctx context.Context) (jetstream.Consumer, error) {
		return s.topo.EnsureRetries(ctx, js, *s.sink)
	})
	if err != nil {
		return err
	}
	box, err := topology.Create(ctx, s.log, "create stream "+deadletter.StreamName(s.topo), func(ctx context.Context) (*deadletter.Box, error) {
		return deadletter.Open(ctx, js, s.topo)
	})
	if err != nil {
		return err
	}
	jobs, err := topology.Create(ctx, s.log, "create bucket "+backfill.BucketName(s.topo), func(ctx context.Context) (*backfill.Store, error) {
		return backfill.Open(ctx, js, s.topo)
	})
	if err != nil {
		return err
	}
	g, err := topology.Create(ctx, s.log, "join bucket "+s.topo.MembersBucket(s.sink.Name), func(ctx context.Context) (*group.Group, error) {
		return group.Join(ctx, js, s.topo.MembersBucket(s.sink.Name), s.id, s.sink.Failover, s.topo.Replicas, s.log)
	})
	if err != nil {
		return err
	}

	held := &holding{msgs: map[jetstream.Msg]struct{}{}}
	msgs := make(chan delivery, 64)
	receive := func(gen uint64) jetstream.MessageHandler {
		return func(m jetstream.Msg) {
			held.add(m)
			msgs <- delivery{m, gen}
		}
	}
	expiry := max(time.Second, s.sink.Failover/3)
	l := &loop{Service: s, st: st, group: g, jobs: jobs, held: held, msgs: msgs, done: make(chan *lane, lanes),
		cons: newConsumers(stream, st, s.topo, *s.sink, receive, expiry, s.log, &s.warn),
		up:   redisUp.WithLabelValues(s.sink.Name)}
	m := newSinkMetrics(s.sink.Name)
	for range lanes {
		render, err := s.renderer()
		if err != nil {
			return err
		}
		l.lanes = append(l.lanes, &lane{a: &applier{Service: s, store: st, box: box, js: js, changes: stream, m: m, holding: held, render: render, fencedOut: map[int]bool{}}})
	}
	st.EnableFences(s.sink.Name, s.id, s.topo.Partitions, l.leaseHolds)
	g.Report(l.cons.state)
	l.cons.onChange = g.Touch
	parked, err := retries.Consume(receive(0), jetstream.PullMaxMessages(16), jetstream.PullExpiry(expiry),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) { s.warn.log(s.log, "consume changes to retry", err) }))
	if err != nil {
		return fmt.Errorf("consume changes to retry: %w", err)
	}
	defer parked.Stop()

	// Membership changes arrive on their own goroutine; the loop applies
	// only the latest assignment.
	assigned := make(chan []int, 1)
	gctx, leave := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Go(func() {
		_ = g.Run(gctx, l.alive, func(members []string) {
			mine := s.topo.Assign(members, s.id)
			s.log.Info("partitions assigned", zap.Ints("partitions", mine), zap.Int("writers", len(members)))
			select {
			case <-assigned:
			default:
			}
			assigned <- mine
		})
	})
	wg.Go(func() { held.keepAlive(gctx, s.sink.AckWait/3, l.alive) })
	admin.Ready("redis writer "+s.sink.Name, func() error {
		if err := l.ready(); err != nil {
			return err
		}
		return topology.Connected(nc)
	})
	l.progress.Store(time.Now().UnixNano())
	admin.Live("redis writer "+s.sink.Name, func() error {
		// Redis calls are bounded by applyTimeout; a loop quiet for much
		// longer is stuck, and only a restart frees it.
		if quiet := l.quiet(); quiet > 4*applyTimeout {
			return fmt.Errorf("the apply loop made no progress for %s", quiet.Round(time.Second))
		}
		return nil
	})
	l.up.Set(1)
	l.checkRedis(ctx)
	wg.Go(func() { l.watchRedis(gctx) })
	s.log.Info("writing", zap.String("redis", st.Addr()))
	err = l.run(ctx, assigned)
	parked.Stop()
	l.drainReleased(context.WithoutCancel(ctx), msgs)
	leave()
	wg.Wait()
	// Acks are asynchronous: send them before the connection closes.
	if ferr := nc.FlushTimeout(5 * time.Second); err == nil {
		err = ferr
	}
	return err
}

func fragmented(m jetstream.Msg) bool { return m.Headers().Get(fragment.Header) != "" }

// drain returns what arrives on msgs until it has been quiet for a moment:
// the stopped consumers' last deliveries.
// drainReleased hands back what the released consumers still deliver, and
// unpins each partition once its consumer closed, so that its next owner
// starts after everything of it is handed back; after 5 s it unpins the
// rest anyway.
func (l *loop) drainReleased(ctx context.Context, msgs <-chan delivery) {
	deadline := time.After(5 * time.Second)
	quiet := time.NewTimer(200 * time.Millisecond)
	defer quiet.Stop()
	for {
		select {
		case d := <-msgs:
			l.handBack([]jetstream.Msg{d.m})
			continue
		case p := <-l.cons.drained:
			l.cons.unpin(ctx, p)
			continue
		case <-deadline:
			for p := range l.cons.releasing {
				l.cons.unpin(ctx, p)
			}
		case <-quiet.C:
			if len(l.cons.releasing) > 0 {
				quiet.Reset(200 * time.Millisecond)
				continue
			}
		}
		// What the closed consumers delivered last may still wait here.
		for {
			select {
			case d := <-msgs:
				l.handBack([]jetstream.Msg{d.m})
			default:
				return
			}
		}
	}
}

// holding is the set of messages a writer received and has not settled.
// It keeps them from being redelivered while they wait (behind an outage,
// or a long batch) by telling JetStream now and then that they are in
// progress, as long as the writer's loop is alive.
type holding struct {
	mu   sync.Mutex
	msgs map[jetstream.Msg]struct{}
}

func (h *holding) add(m jetstream.Msg) {
	h.mu.Lock()
	h.msgs[m] = struct{}{}
	h.mu.Unlock()
}

func (h *holding) remove(m jetstream.Msg) {
	h.mu.Lock()
	delete(h.msgs, m)
	h.mu.Unlock()
}

// purge hands back what is held of partition p that nothing else holds
// any more.
func (h *holding) purge(p int, handBack func([]jetstream.Msg)) {
	h.mu.Lock()
	var lost []jetstream.Msg
	for m := range h.msgs {
		if partition(m) == p {
			lost = append(lost, m)
		}
	}
	h.mu.Unlock()
	handBack(lost)
}

// keepAlive marks every held message in progress each period while alive
// says the writer's loop goes round, until ctx is done. A stuck loop lets
// its messages go to other writers.
func (h *holding) keepAlive(ctx context.Context, period time.Duration, alive func() bool) {
	every(ctx, period, func() {
		if !alive() {
			return
		}
		h.mu.Lock()
		msgs := make([]jetstream.Msg, 0, len(h.msgs))
		for m := range h.msgs {
			msgs = append(msgs, m)
		}
		h.mu.Unlock()
		for _, m := range msgs {
			_ = m.InProgress()
		}
	})
}

// renderer returns a renderer of the sink's commands, which gives a row's
// old key the partition the row's changes travel on.
func (s *Service) renderer() (*command.Renderer, error) {
	r, err := command.NewRenderer(s.sink, s.cfg.Postgres, s.topo.Partition)
	if err != nil {
		return nil, fmt.Errorf("sink %s: %w", s.sink.Name, err)
	}
	return r, nil
}

// every calls f each period until ctx is done.
func every(ctx context.Context, period time.Duration, f func()) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}

// throttle logs a recurring failure once, then at most every 10 seconds
// with the count in between.
type throttle struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func (t *throttle) log(log *zap.Logger, what string, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if time.Since(t.last) < 10*time.Second {
		t.suppressed++
		return
	}
	log.Warn(what+" failed; retrying", zap.Error(err), zap.Int("more_failures", t.suppressed))
	t.last, t.suppressed = time.Now(), 0
}

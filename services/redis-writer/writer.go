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
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/sluicehq/sluice/pkg/change"
	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/deadletter"
	"github.com/sluicehq/sluice/pkg/fragment"
	"github.com/sluicehq/sluice/pkg/metrics"
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
	render  *command.Renderer
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
	render, err := command.NewRenderer(sink)
	if err != nil {
		return nil, fmt.Errorf("sink %s: %w", name, err)
	}
	id := group.NewID()
	s := &Service{cfg: cfg, sink: sink, log: log.With(zap.String("sink", name), zap.String("writer", id)), topo: topology.New(cfg.NATS),
		render: render, tables: map[string]bool{}, actions: map[string]bool{}, id: id}
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
func (s *Service) Run(ctx context.Context) error {
	store.LogTo(s.log)
	st, err := store.Open(ctx, s.sink.Destination)
	if err != nil {
		return fmt.Errorf("sink %s: %w", s.sink.Name, err)
	}
	defer st.Close()
	nc, js, err := topology.Dial(s.cfg.NATS.URL, "sluice-redis-writer "+s.sink.Name, s.log)
	if err != nil {
		return err
	}
	defer nc.Close()
	stream, err := s.topo.Ensure(ctx, js, *s.sink)
	if err != nil {
		return err
	}
	retries, err := s.topo.EnsureRetries(ctx, js, *s.sink)
	if err != nil {
		return err
	}
	box, err := deadletter.Open(ctx, js, s.topo)
	if err != nil {
		return err
	}
	g, err := group.Join(ctx, js, s.topo.MembersBucket(s.sink.Name), s.id, s.sink.Failover, s.topo.Replicas, s.log)
	if err != nil {
		return err
	}

	held := &holding{msgs: map[jetstream.Msg]struct{}{}}
	msgs := make(chan jetstream.Msg, 64)
	receive := func(m jetstream.Msg) {
		held.add(m)
		msgs <- m
	}
	expiry := max(time.Second, s.sink.Failover/3)
	cons := &consumers{stream: stream, sink: s.sink.Name, receive: receive, expiry: expiry, log: s.log, warn: &s.warn,
		running: map[int]jetstream.ConsumeContext{}, handlers: map[int]jetstream.Consumer{}}
	parked, err := retries.Consume(receive, jetstream.PullMaxMessages(16), jetstream.PullExpiry(expiry),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) { s.warn.log(s.log, "consume changes to retry", err) }))
	if err != nil {
		return fmt.Errorf("consume changes to retry: %w", err)
	}

	// Membership changes arrive on their own goroutine; the loop below
	// applies only the latest assignment.
	assigned := make(chan []int, 1)
	gctx, leave := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		_ = g.Run(gctx, func(members []string) {
			mine := s.topo.Assign(members, s.id)
			s.log.Info("partitions assigned", zap.Ints("partitions", mine), zap.Int("writers", len(members)))
			select {
			case <-assigned:
			default:
			}
			assigned <- mine
		})
	}()
	var progress atomic.Int64 // when the loop last went round
	go func() {
		defer wg.Done()
		held.keepAlive(gctx, s.sink.AckWait/3, func() bool {
			return time.Since(time.Unix(0, progress.Load())) < applyTimeout+2*tickEvery
		})
	}()

	var stopping atomic.Bool               // read by the /readyz handler's goroutine
	var unavailable atomic.Pointer[string] // why Redis is not taking writes
	metrics.Ready("redis writer "+s.sink.Name, func() error {
		if stopping.Load() {
			return errors.New("stopping")
		}
		if why := unavailable.Load(); why != nil {
			return fmt.Errorf("cannot write: %s", *why)
		}
		return nil
	})
	up := redisUp.WithLabelValues(s.sink.Name)
	up.Set(1)
	s.log.Info("writing", zap.String("redis", st.Addr()))

	a := &applier{Service: s, store: st, box: box, js: js, changes: stream, m: newSinkMetrics(s.sink.Name), holding: held}
	var queue []jetstream.Msg // received, not started
	var retryAt <-chan time.Time
	var delay time.Duration
	// available records whether Redis (or NATS, for parking) takes writes.
	available := func(err error) {
		if err == nil {
			if unavailable.Swap(nil) != nil {
				s.log.Info("writing again")
				up.Set(1)
			}
			return
		}
		why := err.Error()
		if unavailable.Swap(&why) == nil {
			up.Set(0)
		}
	}
	// outcome follows an attempt: nil, or why messages are held.
	outcome := func(err error) {
		available(err)
		if err == nil {
			retryAt, delay = nil, 0
			return
		}
		s.warn.log(s.log, "write (unavailable: holding the partitions until it comes back)", err)
		delay = min(max(2*delay, holdMin), holdMax)
		retryAt = time.After(delay)
	}
	tick := time.NewTicker(tickEvery)
	defer tick.Stop()
	ready := make(chan struct{})
	close(ready)
	for {
		progress.Store(time.Now().UnixNano())
		var work <-chan struct{} // ready when a batch can start
		if len(a.held) == 0 && len(queue) > 0 {
			work = ready
		}
		select {
		case <-ctx.Done():
			stopping.Store(true)
			cons.stopAll()
			parked.Stop()
			// What the stopped consumers still deliver, and what waits,
			// goes back to JetStream, to be redelivered to the others.
			a.release()
			handBack(append(queue, drain(msgs)...), held)
			leave()
			wg.Wait()
			// Acks are asynchronous: send them before the connection closes.
			return nc.FlushTimeout(5 * time.Second)
		case mine := <-assigned:
			if err := cons.set(ctx, mine); err != nil {
				s.warn.log(s.log, "start partition consumers", err)
			}
		case <-tick.C:
			cons.updatePending(ctx)
			if len(a.held) == 0 && len(queue) == 0 {
				// Idle: readiness still tells whether Redis answers.
				pctx, cancel := context.WithTimeout(ctx, tickEvery)
				available(st.Ping(pctx))
				cancel()
			}
		case m := <-msgs:
			queue = append(queue, m)
		case <-work:
			// Take in what has arrived meanwhile, for a fuller batch.
		more:
			for len(queue) < s.sink.BatchSize {
				select {
				case m := <-msgs:
					queue = append(queue, m)
				default:
					break more
				}
			}
			// A batch takes messages (each holding changes) until it holds
			// batch_size changes or none waits. A message in fragments, a
			// large change, is a batch of its own: what the writer holds
			// stays bounded.
			n, events := 1, max(change.CountEvents(queue[0].Data()), 1)
			for n < len(queue) && events < s.sink.BatchSize && !fragmented(queue[0]) && !fragmented(queue[n]) {
				events += max(change.CountEvents(queue[n].Data()), 1)
				n++
			}
			batch := queue[:n:n]
			if queue = queue[n:]; len(queue) == 0 {
				queue = nil
			}
			// The batch completes even when shutdown begins meanwhile.
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), applyTimeout)
			outcome(a.apply(actx, batch))
			cancel()
		case <-retryAt:
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), applyTimeout)
			outcome(a.retry(actx))
			cancel()
		}
	}
}

func fragmented(m jetstream.Msg) bool { return m.Headers().Get(fragment.Header) != "" }

// drain returns what arrives on msgs until it has been quiet for a moment:
// the stopped consumers' last deliveries.
func drain(msgs <-chan jetstream.Msg) []jetstream.Msg {
	var got []jetstream.Msg
	for {
		select {
		case m := <-msgs:
			got = append(got, m)
		case <-time.After(200 * time.Millisecond):
			return got
		}
	}
}

// handBack returns messages received but not started to JetStream, which
// redelivers them at once, to the sink's other writers.
func handBack(msgs []jetstream.Msg, held *holding) {
	for _, m := range msgs {
		held.remove(m)
		_ = m.Nak()
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

// keepAlive marks every held message in progress each period while alive
// says the writer's loop goes round, until ctx is done. A stuck loop lets
// its messages go to other writers.
func (h *holding) keepAlive(ctx context.Context, period time.Duration, alive func() bool) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !alive() {
			continue
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

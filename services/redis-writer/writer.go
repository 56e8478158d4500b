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
	"github.com/sluicehq/sluice/pkg/metrics"
	"github.com/sluicehq/sluice/pkg/topology"
	"github.com/sluicehq/sluice/services/redis-writer/internal/command"
	"github.com/sluicehq/sluice/services/redis-writer/internal/group"
	"github.com/sluicehq/sluice/services/redis-writer/internal/store"
)

const (
	// applyTimeout bounds one batch's round trip to Redis.
	applyTimeout = 30 * time.Second
	maxNakDelay  = time.Minute
	maxPause     = 5 * time.Second
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
	box, err := deadletter.Open(ctx, js, s.topo)
	if err != nil {
		return err
	}
	g, err := group.Join(ctx, js, s.topo.MembersBucket(s.sink.Name), s.id, s.sink.Failover, s.topo.Replicas, s.log)
	if err != nil {
		return err
	}

	batchSize := s.sink.BatchSize
	msgs := make(chan jetstream.Msg, 64)
	cons := &consumers{stream: stream, sink: s.sink.Name, msgs: msgs,
		expiry: max(time.Second, s.sink.Failover/3), log: s.log, warn: &s.warn,
		running: map[int]jetstream.ConsumeContext{}, handlers: map[int]jetstream.Consumer{}}

	// Membership changes arrive on their own goroutine; the loop below
	// applies only the latest assignment.
	assigned := make(chan []int, 1)
	gctx, leave := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Add(1)
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
	var stopping atomic.Bool // read by the /readyz handler's goroutine
	metrics.Ready("redis writer "+s.sink.Name, func() error {
		if stopping.Load() {
			return errors.New("stopping")
		}
		return nil
	})
	s.log.Info("writing", zap.String("redis", st.Addr()))

	a := applier{Service: s, store: st, box: box, m: newSinkMetrics(s.sink.Name)}
	var batch []jetstream.Msg
	pause := time.Duration(0)
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			stopping.Store(true)
			cons.stopAll()
			handBack(msgs)
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
		case m := <-msgs:
			// A batch takes messages (each holding changes) until it holds
			// batch_size changes or none waits.
			batch = append(batch[:0], m)
			events := change.CountEvents(m.Data())
		fill:
			for events < batchSize {
				select {
				case m := <-msgs:
					batch = append(batch, m)
					events += max(change.CountEvents(m.Data()), 1)
				default:
					break fill
				}
			}
			// The batch completes even when shutdown begins meanwhile.
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), applyTimeout)
			failed := a.apply(actx, batch)
			cancel()
			if failed == 0 {
				pause = 0
				continue
			}
			// Redis is failing: slow down rather than spin through messages.
			pause = min(max(2*pause, 100*time.Millisecond), maxPause)
			select {
			case <-ctx.Done():
			case <-time.After(pause):
			}
		}
	}
}

// handBack returns to JetStream the messages received but not started, which
// it redelivers at once, to the sink's other writers.
func handBack(msgs <-chan jetstream.Msg) {
	for {
		select {
		case m := <-msgs:
			_ = m.Nak()
		case <-time.After(200 * time.Millisecond): // the stopped consumers' last deliveries
			return
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

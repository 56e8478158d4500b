// Package rediswriter is the Redis writer service: for one sink it consumes
// the sink's durable consumer, writes each change to Redis as a versioned
// SET or DEL in pipelined batches, and acknowledges a message only after
// Redis applied (or, being older, skipped) every command of it.
//
// Any number of writers of one sink may run: they share the consumer, and
// the versioned writes keep every key at its latest committed change
// whatever order their batches land in.
package rediswriter

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/sluicehq/sluice/pkg/change"
	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/topology"
	sluicev1 "github.com/sluicehq/sluice/proto/sluice/v1"
	"github.com/sluicehq/sluice/services/redis-writer/internal/command"
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
	warn    throttle
}

// New returns the writer of the sink called name.
func New(cfg *config.Config, name string, log *zap.Logger) (*Service, error) {
	sink, err := cfg.Sink(name)
	if err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg, sink: sink, log: log.With(zap.String("sink", name)), topo: topology.New(cfg.NATS),
		render: command.NewRenderer(sink), tables: map[string]bool{}, actions: map[string]bool{}}
	for _, t := range sink.Tables {
		s.tables[t] = true
	}
	for _, a := range sink.Actions {
		s.actions[a] = true
	}
	return s, nil
}

// Run writes until ctx is cancelled; then it finishes and acknowledges the
// batch in flight, hands back the messages it holds, and returns nil.
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
	cons, err := stream.Consumer(ctx, topology.ConsumerName(s.sink.Name))
	if err != nil {
		return fmt.Errorf("open consumer of sink %s: %w", s.sink.Name, err)
	}
	batchSize := s.sink.BatchSize
	msgs := make(chan jetstream.Msg, batchSize)
	cc, err := cons.Consume(func(m jetstream.Msg) { msgs <- m },
		jetstream.PullMaxMessages(2*batchSize),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			s.warn.log(s.log, "consume from nats", err)
		}))
	if err != nil {
		return fmt.Errorf("consume sink %s: %w", s.sink.Name, err)
	}
	s.log.Info("writing", zap.String("redis", st.Addr()), zap.String("consumer", topology.ConsumerName(s.sink.Name)))

	batch := make([]jetstream.Msg, 0, batchSize)
	pause := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			s.handBack(cc, msgs)
			// Acks are asynchronous: send them before the connection closes.
			return nc.FlushTimeout(5 * time.Second)
		case m := <-msgs:
			batch = append(batch[:0], m)
		fill:
			for len(batch) < batchSize {
				select {
				case m := <-msgs:
					batch = append(batch, m)
				default:
					break fill
				}
			}
			// The batch completes even when shutdown begins meanwhile.
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), applyTimeout)
			failed := s.apply(actx, st, batch)
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

// apply writes one batch and acknowledges what succeeded. It returns how
// many messages failed; those are redelivered after a growing delay.
func (s *Service) apply(ctx context.Context, st *store.Store, batch []jetstream.Msg) (failed int) {
	cmds := make([]command.Command, 0, len(batch))
	owner := make([]int, 0, len(batch)) // the message of each command
	pending := make([]bool, len(batch))
	for i, m := range batch {
		var ev sluicev1.ChangeEvent
		if err := proto.Unmarshal(m.Data(), &ev); err != nil {
			s.log.Error("dropping an event that cannot be decoded", zap.String("subject", m.Subject()), zap.Error(err))
			_ = m.Term()
			continue
		}
		if !s.tables[ev.Schema+"."+ev.Table] || !s.actions[change.Action(ev.Action)] {
			_ = m.Ack()
			continue
		}
		n := len(cmds)
		cmds = s.render.Append(cmds, &ev)
		for range cmds[n:] {
			owner = append(owner, i)
		}
		pending[i] = true
	}
	if len(cmds) == 0 {
		return 0
	}
	errs, _ := st.Apply(ctx, cmds)
	errOf := make([]error, len(batch))
	for j, err := range errs {
		if err != nil && errOf[owner[j]] == nil {
			errOf[owner[j]] = err
		}
	}
	for i, m := range batch {
		if !pending[i] {
			continue
		}
		if errOf[i] == nil {
			_ = m.Ack()
			continue
		}
		failed++
		s.warn.log(s.log, "write to redis", errOf[i])
		_ = m.NakWithDelay(nakDelay(m))
	}
	return failed
}

// nakDelay doubles with every delivery: 1s, 2s, 4s … up to a minute.
func nakDelay(m jetstream.Msg) time.Duration {
	n := uint64(1)
	if md, err := m.Metadata(); err == nil && md.NumDelivered > 0 {
		n = min(md.NumDelivered, 7)
	}
	return min(time.Second<<(n-1), maxNakDelay)
}

// handBack stops consuming and returns the messages not yet written to
// JetStream, which redelivers them at once, to this sink's other writers.
func (s *Service) handBack(cc jetstream.ConsumeContext, msgs chan jetstream.Msg) {
	cc.Stop()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case m := <-msgs:
			_ = m.Nak()
		case <-cc.Closed():
			for {
				select {
				case m := <-msgs:
					_ = m.Nak()
				default:
					return
				}
			}
		case <-timeout:
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

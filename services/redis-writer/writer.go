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
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/sluicehq/sluice/pkg/backfill"
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
	render, err := command.NewRenderer(sink, cfg.Postgres)
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
	jobs, err := backfill.Open(ctx, js, s.topo)
	if err != nil {
		return err
	}
	g, err := group.Join(ctx, js, s.topo.MembersBucket(s.sink.Name), s.id, s.sink.Failover, s.topo.Replicas, s.log)
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
	l := &loop{Service: s, st: st, group: g, jobs: jobs, held: held, msgs: msgs,
		cons: newConsumers(stream, st, s.sink.Name, receive, expiry, s.log, &s.warn),
		a:    &applier{Service: s, store: st, box: box, js: js, changes: stream, m: newSinkMetrics(s.sink.Name), holding: held},
		up:   redisUp.WithLabelValues(s.sink.Name)}
	st.EnableFences(s.sink.Name, s.id, l.leaseHolds)
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
	go func() {
		defer wg.Done()
		held.keepAlive(gctx, s.sink.AckWait/3, func() bool {
			return time.Since(time.Unix(0, l.progress.Load())) < applyTimeout+2*tickEvery
		})
	}()
	metrics.Ready("redis writer "+s.sink.Name, l.ready)
	l.up.Set(1)
	l.checkPolicy(ctx)
	if err := l.checkReset(ctx); err != nil {
		s.warn.log(s.log, "check whether redis lost its data", err)
	}
	s.log.Info("writing", zap.String("redis", st.Addr()))
	err = l.run(ctx, assigned)
	parked.Stop()
	for _, d := range drain(msgs) {
		l.handBack([]jetstream.Msg{d.m})
	}
	for p := range l.cons.releasing {
		l.cons.unpin(context.WithoutCancel(ctx), p) // now that all of it is handed back
	}
	leave()
	wg.Wait()
	// Acks are asynchronous: send them before the connection closes.
	if ferr := nc.FlushTimeout(5 * time.Second); err == nil {
		err = ferr
	}
	return err
}

// loop is the writer's main loop and its state; one goroutine runs it.
type loop struct {
	*Service
	st       *store.Store
	group    *group.Group
	jobs     *backfill.Store // backfill jobs, and the record of the sink's Redis
	cons     *consumers
	a        *applier
	held     *holding
	msgs     <-chan delivery
	queue    []jetstream.Msg // received, not started
	lapses   uint64          // of the lease, as last seen
	retryAt  <-chan time.Time
	delay    time.Duration
	up       prometheus.Gauge
	policy   string       // Redis's maxmemory-policy, as last read
	progress atomic.Int64 // when the loop last went round

	stopping    atomic.Bool            // read by the /readyz handler's goroutine
	unavailable atomic.Pointer[string] // why Redis is not taking writes
}

func (l *loop) ready() error {
	if l.stopping.Load() {
		return errors.New("stopping")
	}
	if why := l.unavailable.Load(); why != nil {
		return fmt.Errorf("cannot write: %s", *why)
	}
	return nil
}

func (l *loop) run(ctx context.Context, assigned <-chan []int) error {
	tick := time.NewTicker(tickEvery)
	defer tick.Stop()
	ready := make(chan struct{})
	close(ready)
	for {
		l.progress.Store(time.Now().UnixNano())
		var work <-chan struct{} // ready when a batch can start
		if len(l.a.held) == 0 && len(l.queue) > 0 {
			work = ready
		}
		select {
		case <-ctx.Done():
			l.stopping.Store(true)
			// What the stopped consumers still deliver, and what waits,
			// goes back to JetStream, to be redelivered to the others.
			l.cons.releaseAll()
			l.a.release(nil)
			l.handBack(l.queue)
			l.queue = nil
			return nil
		case mine := <-assigned:
			if !l.leased() {
				l.cons.want = mine // taken once the lease holds again
				continue
			}
			released, err := l.cons.set(ctx, mine)
			l.giveUp(released)
			if err != nil {
				l.warn.log(l.log, "start partition consumers", err)
			}
		case p := <-l.cons.drained:
			l.cons.unpin(ctx, p)
			if !l.leased() {
				continue
			}
			if err := l.cons.resume(ctx); err != nil {
				l.warn.log(l.log, "start partition consumers", err)
			}
		case <-tick.C:
			l.tick(ctx)
		case d := <-l.msgs:
			l.take(d)
		case <-work:
			// Take in what has arrived meanwhile, for a fuller batch.
		more:
			for len(l.queue) < l.sink.BatchSize {
				select {
				case d := <-l.msgs:
					l.take(d)
				default:
					break more
				}
			}
			if len(l.queue) == 0 || !l.leased() {
				continue
			}
			batch := l.batch()
			// The batch completes even when shutdown begins meanwhile.
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), applyTimeout)
			l.outcome(l.a.apply(actx, batch))
			cancel()
		case <-l.retryAt:
			if !l.leased() {
				continue
			}
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), applyTimeout)
			if err := l.st.Reacquire(actx); err != nil {
				l.outcome(err)
			} else {
				l.outcome(l.a.retry(actx))
			}
			cancel()
		}
	}
}

// delivery is a received message, and the generation of the partition
// consumer that delivered it (0: the retry consumer).
type delivery struct {
	m   jetstream.Msg
	gen uint64
}

// take queues a received message, or hands it back when its partition is
// not this writer's, or was given up and taken again since (it arrived
// from a consumer being drained): only what the current consumer delivers
// comes after what the partition's previous owner wrote.
func (l *loop) take(d delivery) {
	if p := partition(d.m); p >= 0 && !l.cons.owns(p, d.gen) {
		l.handBack([]jetstream.Msg{d.m})
		return
	}
	l.queue = append(l.queue, d.m)
}

// batch takes messages (each holding changes) from the queue until they
// hold batch_size changes or none waits. A message in fragments, a large
// change, is a batch of its own: what the writer holds stays bounded.
func (l *loop) batch() []jetstream.Msg {
	q := l.queue
	n, events := 1, max(change.CountEvents(q[0].Data()), 1)
	for n < len(q) && events < l.sink.BatchSize && !fragmented(q[0]) && !fragmented(q[n]) {
		events += max(change.CountEvents(q[n].Data()), 1)
		n++
	}
	if l.queue = q[n:]; len(l.queue) == 0 {
		l.queue = nil
	}
	return q[:n:n]
}

// leaseHolds reports whether this writer's lease holds, without acting on
// it.
func (l *loop) leaseHolds() bool {
	until, lapses := l.group.Lease()
	return lapses == l.lapses && time.Until(until) > l.sink.Failover/10
}

// leased reports whether this writer's lease holds. When it ran out (a
// pause, NATS cut off), others may have taken its partitions: it gives up
// everything it holds, and takes partitions again only as the group
// assigns them anew, under a new lease.
func (l *loop) leased() bool {
	until, lapses := l.group.Lease()
	holds := time.Until(until) > l.sink.Failover/10
	if lapses == l.lapses && holds {
		return true
	}
	if lapses != l.lapses || len(l.cons.running) > 0 || len(l.queue) > 0 || len(l.a.held) > 0 {
		l.log.Warn("lease in the writer group ran out; giving up the partitions until the group assigns them again", zap.Time("lease_until", until))
		l.giveUp(l.cons.releaseAll())
		l.a.release(nil)
		l.handBack(l.queue)
		l.queue = nil
		l.cons.want = nil
	}
	l.lapses = lapses
	return holds
}

// giveUp hands back what the writer holds of partitions it released.
func (l *loop) giveUp(partitions []int) {
	if len(partitions) == 0 {
		return
	}
	l.a.release(partitions)
	kept := l.queue[:0]
	for _, m := range l.queue {
		if slices.Contains(partitions, partition(m)) {
			l.handBack([]jetstream.Msg{m})
			continue
		}
		kept = append(kept, m)
	}
	clear(l.queue[len(kept):])
	l.queue = kept
}

func (l *loop) tick(ctx context.Context) {
	backlog := l.cons.updatePending(ctx)
	if len(l.a.held) == 0 {
		// A partition whose consumer delivers nothing while its backlog
		// waits is stuck: it starts over, handing back what it delivered.
		for _, p := range l.cons.quiet(backlog, max(3*tickEvery, 2*l.sink.Failover)) {
			l.log.Warn("partition delivered nothing while changes wait; starting its consumer again", zap.Int("partition", p), zap.Uint64("backlog", backlog[p]))
			l.cons.release(p)
			l.giveUp([]int{p})
			l.held.purge(p, l.handBack)
		}
	}
	l.checkPolicy(ctx)
	if err := l.checkReset(ctx); err != nil {
		l.warn.log(l.log, "check whether redis lost its data", err)
	}
	if l.leased() {
		if err := l.cons.resume(ctx); err != nil {
			l.warn.log(l.log, "start partition consumers", err)
		}
	}
	if len(l.a.held) == 0 && len(l.queue) == 0 {
		// Idle: readiness still tells whether Redis answers.
		pctx, cancel := context.WithTimeout(ctx, tickEvery)
		l.available(l.st.Ping(pctx))
		cancel()
	}
}

// checkPolicy reads Redis's maxmemory-policy, and says once what a policy
// that evicts keys means for this sink.
func (l *loop) checkPolicy(ctx context.Context) {
	policy, err := l.st.Policy(ctx)
	if err != nil {
		return
	}
	evicting := store.Evicts(policy)
	redisEvicts.WithLabelValues(l.sink.Name).Set(map[bool]float64{false: 0, true: 1}[evicting])
	if evicting && l.policy != policy {
		l.log.Warn("redis may evict keys (maxmemory-policy "+policy+"): an evicted key is written again by its next change only, "+
			"and a change retried after failing on its own is dead-lettered when its key's version was evicted (see the README's Guarantees)",
			zap.String("maxmemory_policy", policy))
	}
	l.policy = policy
}

// available records whether Redis (or NATS, for parking) takes writes.
func (l *loop) available(err error) {
	if err == nil {
		if l.unavailable.Swap(nil) != nil {
			l.log.Info("writing again")
			l.up.Set(1)
		}
		return
	}
	why := err.Error()
	if l.unavailable.Swap(&why) == nil {
		l.up.Set(0)
	}
}

// outcome follows an attempt: nil, or why messages are held.
func (l *loop) outcome(err error) {
	l.available(err)
	if err == nil {
		l.retryAt, l.delay = nil, 0
		return
	}
	l.warn.log(l.log, "write (unavailable: holding the partitions until it comes back)", err)
	l.delay = min(max(2*l.delay, holdMin), holdMax)
	l.retryAt = time.After(l.delay)
}

// handBack returns messages received but not started to JetStream, which
// redelivers them at once, to the sink's other writers.
func (l *loop) handBack(msgs []jetstream.Msg) {
	for _, m := range msgs {
		l.held.remove(m)
		_ = m.Nak()
	}
}

func fragmented(m jetstream.Msg) bool { return m.Headers().Get(fragment.Header) != "" }

// drain returns what arrives on msgs until it has been quiet for a moment:
// the stopped consumers' last deliveries.
func drain(msgs <-chan delivery) []delivery {
	var got []delivery
	for {
		select {
		case d := <-msgs:
			got = append(got, d)
		case <-time.After(200 * time.Millisecond):
			return got
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

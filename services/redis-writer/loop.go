package rediswriter

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/sluicehq/sluice/pkg/backfill"
	"github.com/sluicehq/sluice/pkg/change"
	"github.com/sluicehq/sluice/services/redis-writer/internal/store"
)

// lease is the writer's lease in its group: it holds until until, and
// lapses counts the times it ran out.
type lease interface {
	Lease() (until time.Time, lapses uint64)
}

// loop is the writer's main loop and its state; one goroutine runs it.
type loop struct {
	*Service
	st       *store.Store
	group    lease
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

// quiet is how long since the loop, or a long Redis operation of it, last
// made progress.
func (l *loop) quiet() time.Duration {
	last := time.Unix(0, l.progress.Load())
	if p := l.st.Progressed(); p.After(last) {
		last = p
	}
	return time.Since(last)
}

// alive reports whether the loop goes round: a batch takes at most
// applyTimeout, and the loop ticks every tickEvery.
func (l *loop) alive() bool { return l.quiet() < applyTimeout+2*tickEvery }

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
			l.work(ctx)
		case <-l.retryAt:
			if !l.leased() {
				continue
			}
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), applyTimeout)
			if err := l.st.Reacquire(actx); err != nil {
				l.outcome(err)
			} else {
				l.outcome(l.a.retry(actx, nil))
			}
			cancel()
			l.refence()
		}
	}
}

// work applies the next batch from the queue, if the lease still holds.
func (l *loop) work(ctx context.Context) {
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
	// leased first: a lease that lapsed and was renewed since hands the
	// queue back and holds again.
	if !l.leased() || len(l.queue) == 0 {
		return
	}
	batch := l.batch()
	// The batch completes even when shutdown begins meanwhile.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), applyTimeout)
	l.outcome(l.a.apply(actx, batch, l.queue[:batchLen(l.queue, l.sink.BatchSize)]))
	cancel()
	l.refence()
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
	n := batchLen(q, l.sink.BatchSize)
	if l.queue = q[n:]; len(l.queue) == 0 {
		l.queue = nil
	}
	return q[:n:n]
}

// batchLen is how many messages of q the next batch takes.
func batchLen(q []jetstream.Msg, size int) int {
	if len(q) == 0 {
		return 0
	}
	n, events := 1, max(change.CountEvents(q[0].Data()), 1)
	for n < len(q) && events < size && !fragmented(q[0]) && !fragmented(q[n]) {
		events += max(change.CountEvents(q[n].Data()), 1)
		n++
	}
	return n
}

// leaseHolds reports whether this writer's lease holds, without acting on
// it.
func (l *loop) leaseHolds() bool {
	until, lapses := l.group.Lease()
	return lapses == l.lapses && time.Now().Before(until)
}

// leased reports whether this writer's lease holds. When it ran out (a
// pause, NATS cut off), others may have taken its partitions: it gives up
// everything it holds, and takes partitions again only as the group
// assigns them anew, under a new lease.
func (l *loop) leased() bool {
	until, lapses := l.group.Lease()
	holds := time.Now().Before(until)
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

// restart stops partition p's consumer and hands back what the writer
// holds of it; once drained, the loop starts it again (see resume), with a
// fence of its own.
func (l *loop) restart(p int) {
	l.cons.release(p)
	l.giveUp([]int{p})
	l.held.purge(p, l.handBack)
}

// refence takes back the partitions whose fence another writer set while
// this one still owns them under a lease that holds: two writers' views of
// the group disagree for a moment (both started at once, say), and the one
// that acquired last may since have given the partition up, leaving its
// owner refused forever. The pinned consumer delivers a partition to one
// writer, so the fence follows the writer the messages come to; a writer
// whose lease ran out is not that writer and lets go instead.
func (l *loop) refence() {
	for _, p := range l.a.takeFenced() {
		if _, ok := l.cons.running[p]; !ok || !l.leaseHolds() {
			continue
		}
		l.log.Warn("another writer fenced a partition this one owns; starting its consumer again", zap.Int("partition", p))
		l.restart(p)
	}
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
	backlog, gone := l.cons.updatePending(ctx)
	if len(l.a.held) == 0 {
		// A partition whose consumer is gone delivers nothing, and says
		// nothing of its backlog: it starts over, with the consumer made
		// again.
		for _, p := range gone {
			l.log.Warn("the partition's consumer is gone; starting it again", zap.Int("partition", p))
			l.restart(p)
		}
		// A partition whose consumer delivers nothing while its backlog
		// waits is stuck: it starts over, handing back what it delivered.
		for _, p := range l.cons.quiet(backlog, max(3*tickEvery, 2*l.sink.Failover)) {
			l.log.Warn("partition delivered nothing while changes wait; starting its consumer again", zap.Int("partition", p), zap.Uint64("backlog", backlog[p]))
			l.restart(p)
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

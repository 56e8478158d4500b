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

// lanes is how many batches a writer applies at once, each of
// partitions no other holds: while Redis applies one, the writer reads,
// renders and settles another, instead of each waiting for the other, and
// the round trips to a Redis on another host overlap. With Redis 1 ms
// away, two lanes nearly doubled a writer's throughput, and three or four took
// it to what two cores allow (BenchmarkWriter/remote).
const lanes = 4

// loop is the writer's main loop and its state; one goroutine runs it.
//
// The loop starts each batch on a lane of its own, which applies it on a
// goroutine and hands it back on done. Whatever changes which partitions
// the writer holds (an assignment, a lapsed lease, a restarted partition,
// the tick), retries held messages, or stops the writer, waits for the
// batches in flight first (await): meanwhile the lanes are the loop's.
type loop struct {
	*Service
	st       *store.Store
	group    lease
	jobs     *backfill.Store // backfill jobs, and the record of the sink's Redis
	cons     *consumers
	lanes    []*lane
	done     chan *lane // lanes whose batch is applied
	held     *holding
	msgs     <-chan delivery
	queue    []jetstream.Msg // received, not started
	stalled  bool            // what is queued waits for partitions in flight
	lapses   atomic.Uint64   // of the lease, as last seen; read by lanes' stores
	retryAt  <-chan time.Time
	delay    time.Duration
	up       prometheus.Gauge
	policy   string       // Redis's maxmemory-policy, as last read; watchRedis's alone once it runs
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

// lane applies one batch at a time.
type lane struct {
	a *applier
	// busy holds the partitions of the batch in flight (-1: retries);
	// nil when idle.
	busy map[int]bool
	err  error // the batch's outcome
}

func (l *loop) run(ctx context.Context, assigned <-chan []int) error {
	tick := time.NewTicker(tickEvery)
	defer tick.Stop()
	ready := make(chan struct{})
	close(ready)
	for {
		l.progress.Store(time.Now().UnixNano())
		var work <-chan struct{} // ready when a batch can start
		if l.idle() != nil && !l.holds() && !l.stalled && len(l.queue) > 0 {
			work = ready
		}
		select {
		case <-ctx.Done():
			// The batches in flight complete even when shutdown begins.
			l.await()
			l.stopping.Store(true)
			// What the stopped consumers still deliver, and what waits,
			// goes back to JetStream, to be redelivered to the others.
			l.cons.releaseAll()
			l.release(nil)
			l.handBack(l.queue)
			l.queue = nil
			return nil
		case mine := <-assigned:
			l.await()
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
		case ln := <-l.done:
			l.finish(ln)
		case <-work:
			l.work(ctx)
		case <-l.retryAt:
			l.retryAt = nil
			l.await()
			if !l.leased() {
				continue
			}
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), applyTimeout)
			err := l.st.Reacquire(actx)
			for _, ln := range l.lanes {
				if err == nil && len(ln.a.held) > 0 {
					err = ln.a.retry(actx)
				}
			}
			cancel()
			l.outcome(err)
			for _, ln := range l.lanes {
				l.refence(ln.a)
			}
		}
	}
}

// idle returns a lane with no batch in flight; nil when all are busy.
func (l *loop) idle() *lane {
	for _, ln := range l.lanes {
		if ln.busy == nil {
			return ln
		}
	}
	return nil
}

// holds reports whether an idle lane holds messages that wait for Redis
// (or NATS) to come back: nothing else starts until they are written. A
// busy lane's messages are its own until it is done.
func (l *loop) holds() bool {
	for _, ln := range l.lanes {
		if ln.busy == nil && len(ln.a.held) > 0 {
			return true
		}
	}
	return false
}

// busy is how many lanes have a batch in flight.
func (l *loop) busy() int {
	n := 0
	for _, ln := range l.lanes {
		if ln.busy != nil {
			n++
		}
	}
	return n
}

// await waits for the batches in flight, and takes in their outcomes.
func (l *loop) await() {
	for range l.busy() {
		l.finish(<-l.done)
	}
}

// finish takes in the outcome of a lane's batch.
func (l *loop) finish(ln *lane) {
	ln.busy, l.stalled = nil, false
	l.outcome(ln.err)
	l.refence(ln.a)
}

// work starts the next batch from the queue on an idle lane, if the lease
// still holds.
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
	ln := l.idle()
	if ln == nil {
		return
	}
	batch, partitions := l.batch()
	if len(batch) == 0 {
		l.stalled = true // until a lane finishes, or more arrives
		return
	}
	ln.busy = partitions
	// The batch completes even when shutdown begins meanwhile.
	actx := context.WithoutCancel(ctx)
	go func() {
		actx, cancel := context.WithTimeout(actx, applyTimeout)
		defer cancel()
		ln.err = ln.a.apply(actx, batch)
		l.done <- ln
	}()
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
	l.stalled = false
}

// batch takes messages (each holding changes) from the queue, in order,
// until they hold batch_size changes or none waits, passing over those of
// the partitions in flight on other lanes; it returns them and their
// partitions. A message in fragments, a large change, is a batch of its
// own: what the writer holds stays bounded.
func (l *loop) batch() ([]jetstream.Msg, map[int]bool) {
	// Partitions passed over stay passed over: a partition's messages
	// are applied in order.
	passed := map[int]bool{}
	for _, ln := range l.lanes {
		for p := range ln.busy {
			passed[p] = true
		}
	}
	var batch []jetstream.Msg
	partitions := map[int]bool{}
	events, i := 0, 0
	kept := l.queue[:0]
	for ; i < len(l.queue) && events < l.sink.BatchSize; i++ {
		m := l.queue[i]
		p := partition(m)
		switch {
		case passed[p]:
			kept = append(kept, m)
			continue
		case fragmented(m) && len(batch) > 0:
			passed[p] = true
			kept = append(kept, m)
			continue
		}
		batch = append(batch, m)
		partitions[p] = true
		events += max(change.CountEvents(m.Data()), 1)
		if fragmented(m) {
			events = l.sink.BatchSize
		}
	}
	kept = append(kept, l.queue[i:]...)
	clear(l.queue[len(kept):])
	if l.queue = kept; len(l.queue) == 0 {
		l.queue = nil
	}
	return batch, partitions
}

// leaseHolds reports whether this writer's lease holds, without acting on
// it.
func (l *loop) leaseHolds() bool {
	until, lapses := l.group.Lease()
	return lapses == l.lapses.Load() && time.Now().Before(until)
}

// leased reports whether this writer's lease holds. When it ran out (a
// pause, NATS cut off), others may have taken its partitions: it gives up
// everything it holds, and takes partitions again only as the group
// assigns them anew, under a new lease.
func (l *loop) leased() bool {
	until, lapses := l.group.Lease()
	holds := time.Now().Before(until)
	if lapses == l.lapses.Load() && holds {
		return true
	}
	l.await()
	if lapses != l.lapses.Load() || len(l.cons.running) > 0 || len(l.queue) > 0 || l.holds() {
		l.log.Warn("lease in the writer group ran out; giving up the partitions until the group assigns them again", zap.Time("lease_until", until))
		l.giveUp(l.cons.releaseAll())
		l.release(nil)
		l.handBack(l.queue)
		l.queue = nil
		l.cons.want = nil
	}
	l.lapses.Store(lapses)
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
func (l *loop) refence(a *applier) {
	for _, p := range a.takeFenced() {
		if _, ok := l.cons.running[p]; !ok || !l.leaseHolds() {
			continue
		}
		l.log.Warn("another writer fenced a partition this one owns; starting its consumer again", zap.Int("partition", p))
		l.restart(p)
	}
}

// release hands the held messages of partitions (all, when nil) back to
// JetStream. A lane's batch in flight is its own: partitions are released
// only once it is done (see await), or when it holds none of them.
func (l *loop) release(partitions []int) {
	for _, ln := range l.lanes {
		if ln.busy == nil {
			ln.a.release(partitions)
		}
	}
}

// giveUp hands back what the writer holds of partitions it released.
func (l *loop) giveUp(partitions []int) {
	if len(partitions) == 0 {
		return
	}
	l.release(partitions)
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
	stuck := l.cons.quiet(backlog, max(3*tickEvery, 2*l.sink.Failover))
	if len(gone) > 0 || len(stuck) > 0 {
		l.await() // restarting a partition hands back what is held of it
	}
	if !l.holds() {
		// A partition whose consumer is gone delivers nothing, and says
		// nothing of its backlog: it starts over, with the consumer made
		// again.
		for _, p := range gone {
			l.log.Warn("the partition's consumer is gone; starting it again", zap.Int("partition", p))
			l.restart(p)
		}
		// A partition whose consumer delivers nothing while its backlog
		// waits is stuck: it starts over, handing back what it delivered.
		for _, p := range stuck {
			l.log.Warn("partition delivered nothing while changes wait; starting its consumer again", zap.Int("partition", p), zap.Uint64("backlog", backlog[p]))
			l.restart(p)
		}
	}
	if l.leased() {
		if err := l.cons.resume(ctx); err != nil {
			l.warn.log(l.log, "start partition consumers", err)
		}
	}
	if l.busy() == 0 && !l.holds() && len(l.queue) == 0 {
		// Idle: readiness still tells whether Redis answers.
		pctx, cancel := context.WithTimeout(ctx, tickEvery)
		l.available(l.st.Ping(pctx))
		cancel()
	}
}

// watchRedis checks, every tick until ctx is done, Redis's eviction
// policy and whether it lost acknowledged writes; on a goroutine of its
// own, since their round trips would hold the loop.
func (l *loop) watchRedis(ctx context.Context) {
	every(ctx, tickEvery, func() { l.checkRedis(ctx) })
}

// checkRedis reads Redis's eviction policy and finds out whether it lost
// acknowledged writes.
func (l *loop) checkRedis(ctx context.Context) {
	l.checkPolicy(ctx)
	if err := l.checkReset(ctx); err != nil && ctx.Err() == nil { // shutdown cuts a check short: not a failure
		l.warn.log(l.log, "check whether redis lost its data", err)
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

// outcome follows an attempt: nil, or why messages are held. One lane's
// success says nothing of the messages another still holds.
func (l *loop) outcome(err error) {
	if err == nil && l.holds() {
		return
	}
	l.available(err)
	if err == nil {
		l.retryAt, l.delay = nil, 0
		return
	}
	l.warn.log(l.log, "write (unavailable: holding the partitions until it comes back)", err)
	if l.retryAt == nil {
		l.delay = min(max(2*l.delay, holdMin), holdMax)
		l.retryAt = time.After(l.delay)
	}
}

// handBack returns messages received but not started to JetStream, which
// redelivers them at once, to the sink's other writers.
func (l *loop) handBack(msgs []jetstream.Msg) {
	for _, m := range msgs {
		l.held.remove(m)
		_ = m.Nak()
	}
}

package rediswriter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/sluicehq/sluice/pkg/change"
	"github.com/sluicehq/sluice/pkg/deadletter"
	"github.com/sluicehq/sluice/pkg/fragment"
	sluicev1 "github.com/sluicehq/sluice/proto/sluice/v1"
	"github.com/sluicehq/sluice/services/redis-writer/internal/command"
	"github.com/sluicehq/sluice/services/redis-writer/internal/retry"
	"github.com/sluicehq/sluice/services/redis-writer/internal/store"
)

// applier writes the messages of one sink and settles each one: it
// acknowledges a message once every change of it is applied (or older than
// its key), or failed on its own and was parked for another attempt (or,
// after max_deliver attempts, dead-lettered).
//
// A change that fails because Redis is unavailable (see
// store.Unavailable) is not a failure of the change: its message is held,
// with every message after it, and tried again until Redis takes it; no
// attempt is counted. Each lane of the writer's loop has an applier of
// its own, which one goroutine at a time uses: the lane's while a batch is
// in flight, the loop's otherwise.
type applier struct {
	*Service
	store   *store.Store
	box     *deadletter.Box
	js      jetstream.JetStream
	changes jetstream.Stream // where fragments and parked changes are read
	m       *sinkMetrics
	holding *holding
	// held are the messages received and not settled, in order: those of
	// a batch that waits for Redis (or NATS) to come back.
	held []*work
	cmds []command.Command // reused for each round trip
	// render is the applier's own: it keeps what it rendered last.
	render *command.Renderer
	// fencedOut are the partitions whose writes Redis refused since the
	// loop last asked: another writer set their fence after this one.
	fencedOut map[int]bool

	annotationsWarned time.Time
}

// work is one message being applied.
type work struct {
	msg   jetstream.Msg
	ref   *retry.Ref // set for a parked change's next attempt
	read  bool       // its changes are decoded and rendered
	items []*item
}

// item is one change of a message.
type item struct {
	ev       *sluicev1.ChangeEvent
	index    int // in its message
	cmds     []command.Command
	from, to int // its commands in the round trip of this attempt
	state    itemState
	err      error // the last attempt's
}

type itemState int

const (
	toWrite itemState = iota // to be written
	applied                  // written, older than its key, or filtered out
	failed                   // failed on its own: to be parked or dead-lettered
	settled                  // parked or dead-lettered
	fenced                   // refused: another writer owns its partition now
)

// apply writes the changes of msgs, in order, and settles their messages.
// It returns nil, or why some messages are held: Redis or NATS is
// unavailable. Then retry must be called until it returns nil, before
// apply is called again.
func (a *applier) apply(ctx context.Context, msgs []jetstream.Msg) error {
	now := time.Now()
	for _, m := range msgs {
		w := &work{msg: m}
		if a.isRetry(m) {
			ref, err := retry.Parse(m.Headers())
			if err != nil {
				a.log.Error("dropping a malformed retry reference", zap.Error(err))
				a.settle(m, m.Term)
				continue
			}
			if wait := ref.NotBefore.Sub(now); wait > 0 {
				a.settle(m, func() error { return m.NakWithDelay(wait) })
				continue
			}
			w.ref = &ref
		}
		a.held = append(a.held, w)
	}
	return a.retry(ctx)
}

// retry tries the held messages again: it reads what is unread, writes the
// pending changes in one round trip and settles every message it can.
func (a *applier) retry(ctx context.Context) (unavailable error) {
	cmds := a.cmds[:0]
	var written []*item
	for _, w := range a.held {
		if !w.read {
			if err := a.read(ctx, w); err != nil {
				// Its changes may precede later ones of the same keys:
				// hold it and every message after it.
				unavailable = cmp(unavailable, err)
				break
			}
		}
		for _, it := range w.items {
			if it.state == toWrite {
				it.from = len(cmds)
				cmds = append(cmds, it.cmds...)
				it.to = len(cmds)
				written = append(written, it)
			}
		}
	}
	a.cmds = cmds[:0]
	if len(cmds) > 0 {
		began := time.Now()
		errs, stale := a.store.Apply(ctx, cmds)
		a.m.redis.Observe(time.Since(began).Seconds())
		a.m.batch.Observe(float64(len(cmds)))
		a.m.stale.Add(float64(stale))
		now := time.Now()
		for _, it := range written {
			it.err = nil
			for _, err := range errs[it.from:it.to] {
				if err != nil && (it.err == nil || store.Unavailable(err)) {
					it.err = err
				}
			}
			switch {
			case it.err == nil:
				it.state = applied
				a.m.applied.Inc()
				a.m.commitToRedis.Observe(now.Sub(time.UnixMicro(it.ev.CommitTimestampUs)).Seconds())
			case errors.Is(it.err, store.ErrFenced):
				it.state = fenced
			case store.Unavailable(it.err):
				unavailable = cmp(unavailable, it.err)
			default:
				it.state = failed
				a.m.failed.Inc()
			}
		}
		clear(cmds) // let the values go
	}
	kept := a.held[:0]
	for _, w := range a.held {
		done, err := a.finish(ctx, w)
		if err != nil {
			unavailable = cmp(unavailable, err)
		}
		if !done {
			kept = append(kept, w)
		}
	}
	clear(a.held[len(kept):])
	a.held = kept
	return unavailable
}

// takeFenced returns the partitions fenced out since the last call.
func (a *applier) takeFenced() []int {
	var ps []int
	for p := range a.fencedOut {
		ps = append(ps, p)
	}
	clear(a.fencedOut)
	return ps
}

// cmp keeps the first error.
func cmp(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

func (a *applier) isRetry(m jetstream.Msg) bool {
	return m.Subject() == a.topo.RetrySubject(a.sink.Name)
}

// read decodes w's changes and renders their commands. A message that
// can never be read is dead-lettered whole; an error is returned only
// when NATS could not be read, to try again.
func (a *applier) read(ctx context.Context, w *work) error {
	var evs []*sluicev1.ChangeEvent
	var err error
	if w.ref != nil {
		evs, err = a.parked(ctx, *w.ref)
	} else {
		evs, err = a.events(ctx, w.msg.Headers(), w.msg.Data())
	}
	switch {
	case err != nil && !lost(err):
		return err
	case err != nil:
		// It will never decode: no point retrying.
		l := deadletter.Letter{Sink: a.sink.Name, Error: err.Error(), Attempts: 1, Data: w.msg.Data()}
		if w.ref != nil {
			l.Key, l.Attempts, l.StreamSeq, l.Data = w.ref.Key, w.ref.Attempts, w.ref.StreamSeq, nil
		} else {
			l.StreamSeq = seq(w.msg)
		}
		if err := a.deadLetter(ctx, l); err != nil {
			return err
		}
		w.read = true
		return nil
	}
	w.items, w.read = a.items(evs, partition(w.msg), w.ref), true
	a.checkAnnotations(w.items)
	return nil
}

// checkAnnotations says, at most once a minute, that a change's
// transaction annotations are not JSON.
func (a *applier) checkAnnotations(items []*item) {
	for _, it := range items {
		ev := it.ev
		if ev.TransactionAnnotations != "" && !json.Valid([]byte(ev.TransactionAnnotations)) && time.Since(a.annotationsWarned) > time.Minute {
			a.annotationsWarned = time.Now()
			a.log.Warn("transaction annotations are not valid JSON; the changes are written with null annotations, as Sequin does",
				zap.String("annotations", ev.TransactionAnnotations), zap.Uint64("commit_lsn", ev.CommitLsn))
		}
	}
}

// items renders the commands of a message's changes, from partition p;
// ref is set for a parked change's next attempt.
func (a *applier) items(evs []*sluicev1.ChangeEvent, p int, ref *retry.Ref) []*item {
	var buf []command.Command
	items := make([]*item, 0, len(evs))
	for i, ev := range evs {
		it := &item{ev: ev, index: i, state: applied}
		if ref != nil {
			it.index = ref.Index
		}
		items = append(items, it)
		// A TRUNCATE is governed by on_truncate, not by actions; a READ
		// is for the one sink its backfill is for.
		truncate := ev.Action == sluicev1.Action_ACTION_TRUNCATE
		otherSink := ev.BackfillSink != "" && ev.BackfillSink != a.sink.Name
		if otherSink || !a.tables[ev.Schema+"."+ev.Table] || !truncate && !a.actions[change.Action(ev.Action)] {
			a.m.filtered.Inc()
			continue
		}
		from := len(buf)
		buf, it.err = a.render.Append(buf, ev)
		switch {
		case it.err != nil:
			buf = buf[:from] // nothing of a change whose expression failed
			it.state = failed
			a.m.failed.Inc()
		case len(buf) == from:
			a.m.filtered.Inc()
		default:
			it.cmds, it.state = buf[from:len(buf):len(buf)], toWrite
			for j := range it.cmds {
				it.cmds[j].Partition, it.cmds[j].Retried = p, ref != nil
			}
		}
	}
	return items
}

// errUndecodable marks a message that is not a batch of changes.
var errUndecodable = errors.New("undecodable")

// lost reports whether err means a message can never be read.
func lost(err error) bool {
	return errors.Is(err, fragment.ErrMissing) || errors.Is(err, errUndecodable)
}

// events decodes a message of the change stream.
func (a *applier) events(ctx context.Context, h nats.Header, data []byte) ([]*sluicev1.ChangeEvent, error) {
	data, err := fragment.Payload(ctx, a.changes, h, data)
	if err != nil {
		return nil, err
	}
	evs, err := change.Events(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errUndecodable, err)
	}
	return evs, nil
}

// parked reads the change a retry reference names, from the change stream.
func (a *applier) parked(ctx context.Context, ref retry.Ref) ([]*sluicev1.ChangeEvent, error) {
	m, err := a.changes.GetMsg(ctx, ref.StreamSeq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, fmt.Errorf("the change to retry, at stream sequence %d, is gone from the stream (nats.max_age): %w", ref.StreamSeq, fragment.ErrMissing)
	}
	if err != nil {
		return nil, fmt.Errorf("read the change to retry at stream sequence %d: %w", ref.StreamSeq, err)
	}
	evs, err := a.events(ctx, m.Header, m.Data)
	if err != nil {
		return nil, err
	}
	if ref.Index < 0 || ref.Index >= len(evs) {
		return nil, fmt.Errorf("%w: stream sequence %d holds no change %d", errUndecodable, ref.StreamSeq, ref.Index)
	}
	return evs[ref.Index : ref.Index+1], nil
}

// finish settles w once none of its changes waits to be written: the
// changes that failed on their own are parked (or dead-lettered), then the
// message is acknowledged. It reports whether w is settled; an error is
// NATS failing to take a parked change or a dead letter.
func (a *applier) finish(ctx context.Context, w *work) (bool, error) {
	if !w.read {
		return false, nil
	}
	for _, it := range w.items {
		if it.state == toWrite {
			return false, nil
		}
	}
	for _, it := range w.items {
		if it.state == fenced {
			// Its partition's new owner has, or will get, the message.
			a.settle(w.msg, w.msg.Nak)
			if p := partition(w.msg); p >= 0 {
				a.fencedOut[p] = true
			}
			return true, nil
		}
	}
	for _, it := range w.items {
		if it.state != failed {
			continue
		}
		attempts := 1
		if w.ref != nil {
			attempts = w.ref.Attempts + 1
		}
		if err := a.fail(ctx, w, it, attempts); err != nil {
			return false, err
		}
		it.state = settled
	}
	if w.ref != nil {
		a.settle(w.msg, w.msg.Term) // the next attempt, if any, has a reference of its own
	} else {
		a.settle(w.msg, w.msg.Ack)
	}
	return true, nil
}

// fail parks a change that failed on its own for its next attempt, or
// dead-letters it after the sink's max_deliver attempts.
func (a *applier) fail(ctx context.Context, w *work, it *item, attempts int) error {
	key := ""
	if len(it.cmds) > 0 {
		key = it.cmds[len(it.cmds)-1].Key
	}
	streamSeq := seq(w.msg)
	if w.ref != nil {
		streamSeq = w.ref.StreamSeq
	}
	// Unversioned writes would let a retry overtake a newer change of its
	// key: such a sink does not retry.
	again := attempts < a.sink.MaxDeliver && !a.sink.Destination.Unversioned
	if again && !errors.Is(it.err, store.ErrUnknownVersion) {
		a.warn.log(a.log, "write to redis", it.err)
		return retry.Park(ctx, a.js, a.topo.RetrySubject(a.sink.Name), retry.Ref{StreamSeq: streamSeq, Index: it.index,
			Attempts: attempts, NotBefore: time.Now().Add(a.backoff(attempts)), Key: key, Error: it.err.Error()})
	}
	data, err := proto.Marshal(it.ev)
	if err != nil {
		return err
	}
	return a.deadLetter(ctx, deadletter.Letter{Sink: a.sink.Name, Key: key, Error: it.err.Error(), Attempts: attempts, StreamSeq: streamSeq, Data: data})
}

// backoff is the wait after a change's attempts-th failed attempt:
// backoff, doubling each time, up to max_backoff.
func (a *applier) backoff(attempts int) time.Duration {
	d := a.sink.Backoff
	for i := 1; i < attempts && d < a.sink.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, a.sink.MaxBackoff)
}

// deadLetter stores a change the sink gives up on in the dead-letter
// stream.
func (a *applier) deadLetter(ctx context.Context, l deadletter.Letter) error {
	if err := a.box.Put(ctx, l); err != nil {
		return err
	}
	a.m.deadLettered.Inc()
	a.log.Error("change dead-lettered", zap.String("key", l.Key), zap.Int("attempts", l.Attempts), zap.Uint64("stream_seq", l.StreamSeq), zap.String("error", l.Error))
	return nil
}

// settle tells JetStream what became of m, and stops keeping it alive.
func (a *applier) settle(m jetstream.Msg, how func() error) {
	a.holding.remove(m)
	_ = how()
}

// release hands the held messages of partitions (all, when nil) back to
// JetStream, which redelivers them at once, to this writer or another.
func (a *applier) release(partitions []int) {
	kept := a.held[:0]
	for _, w := range a.held {
		if partitions == nil || slices.Contains(partitions, partition(w.msg)) {
			a.settle(w.msg, w.msg.Nak)
			continue
		}
		kept = append(kept, w)
	}
	clear(a.held[len(kept):])
	a.held = kept
}

// seq is m's sequence in its stream.
func seq(m jetstream.Msg) uint64 {
	if md, err := m.Metadata(); err == nil {
		return md.Sequence.Stream
	}
	return 0
}

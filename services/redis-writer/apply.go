package rediswriter

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/sluicehq/sluice/pkg/change"
	"github.com/sluicehq/sluice/pkg/deadletter"
	sluicev1 "github.com/sluicehq/sluice/proto/sluice/v1"
	"github.com/sluicehq/sluice/services/redis-writer/internal/command"
	"github.com/sluicehq/sluice/services/redis-writer/internal/store"
)

// applier writes batches of one sink.
type applier struct {
	*Service
	store *store.Store
	box   *deadletter.Box
	m     *sinkMetrics
}

// item is one change of a message.
type item struct {
	ev       *sluicev1.ChangeEvent
	from, to int // its commands
	err      error
}

// apply writes the changes of msgs and settles each message: acknowledged
// when every command of every change succeeded (or was older than its
// key), redelivered after a growing delay when one failed; after
// MaxDeliver attempts, the failed changes go to the dead-letter stream and
// the message is done. It returns how many messages failed.
func (a *applier) apply(ctx context.Context, msgs []jetstream.Msg) (failed int) {
	sink := a.sink.Name
	items := make([][]item, len(msgs))
	cmds := make([]command.Command, 0, len(msgs))
	for i, m := range msgs {
		evs, err := change.Events(m.Data())
		if err != nil {
			// It will never decode: no point retrying.
			if a.deadLetter(ctx, m, m.Data(), "", err, 1) {
				_ = m.Term()
			} else {
				_ = m.NakWithDelay(nakDelay(1))
			}
			continue
		}
		for _, ev := range evs {
			// A TRUNCATE is governed by on_truncate, not by actions; a READ
			// is for the one sink its backfill is for.
			truncate := ev.Action == sluicev1.Action_ACTION_TRUNCATE
			otherSink := ev.BackfillSink != "" && ev.BackfillSink != sink
			if otherSink || !a.tables[ev.Schema+"."+ev.Table] || !truncate && !a.actions[change.Action(ev.Action)] {
				a.m.filtered.Inc()
				continue
			}
			it := item{ev: ev, from: len(cmds)}
			if cmds, it.err = a.render.Append(cmds, ev); it.err != nil {
				cmds = cmds[:it.from] // nothing of a change whose expression failed
			}
			it.to = len(cmds)
			items[i] = append(items[i], it)
		}
	}

	var errs []error
	if len(cmds) > 0 {
		began := time.Now()
		var stale int
		errs, stale = a.store.Apply(ctx, cmds)
		a.m.redis.Observe(time.Since(began).Seconds())
		a.m.batch.Observe(float64(len(cmds)))
		a.m.stale.Add(float64(stale))
	}
	now := time.Now()
	for i, m := range msgs {
		var bad []*item
		for j := range items[i] {
			it := &items[i][j]
			for _, err := range errs[it.from:it.to] {
				if err != nil && it.err == nil {
					it.err = err
				}
			}
			switch {
			case it.err != nil:
				bad = append(bad, it)
			case it.from == it.to:
				a.m.filtered.Inc()
			default:
				a.m.applied.Inc()
				a.m.commitToRedis.Observe(now.Sub(time.UnixMicro(it.ev.CommitTimestampUs)).Seconds())
			}
		}
		if len(bad) == 0 {
			_ = m.Ack()
			continue
		}
		failed++
		attempts := 1
		if md, err := m.Metadata(); err == nil {
			attempts = int(md.NumDelivered)
		}
		if attempts < a.sink.MaxDeliver {
			a.m.failed.Add(float64(len(bad)))
			a.warn.log(a.log, "write to redis", bad[0].err)
			// The whole message comes back; its changes that succeeded are
			// then older than their keys, and skipped.
			_ = m.NakWithDelay(nakDelay(attempts))
			continue
		}
		settled := true
		for _, it := range bad {
			data, _ := proto.Marshal(it.ev)
			key := ""
			if it.to > it.from {
				key = cmds[it.to-1].Key
			}
			settled = a.deadLetter(ctx, m, data, key, it.err, attempts) && settled
		}
		if settled {
			_ = m.Term()
		} else {
			_ = m.NakWithDelay(nakDelay(attempts))
		}
	}
	return failed
}

// deadLetter stores one change of m in the dead-letter stream. It reports
// false when that failed: the message is then redelivered, so that a change
// is never dropped.
func (a *applier) deadLetter(ctx context.Context, m jetstream.Msg, data []byte, key string, cause error, attempts int) bool {
	l := deadletter.Letter{Sink: a.sink.Name, Key: key, Error: cause.Error(), Attempts: attempts, Data: data}
	if md, err := m.Metadata(); err == nil {
		l.StreamSeq = md.Sequence.Stream
	}
	if err := a.box.Put(ctx, l); err != nil {
		a.warn.log(a.log, "dead-letter a change", err)
		return false
	}
	a.m.deadLettered.Inc()
	a.log.Error("change dead-lettered", zap.String("key", key), zap.Int("attempts", attempts), zap.Uint64("stream_seq", l.StreamSeq), zap.Error(cause))
	return true
}

// nakDelay doubles with every attempt: 1s, 2s, 4s … up to a minute.
func nakDelay(attempts int) time.Duration {
	n := min(max(attempts, 1), 7)
	return min(time.Second<<(n-1), maxNakDelay)
}

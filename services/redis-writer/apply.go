package rediswriter

import (
	"context"
	"fmt"
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
}

// item is one message of a batch.
type item struct {
	msg      jetstream.Msg
	ev       *sluicev1.ChangeEvent
	from, to int // its commands
	err      error
}

// apply writes one batch and settles each message: acknowledged when every
// command succeeded (or was older than the key), redelivered after a growing
// delay when one failed, dead-lettered after MaxDeliver attempts. It returns
// how many messages failed.
func (a *applier) apply(ctx context.Context, batch []jetstream.Msg) (failed int) {
	sink := a.sink.Name
	items := make([]item, len(batch))
	cmds := make([]command.Command, 0, len(batch))
	for i, m := range batch {
		it := &items[i]
		it.msg, it.from = m, len(cmds)
		it.ev = new(sluicev1.ChangeEvent)
		if err := proto.Unmarshal(m.Data(), it.ev); err != nil {
			// It will never decode: no point retrying.
			a.deadLetter(ctx, it, "", fmt.Errorf("decode event: %w", err), 1)
			it.ev = nil
			continue
		}
		// A TRUNCATE is governed by on_truncate, not by actions; a READ is
		// for the one sink its backfill is for.
		truncate := it.ev.Action == sluicev1.Action_ACTION_TRUNCATE
		otherSink := it.ev.BackfillSink != "" && it.ev.BackfillSink != sink
		if otherSink || !a.tables[it.ev.Schema+"."+it.ev.Table] || !truncate && !a.actions[change.Action(it.ev.Action)] {
			it.ev = nil
			_ = m.Ack()
			changes.WithLabelValues(sink, "filtered").Inc()
			continue
		}
		if cmds, it.err = a.render.Append(cmds, it.ev); it.err != nil {
			cmds = cmds[:it.from] // nothing of a change whose expression failed
		}
		it.to = len(cmds)
	}

	var errs []error
	if len(cmds) > 0 {
		began := time.Now()
		var stale int
		errs, stale = a.store.Apply(ctx, cmds)
		redisSeconds.WithLabelValues(sink).Observe(time.Since(began).Seconds())
		batchSize.WithLabelValues(sink).Observe(float64(len(cmds)))
		changes.WithLabelValues(sink, "stale").Add(float64(stale))
	}
	now := time.Now()
	for i := range items {
		it := &items[i]
		if it.ev == nil {
			continue
		}
		for _, err := range errs[it.from:it.to] {
			if err != nil && it.err == nil {
				it.err = err
			}
		}
		if it.err == nil {
			if it.from == it.to {
				changes.WithLabelValues(sink, "filtered").Inc()
			} else {
				changes.WithLabelValues(sink, "applied").Inc()
				commitToRedis.WithLabelValues(sink).Observe(now.Sub(time.UnixMicro(it.ev.CommitTimestampUs)).Seconds())
			}
			_ = it.msg.Ack()
			continue
		}
		failed++
		attempts := 1
		if md, err := it.msg.Metadata(); err == nil {
			attempts = int(md.NumDelivered)
		}
		key := ""
		if it.to > it.from {
			key = cmds[it.to-1].Key
		}
		if attempts >= a.sink.MaxDeliver {
			a.deadLetter(ctx, it, key, it.err, attempts)
			continue
		}
		changes.WithLabelValues(sink, "failed").Inc()
		a.warn.log(a.log, "write to redis", it.err)
		_ = it.msg.NakWithDelay(nakDelay(attempts))
	}
	return failed
}

// deadLetter moves a message to the dead-letter stream, or, when that
// fails, has it redelivered: a change is never dropped.
func (a *applier) deadLetter(ctx context.Context, it *item, key string, cause error, attempts int) {
	l := deadletter.Letter{Sink: a.sink.Name, Key: key, Error: cause.Error(), Attempts: attempts, Data: it.msg.Data()}
	if md, err := it.msg.Metadata(); err == nil {
		l.StreamSeq = md.Sequence.Stream
	}
	if err := a.box.Put(ctx, l); err != nil {
		a.warn.log(a.log, "dead-letter a change", err)
		_ = it.msg.NakWithDelay(nakDelay(attempts))
		return
	}
	changes.WithLabelValues(a.sink.Name, "dead_lettered").Inc()
	a.log.Error("change dead-lettered", zap.String("key", key), zap.Int("attempts", attempts), zap.Uint64("stream_seq", l.StreamSeq), zap.Error(cause))
	_ = it.msg.Term()
}

// nakDelay doubles with every attempt: 1s, 2s, 4s … up to a minute.
func nakDelay(attempts int) time.Duration {
	n := min(max(attempts, 1), 7)
	return min(time.Second<<(n-1), maxNakDelay)
}

package capture

import (
	"context"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/sluicehq/sluice/pkg/backlog"
)

// monitorEvery is how often capture reads where the sinks stand.
const monitorEvery = 10 * time.Second

// monitor exports where every sink stands (package backlog) until ctx
// ends. It reads what JetStream records, so a sink whose writers all died
// still shows its backlog growing.
func (s *Service) monitor(ctx context.Context, js jetstream.JetStream) {
	names := make([]string, len(s.cfg.Sinks))
	for i, sink := range s.cfg.Sinks {
		names[i] = sink.Name
	}
	failing := false
	for {
		if s.lease == nil || !s.lease.Valid() {
			// Only the streaming capture exports them: one series each.
			s.resetSinkMetrics()
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		err := s.readBacklog(ctx, js, names)
		if err == nil {
			err = s.readBackfills(ctx)
		}
		if err == nil {
			err = s.watchResync(ctx)
		}
		if err != nil && ctx.Err() == nil {
			if !failing { // once per failure, not at every tick
				s.log.Warn("cannot read the sinks' backlog or backfills from nats; their metrics are stale", zap.Error(err))
			}
			failing = true
		} else {
			failing = false
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(monitorEvery):
		}
	}
}

func (s *Service) readBacklog(ctx context.Context, js jetstream.JetStream, names []string) error {
	rctx, cancel := context.WithTimeout(ctx, monitorEvery)
	defer cancel()
	st, err := js.Stream(rctx, s.topo.Stream)
	if err != nil {
		return err
	}
	sinks, err := backlog.Read(rctx, js, st, s.topo, names)
	if err != nil {
		return err
	}
	now := time.Now()
	for _, sink := range sinks {
		for _, p := range sink.Partitions {
			part := strconv.Itoa(p.Partition)
			sinkBacklog.WithLabelValues(sink.Name, part).Set(float64(p.Pending))
			age := 0.0
			if !p.Oldest.IsZero() {
				age = max(0, now.Sub(p.Oldest).Seconds())
			}
			sinkOldest.WithLabelValues(sink.Name, part).Set(age)
		}
		sinkDeadLetters.WithLabelValues(sink.Name).Set(float64(sink.DeadLetters))
		sinkWriters.WithLabelValues(sink.Name).Set(float64(len(sink.Writers)))
	}
	for _, sink := range s.cfg.Sinks {
		sinkWritersExpected.WithLabelValues(sink.Name).Set(float64(sink.Writers))
	}
	return nil
}

// readBackfills exports the progress of the backfills: every table of
// every sink has its sluice_backfill_active, and the running ones their
// rows.
func (s *Service) readBackfills(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, monitorEvery)
	defer cancel()
	list, err := s.jobs.List(rctx)
	if err != nil {
		return err
	}
	type key struct{ sink, table string }
	active, done, total := map[key]float64{}, map[key]float64{}, map[key]float64{}
	for _, sink := range s.cfg.Sinks {
		for _, t := range sink.Tables {
			active[key{sink.Name, t}] = 0
		}
	}
	for _, j := range list {
		if !j.State.Active() {
			continue
		}
		k := key{j.Sink, j.Table}
		active[k]++
		done[k] += float64(j.Done)
		total[k] += float64(max(j.Total, j.Done))
	}
	backfillDone.Reset()
	backfillEstimated.Reset()
	for k, n := range active {
		backfillActive.WithLabelValues(k.sink, k.table).Set(n)
	}
	for k, n := range done {
		backfillDone.WithLabelValues(k.sink, k.table).Set(n)
		backfillEstimated.WithLabelValues(k.sink, k.table).Set(total[k])
	}
	return nil
}

func (s *Service) resetSinkMetrics() {
	for _, v := range []interface{ Reset() }{sinkBacklog, sinkOldest, sinkDeadLetters, sinkWriters, sinkWritersExpected,
		backfillActive, backfillDone, backfillEstimated} {
		v.Reset()
	}
}

package rediswriter

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nuid"
	"go.uber.org/zap"

	"github.com/sluicehq/sluice/pkg/backfill"
)

// checkReset finds out whether the sink's Redis lost writes it had
// acknowledged: its marker is gone (FLUSHALL, a restart without
// persistence, a failover to a replica that never had it), or its
// replication id changed because a replica took over (which may lack the
// last writes) or because it restarted without an append-only file synced
// at every write (it comes back as of its last save). Under a policy that
// may evict any key (allkeys-*), the marker itself may be evicted, so a
// flush goes unseen there. The writers of the sink compare Redis with what
// they recorded in NATS; the one whose update of that record wins reports
// the reset and, with on_reset: backfill, asks capture to backfill the
// sink's tables, so that the cache refills itself while live changes keep
// flowing.
func (l *loop) checkReset(ctx context.Context) error {
	marker, err := l.st.Marker(ctx, l.sink.Name)
	if err != nil {
		return err
	}
	id, previous, err := l.st.Replication(ctx)
	if err != nil {
		return err
	}
	rec, rev, err := l.jobs.Marker(ctx, l.sink.Name)
	if err != nil {
		return err
	}
	if marker == "" {
		if marker, err = l.st.SetMarker(ctx, l.sink.Name, nuid.Next()); err != nil {
			return err
		}
	}
	now := backfill.Marker{Value: marker, ReplicationID: id, Resets: rec.Resets, LastReset: rec.LastReset}
	if rev == 0 {
		// The sink's first writer on this Redis, or NATS lost its record:
		// nothing to compare with yet.
		if err := l.jobs.PutMarker(ctx, l.sink.Name, now, 0); err != nil && !errors.Is(err, backfill.ErrChanged) {
			return err
		}
		return nil
	}
	var why string
	switch {
	case !strings.HasPrefix(l.policy, "allkeys-") && marker != rec.Value:
		why = "its marker is gone (flushed, or restarted without persistence)"
	case id == "" || rec.ReplicationID == "" || id == rec.ReplicationID:
	case previous == rec.ReplicationID:
		why = "a replica took over, which may lack the last writes"
	case !l.st.Durable(ctx):
		why = "it restarted, and comes back as of its last save (no append-only file synced at every write)"
	}
	if why == "" {
		if now != rec {
			// A marker evicted and written again, a restart that kept the
			// data, an id first known: nothing was lost.
			_ = l.jobs.PutMarker(ctx, l.sink.Name, now, rev)
		}
		return nil
	}
	now.Resets, now.LastReset = rec.Resets+1, time.Now().UTC()
	if err := l.jobs.PutMarker(ctx, l.sink.Name, now, rev); errors.Is(err, backfill.ErrChanged) {
		return nil // another writer of the sink saw it first
	} else if err != nil {
		return err
	}
	resets.WithLabelValues(l.sink.Name).Inc()
	if l.sink.OnReset != "backfill" {
		l.log.Error("redis lost acknowledged writes: "+why+"; on_reset is ignore, so the keys stay missing until their rows change (or `sluice backfill`)",
			zap.Int("resets", now.Resets))
		return nil
	}
	l.log.Error("redis lost acknowledged writes: "+why+"; backfilling the sink's tables into it", zap.Int("resets", now.Resets), zap.Strings("tables", l.sink.Tables))
	for _, t := range l.sink.Tables {
		j, err := l.jobs.Create(ctx, l.sink.Name, t, "")
		if err != nil {
			return err
		}
		l.log.Info("backfill created", zap.String("backfill", j.ID), zap.String("table", t))
	}
	return nil
}

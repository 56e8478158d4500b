package capture

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/sluicehq/sluice/pkg/lineage"
	"github.com/sluicehq/sluice/services/capture/internal/publisher"
	"github.com/sluicehq/sluice/services/capture/internal/source"
)

// Why capture refuses to stream (the reason label of
// sluice_capture_source_refused).
const (
	slotLost         = "slot_lost"
	slotInvalidated  = "slot_invalidated"
	databaseReplaced = "database_replaced"
	databaseBehind   = "database_behind"
)

// setRefused exports reason as the refusal in force; "": none.
func setRefused(reason string) {
	for _, r := range []string{slotLost, slotInvalidated, databaseReplaced, databaseBehind} {
		v := 0.0
		if r == reason {
			v = 1
		}
		sourceRefused.WithLabelValues(r).Set(v)
	}
}

// refusal is why the slot or the database cannot carry on the stream.
type refusal struct {
	reason string
	msg    string
}

func (r *refusal) Error() string { return r.msg }

// judge compares Postgres (id) with the stream's recorded source (rec,
// when recorded) and the stream's last commit position (last, when has).
// A database gone back in time is named before its missing slot: a base
// backup or a snapshot has no slot either, and only the first reason
// tells the operator that the caches must be flushed before a resync.
func judge(id source.Identity, rec lineage.Source, recorded bool, last uint64, has bool, slot string) *refusal {
	const resync = "run `sluice resync --config F` (a new slot, and a backfill of every sink)"
	const flush = "the caches hold the other database's positions, which would make its changes look older: flush every sink's Redis, then " + resync
	switch {
	case recorded && rec.SystemID != id.SystemID:
		return &refusal{databaseReplaced, fmt.Sprintf("postgres is not the database this stream's changes came from "+
			"(system identifier %s, the stream's %s): it was replaced or restored; %s", id.SystemID, rec.SystemID, flush)}
	case has && last > uint64(id.WALPos):
		return &refusal{databaseBehind, fmt.Sprintf("postgres's WAL ends at %s, before the stream's last change at %s: "+
			"the database was restored to an earlier point (a base backup holds no slot, so the slot may be gone too); %s", id.WALPos, lsnString(last), flush)}
	case id.SlotLost:
		return &refusal{slotInvalidated, fmt.Sprintf("replication slot %s was invalidated (max_slot_wal_keep_size): "+
			"the changes whose WAL it lost never reached the stream; %s", slot, resync)}
	case !id.SlotExists && (recorded || has):
		return &refusal{slotLost, fmt.Sprintf("replication slot %s is gone (dropped, or the database restored): "+
			"changes made since capture last confirmed its position never reached the stream, "+
			"and a new slot would start after them; %s", slot, resync)}
	}
	return nil
}

func lsnString(lsn uint64) string { return fmt.Sprintf("%X/%X", lsn>>32, uint32(lsn)) }

// admit waits until the slot and the database may carry on the stream,
// refusing to stream meanwhile (/readyz and sluice_capture_source_refused
// say why). It performs a resync when one is asked for, or at once with
// postgres.on_slot_loss: resync. It returns the stream sequence after which
// this source's changes start.
func (s *Service) admit(ctx context.Context, src *source.Source, js jetstream.JetStream) (after uint64, err error) {
	lin := s.lineage
	var logged time.Time
	defer func() {
		setRefused("")
		s.refused.Store(nil)
	}()
	for {
		s.beat()
		after, r, err := s.checkSource(ctx, src, js, lin)
		if err != nil || r == nil {
			return after, err
		}
		setRefused(r.reason)
		s.refused.Store(r)
		if time.Since(logged) > 5*time.Minute {
			s.log.Error("capture refuses to stream", zap.String("reason", r.reason), zap.Error(r))
			logged = time.Now()
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(2 * time.Second): // a resync may be asked for
		}
	}
}

// checkSource is one look at the source: the stream sequence after which
// this source's changes start, or why not to stream.
func (s *Service) checkSource(ctx context.Context, src *source.Source, js jetstream.JetStream, lin *lineage.Store) (uint64, *refusal, error) {
	id, err := src.Identify(ctx)
	if err != nil {
		return 0, nil, err
	}
	rec, recorded, err := lin.Source(ctx)
	if err != nil {
		return 0, nil, err
	}
	st, err := js.Stream(ctx, s.topo.Stream)
	if err != nil {
		return 0, nil, fmt.Errorf("read stream %s: %w", s.topo.Stream, err)
	}
	after := rec.After(st.CachedInfo().Created)
	pos, err := publisher.Positions(ctx, st, publisher.Options{Partitions: s.topo.Partitions, Subject: s.topo.Subject, After: after})
	if err != nil {
		return 0, nil, err
	}
	last, has := pos.Last()
	r := judge(id, rec, recorded, last, has, s.cfg.Postgres.Slot)
	req, requested, err := lin.Resync(ctx)
	if err != nil {
		return 0, nil, err
	}
	if requested && req.Done.IsZero() || r != nil && s.cfg.Postgres.OnSlotLoss == "resync" {
		if r != nil {
			s.log.Warn("resyncing", zap.String("reason", r.reason), zap.Error(r))
		}
		from, err := s.resync(ctx, src, js, lin, id, st, req)
		return from, nil, err
	}
	if r != nil {
		return 0, r, nil
	}
	if !recorded {
		rec = lineage.Source{SystemID: id.SystemID, Database: src.Database(), Slot: s.cfg.Postgres.Slot, Since: time.Now().UTC()}
		if err := lin.SetSource(ctx, rec); err != nil {
			return 0, nil, err
		}
	}
	return after, nil, nil
}

// resync starts the stream over from a new slot: the changes from now on
// are streamed, and every sink's tables are backfilled, which brings the
// rows changed while no slot held them. The stream's earlier positions
// belong to the old source from now on.
func (s *Service) resync(ctx context.Context, src *source.Source, js jetstream.JetStream, lin *lineage.Store, id source.Identity, st jetstream.Stream, req lineage.Resync) (uint64, error) {
	if id.SlotExists {
		if err := src.DropSlot(ctx); err != nil {
			return 0, err
		}
	}
	if err := s.ensureSlot(ctx, src); err != nil {
		return 0, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("read stream %s: %w", s.topo.Stream, err)
	}
	from := info.State.LastSeq
	if err := lin.SetSource(ctx, lineage.Source{SystemID: id.SystemID, Database: src.Database(), Slot: s.cfg.Postgres.Slot,
		FromSeq: from, Stream: info.Created, Since: time.Now().UTC()}); err != nil {
		return 0, err
	}
	var ids []string
	for _, sink := range s.cfg.Sinks {
		for _, table := range sink.Tables {
			j, err := s.jobs.Create(ctx, sink.Name, table, "")
			if err != nil {
				return 0, err
			}
			ids = append(ids, j.ID)
		}
	}
	if req.Requested.IsZero() {
		req.Requested = time.Now().UTC()
	}
	req.Done, req.Backfills = time.Now().UTC(), ids
	if err := lin.SetResync(ctx, req); err != nil {
		return 0, err
	}
	s.log.Warn("resynced: a new replication slot, and a backfill of every sink's tables",
		zap.String("slot", s.cfg.Postgres.Slot), zap.Uint64("from_stream_seq", from), zap.Strings("backfills", ids))
	return from, nil
}

// errResync ends a session so that a requested resync is carried out.
var errResync = errors.New("a resync was asked for (sluice resync)")

// watchResync ends the current session when a resync is asked for while
// capture streams: the next session carries it out.
func (s *Service) watchResync(ctx context.Context) error {
	req, requested, err := s.lineage.Resync(ctx)
	if err != nil || !requested || !req.Done.IsZero() {
		return err
	}
	if stop := s.interrupt.Load(); stop != nil {
		(*stop)(errResync)
	}
	return nil
}

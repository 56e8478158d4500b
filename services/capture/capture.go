// Package capture is the capture service: it streams the committed row
// changes of the configured Postgres tables into the JetStream stream, one
// ChangeEvent per change, and advances the replication slot only past
// transactions whose every event JetStream has acknowledged.
package capture

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/sluicehq/sluice/pkg/admin"
	"github.com/sluicehq/sluice/pkg/backfill"
	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/lineage"
	"github.com/sluicehq/sluice/pkg/topology"
	sluicev1 "github.com/sluicehq/sluice/proto/sluice/v1"
	"github.com/sluicehq/sluice/services/capture/internal/backfiller"
	"github.com/sluicehq/sluice/services/capture/internal/decoder"
	"github.com/sluicehq/sluice/services/capture/internal/event"
	"github.com/sluicehq/sluice/services/capture/internal/leader"
	"github.com/sluicehq/sluice/services/capture/internal/pgoutput"
	"github.com/sluicehq/sluice/services/capture/internal/pgvalue"
	"github.com/sluicehq/sluice/services/capture/internal/publisher"
	"github.com/sluicehq/sluice/services/capture/internal/source"
)

const (
	// maxInFlight bounds the messages (batches of events) published but
	// not yet acknowledged, and their size in units of 64 KiB.
	maxInFlight = 256
	// An event waits in its batch at most flushDelay, the price in latency
	// of sending many changes per message; quickFlush after a flush that
	// found few events, so that a light load pays little of it.
	flushDelay, quickFlush = 5 * time.Millisecond, time.Millisecond
	// A transaction that committed longer ago than this finds capture
	// catching up: its reads may wait for many changes (source.Stream.Behind).
	behindAge = time.Second
	// fewEvents is a flush too small to be worth waiting for.
	fewEvents = 64
	// drainTimeout bounds the wait for acknowledgements at shutdown.
	drainTimeout = 30 * time.Second
	maxBackoff   = 30 * time.Second
	// ackTimeout bounds the wait for one publish's acknowledgement. A
	// stream leader that died takes its unacknowledged messages with it,
	// and capture restarts from the slot only after this: short enough that
	// a leader change costs seconds, long enough for a new leader's
	// election (about 5 s measured).
	ackTimeout = 10 * time.Second
	// stuckAfter is how long the main loop may make no progress before
	// /healthz reports the process stuck.
	stuckAfter = 2 * time.Minute
)

// Service is the capture service.
type Service struct {
	cfg       *config.Config
	log       *zap.Logger
	topo      topology.Topology
	streaming atomic.Bool
	chunks    *backfiller.Chunks
	progress  atomic.Int64 // unix nanoseconds of the main loop's last turn
	after     uint64       // the stream sequence after which this source's changes start
	refused   atomic.Pointer[refusal]
	// interrupt ends the current session (a resync was asked for).
	interrupt atomic.Pointer[context.CancelCauseFunc]
	lease     *leader.Lease
	jobs      *backfill.Store
	lineage   *lineage.Store
	standby   atomic.Pointer[string] // the leader's id while standing by
}

// New returns a capture service for cfg.
func New(cfg *config.Config, log *zap.Logger) *Service {
	return &Service{cfg: cfg, log: log, topo: topology.New(cfg.NATS), chunks: backfiller.NewChunks()}
}

// Run captures until ctx is cancelled, then waits for in-flight events to be
// acknowledged, confirms them to the slot and returns nil.
//
// A failure while preparing (unreachable servers, a missing table, a slot in
// use) is returned. Once streaming, failures are logged and the stream is
// restarted from the slot with backoff: nothing published is lost or
// duplicated.
func (s *Service) Run(ctx context.Context) error {
	nc, js, err := topology.Dial(s.cfg.NATS, "sluice-capture", s.log,
		jetstream.WithPublishAsyncMaxPending(2*maxInFlight), jetstream.WithPublishAsyncTimeout(ackTimeout))
	if err != nil {
		return err
	}
	defer nc.Close()
	// Consumers exist before the first publish, so no sink misses an event.
	if _, err := topology.Create(ctx, s.log, "create stream "+s.topo.Stream, func(ctx context.Context) (jetstream.Stream, error) {
		return s.topo.Ensure(ctx, js, s.cfg.Sinks...)
	}); err != nil {
		return err
	}
	s.beat()
	setRefused("")
	admin.Live("capture", func() error {
		if quiet := time.Since(time.Unix(0, s.progress.Load())); quiet > stuckAfter {
			return fmt.Errorf("the main loop made no progress for %s", quiet.Round(time.Second))
		}
		return nil
	})
	admin.Ready("capture", func() error {
		// A standby cut off from NATS could not take over.
		if err := topology.Connected(nc); err != nil {
			return err
		}
		if holder := s.standby.Load(); holder != nil {
			// Ready: standing by is this process's work now.
			return admin.Note("standing by; the streaming capture is " + *holder)
		}
		if r := s.refused.Load(); r != nil {
			return r
		}
		if !s.streaming.Load() {
			return errors.New("not streaming from the slot")
		}
		return nil
	})
	lease, err := topology.Create(ctx, s.log, "create bucket "+s.topo.CaptureLeaseBucket(), func(ctx context.Context) (*leader.Lease, error) {
		return leader.Open(ctx, js, s.topo.CaptureLeaseBucket(), leader.NewID(), s.cfg.Postgres.Failover, s.topo.Replicas)
	})
	if err != nil {
		return err
	}
	s.lease = lease
	// The jobs and the stream's source, read by the monitor and the leader.
	if s.jobs, err = topology.Create(ctx, s.log, "create bucket "+backfill.BucketName(s.topo), func(ctx context.Context) (*backfill.Store, error) {
		return backfill.Open(ctx, js, s.topo)
	}); err != nil {
		return err
	}
	if s.lineage, err = topology.Create(ctx, s.log, "create bucket "+lineage.BucketName(s.topo), func(ctx context.Context) (*lineage.Store, error) {
		return lineage.Open(ctx, js, s.topo)
	}); err != nil {
		return err
	}
	mctx, stopMonitor := context.WithCancel(ctx)
	monitorDone := make(chan struct{})
	go func() { defer close(monitorDone); s.monitor(mctx, js) }()
	defer func() { stopMonitor(); <-monitorDone }()
	for {
		standby := ""
		err := lease.Acquire(ctx, func(holder string) {
			s.beat()
			s.standby.Store(&holder)
			if holder != standby {
				s.log.Info("standing by: another capture streams", zap.String("leader", holder))
				standby = holder
			}
		})
		if err != nil {
			return nil // shut down while standing by
		}
		s.standby.Store(nil)
		leading.Set(1)
		s.log.Info("leading: this capture streams from the slot")
		lctx, cancel := context.WithCancelCause(ctx)
		held := make(chan struct{})
		go func() {
			defer close(held)
			if err := lease.Hold(lctx); err != nil {
				cancel(err)
			}
		}()
		err = s.lead(lctx, js)
		cancel(nil)
		<-held // and released, when this process stops or failed
		leading.Set(0)
		if ctx.Err() != nil {
			// Shutting down: what failed meanwhile (a connection attempt,
			// a query) was cut short by it, and is no failure.
			return nil
		}
		if cause := context.Cause(lctx); errors.Is(cause, leader.ErrLost) || errors.Is(err, leader.ErrLost) {
			s.log.Warn("lost the lease (paused or cut off from NATS for longer than postgres.failover); standing by", zap.Error(cause))
			continue
		}
		return err
	}
}

// lead streams from the slot, and runs the backfills, while this process
// holds the lease (until ctx ends).
func (s *Service) lead(ctx context.Context, js jetstream.JetStream) error {
	src, err := source.Connect(ctx, s.cfg.Postgres, pgvalue.SessionParams)
	if err != nil {
		return err
	}
	defer src.Close(context.Background())
	tables, err := src.Tables(ctx)
	if err != nil {
		return err
	}
	pub, err := src.EnsurePublication(ctx)
	if err != nil {
		return err
	}
	s.logPublication(pub)
	s.log.Info("capturing", zap.String("database", src.Database()), zap.Strings("tables", s.cfg.Postgres.Tables),
		zap.String("slot", s.cfg.Postgres.Slot), zap.String("stream", s.topo.Stream))

	types := pgvalue.NewTypes(src)
	// The slot exists before a backfill writes its first watermark: one
	// written before the slot's start would never be decoded. A former
	// leader may take a moment to let go of it, and a NATS cluster to
	// elect the stream's leader.
	for backoff := time.Second; ; backoff = min(2*backoff, maxBackoff) {
		err := s.prepare(ctx, src, js)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			break
		}
		switch {
		case source.Unanswered(err):
			s.log.Warn("postgres does not answer (a server hung, or a connection dropped); trying again", zap.Error(err), zap.Duration("backoff", backoff))
		case source.SlotBusy(err):
			s.log.Warn("the replication slot is still held; trying again", zap.Error(err), zap.Duration("backoff", backoff))
		case topology.Transient(err):
			s.log.Warn("jetstream is not available (electing leaders, or a node is down); trying again", zap.Error(err), zap.Duration("backoff", backoff))
		default:
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
	}

	// Backfills read through a connection of their own.
	bsrc, err := source.Connect(ctx, s.cfg.Postgres, pgvalue.SessionParams)
	if err != nil {
		return err
	}
	defer bsrc.Close(context.Background())
	worker := backfiller.NewWorker(s.cfg, s.jobs, bsrc, s.chunks, s.log.Named("backfill"))
	workerDone := make(chan struct{})
	go func() {
		defer close(workerDone)
		if err := worker.Run(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("backfills stopped", zap.Error(err))
		}
	}()
	defer func() { <-workerDone }() // before its connection closes

	backoff := time.Second
	for prepared := true; ; prepared = false {
		started := time.Now()
		err := s.session(ctx, src, js, tables, types, prepared)
		s.setStreaming(false)
		if ctx.Err() != nil || errors.Is(err, leader.ErrLost) {
			return err
		}
		if time.Since(started) > time.Minute {
			backoff = time.Second
		}
		restarts.Inc()
		msg := "capture stream stopped; restarting from the slot"
		if source.Unanswered(err) {
			msg = "postgres does not answer (a server hung, or a connection dropped); connecting again, and restarting from the slot"
		}
		s.log.Warn(msg, zap.Error(err), zap.Duration("backoff", backoff))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxBackoff)
		s.beat()
	}
}

// prepare admits the source (see admit) and makes sure the slot exists.
func (s *Service) prepare(ctx context.Context, src *source.Source, js jetstream.JetStream) (err error) {
	if s.after, err = s.admit(ctx, src, js); err != nil {
		return err
	}
	// This process holds the lease: a capture still holding the slot is
	// a former leader (or this one's dead predecessor, whose walsender
	// Postgres has not noticed yet).
	if !s.lease.Valid() {
		return leader.ErrLost
	}
	if err := src.TakeSlot(ctx); err != nil {
		return err
	}
	return s.ensureSlot(ctx, src)
}

// ensureSlot makes sure the slot exists, and tells the operator when it
// made it: from then on Postgres keeps WAL for it, even with Sluice gone.
func (s *Service) ensureSlot(ctx context.Context, src *source.Source) error {
	created, err := src.EnsureSlot(ctx)
	if created {
		slot := s.cfg.Postgres.Slot
		s.log.Info("created the replication slot: Postgres keeps the WAL from here until capture confirms it (sluice_capture_slot_lag_bytes); drop the slot when retiring Sluice",
			zap.String("slot", slot), zap.String("drop", "SELECT pg_drop_replication_slot('"+slot+"')"))
	}
	return err
}

// beat records that the main loop turned.
func (s *Service) beat() { s.progress.Store(time.Now().UnixNano()) }

func (s *Service) setStreaming(on bool) {
	s.streaming.Store(on)
	if on {
		streamingGauge.Set(1)
	} else {
		streamingGauge.Set(0)
	}
}

// session streams the slot until ctx is cancelled or something fails.
// prepared says that lead prepared the source for this first session.
func (s *Service) session(ctx context.Context, src *source.Source, js jetstream.JetStream, tables map[string]*source.Table, types *pgvalue.Types, prepared bool) (err error) {
	if err := src.Reconnect(ctx); err != nil {
		return err
	}
	// The source is checked at every start: Postgres may have been
	// restored or its slot dropped while capture was away.
	if !prepared {
		if err := s.prepare(ctx, src, js); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	s.interrupt.Store(&cancel)
	defer s.interrupt.Store(nil)
	pub, resume, err := publisher.Open(ctx, js, publisher.Options{Stream: s.topo.Stream, Partitions: s.topo.Partitions,
		Subject: s.topo.Subject, FragmentSubject: s.topo.FragmentSubject, MaxInFlight: maxInFlight, After: s.after})
	if err != nil {
		return err
	}
	stream, err := src.StartStream(ctx)
	if err != nil {
		pub.Close(ctx)
		return err
	}
	captured := func(schema, table string) bool { _, ok := tables[schema+"."+table]; return ok }
	sess := &session{Service: s, src: src, pub: pub, resume: resume, dec: decoder.New(event.Origin{Database: src.Database(), Host: src.Host()}, captured, src, types),
		marks: backfiller.NewTracker(s.chunks)}
	s.setStreaming(true)
	defer func() {
		// Drain: whatever JetStream acknowledged is confirmed to the slot.
		dctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
		defer cancel()
		if cerr := pub.Close(dctx); err == nil && ctx.Err() == nil {
			err = cerr
		}
		if flushed := pub.Flushed(); flushed > 0 {
			stream.SendStatus(dctx, pgoutput.LSN(flushed))
		}
		stream.Close(dctx)
	}()
	if err := sess.run(ctx, stream); err != nil {
		if cause := context.Cause(ctx); errors.Is(cause, errResync) {
			return cause
		}
		return err
	}
	return nil
}

type session struct {
	*Service
	src    *source.Source
	pub    *publisher.Publisher
	resume publisher.Resume
	dec    *decoder.Decoder
	marks  *backfiller.Tracker
	// chunks published in the current transaction, acknowledged with it
	published []chan struct{}
	// flushAt is when the events waiting in batches must be published;
	// zero while none waits.
	flushAt time.Time
	delay   time.Duration // the next flush's, from the last one's size
}

// errRearm ends a receive whose deadline must move earlier: events wait
// for a flush.
var errRearm = errors.New("flush deadline set")

func (ss *session) run(ctx context.Context, stream *source.Stream) error {
	interval := ss.cfg.Postgres.StatusInterval
	var lastBeat, nextStatus time.Time
	for ctx.Err() == nil {
		now := time.Now()
		ss.beat()
		if !ss.lease.Valid() {
			// Paused past the lease, say: another capture may stream now.
			return leader.ErrLost
		}
		if now.Sub(lastBeat) >= ss.cfg.Postgres.HeartbeatInterval {
			lag, err := ss.src.Heartbeat(ctx)
			if err != nil {
				return err
			}
			slotLag.Set(float64(lag))
			slotRead.Set(float64(time.Now().Unix()))
			lastBeat = now
		}
		if !ss.flushAt.IsZero() && !now.Before(ss.flushAt) {
			n, err := ss.pub.Flush(ctx)
			if err != nil {
				return err
			}
			ss.flushAt, ss.delay = time.Time{}, flushDelay
			if n < fewEvents {
				ss.delay = quickFlush
			}
		}
		if !now.Before(nextStatus) {
			if err := stream.CheckAlive(ss.cfg.Postgres.Timeout); err != nil {
				return err
			}
			if err := ss.sendStatus(ctx, stream); err != nil {
				return err
			}
			nextStatus = now.Add(interval)
		}
		deadline := nextStatus
		if !ss.flushAt.IsZero() && ss.flushAt.Before(deadline) {
			deadline = ss.flushAt
		}
		rctx, cancel := context.WithDeadline(ctx, deadline)
		err := ss.receive(ctx, rctx, stream)
		cancel()
		if err != nil && err != errRearm && !source.IsTimeout(err) {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
	return nil
}

// sendStatus confirms the flushed position to the slot, within
// postgres.timeout.
func (ss *session) sendStatus(ctx context.Context, stream *source.Stream) error {
	sctx, cancel := context.WithTimeout(ctx, ss.cfg.Postgres.Timeout)
	defer cancel()
	if err := stream.SendStatus(sctx, pgoutput.LSN(ss.pub.Flushed())); err != nil {
		return fmt.Errorf("send status: %w", err)
	}
	return nil
}

// receive handles messages until rctx's deadline. Waiting for room to
// publish is bounded by ctx only: a slow JetStream is not an error.
func (ss *session) receive(ctx, rctx context.Context, stream *source.Stream) error {
	for {
		msg, err := stream.Receive(rctx)
		if err != nil {
			return err
		}
		switch m := msg.(type) {
		case *source.Keepalive:
			if !ss.dec.InTx() { // every transaction before WALEnd has been received
				if err := ss.pub.Commit(ctx, uint64(m.WALEnd)); err != nil {
					return err
				}
			}
			if m.ReplyRequested {
				if err := ss.sendStatus(ctx, stream); err != nil {
					return err
				}
			}
		case *source.XLogData:
			pm, err := pgoutput.Parse(m.Data)
			if err != nil {
				return fmt.Errorf("decode WAL at %s: %w", m.WALStart, err)
			}
			if b, ok := pm.(*pgoutput.Begin); ok {
				stream.Behind(time.Since(b.CommitTime) > behindAge)
			}
			if err := ss.handle(ctx, pm); err != nil {
				return err
			}
		}
		if !ss.dec.InTx() && ss.pub.Pending() && stream.Idle() {
			// Between transactions, and nothing more has come (Postgres
			// follows a transaction it caught up with by a keepalive):
			// what waits is published now, not after the flush delay,
			// which only a stream that keeps coming is worth waiting for.
			ss.flushAt = time.Now()
			return errRearm
		}
		if ss.flushAt.IsZero() && ss.pub.Pending() {
			ss.flushAt = time.Now().Add(max(ss.delay, quickFlush))
			return errRearm
		}
	}
}

func (ss *session) handle(ctx context.Context, m pgoutput.Message) error {
	if t, ok := m.(*pgoutput.Truncate); ok {
		evs, err := ss.dec.Truncate(t, ss.topo.Partitions)
		if err != nil {
			return err
		}
		for i, ev := range evs {
			ss.marks.Truncated(ev.Schema + "." + ev.Table)
			if err := ss.publish(ctx, ev, i%ss.topo.Partitions); err != nil {
				return err
			}
		}
		return nil
	}
	ev, err := ss.dec.Decode(ctx, m)
	if err != nil {
		return err
	}
	switch m := m.(type) {
	case *pgoutput.Commit:
		acked := ss.published
		ss.published = nil
		return ss.pub.Commit(ctx, uint64(m.EndLSN), acked...)
	case *pgoutput.LogicalMessage:
		switch {
		case m.Prefix == source.BackfillPrefix && m.Transactional && ss.dec.InTx():
			return ss.chunk(ctx, m)
		case m.Prefix == source.HeartbeatPrefix && !m.Transactional && !ss.dec.InTx():
			// A heartbeat outside any transaction: every transaction
			// that committed before it has been received.
			return ss.pub.Commit(ctx, uint64(m.LSN))
		}
	}
	if ev == nil {
		return nil // not a change of a captured table
	}
	table := ev.Schema + "." + ev.Table
	ss.marks.Changed(table, ev.PkValues)
	if len(ev.OldPkValues) > 0 {
		ss.marks.Changed(table, ev.OldPkValues)
	}
	return ss.publish(ctx, ev, ss.topo.Partition(ev.Schema, ev.Table, ev.PkValues))
}

// chunk handles a backfill watermark: at a high one, it publishes the
// chunk's rows that did not change since its low one, as READ events at
// this transaction's position, and for the keys a backfill by key found
// gone, DELETE events for its sink alone.
func (ss *session) chunk(ctx context.Context, m *pgoutput.LogicalMessage) error {
	ch, skip := ss.marks.Mark(m)
	if ch == nil {
		return nil
	}
	tx := ss.dec.Tx()
	for _, row := range ch.Rows {
		pk, err := ch.Rel.Key(row, nil)
		if err != nil {
			return err
		}
		if skip(pk) {
			continue // its change, between the watermarks, is as new or newer
		}
		ev, err := ch.Rel.Read(tx, row, ch.Job, ch.Sink)
		if err != nil {
			return err
		}
		if err := ss.publish(ctx, ev, ss.topo.Partition(ev.Schema, ev.Table, ev.PkValues)); err != nil {
			return err
		}
	}
	for _, pk := range ch.Missing {
		if skip(pk) {
			continue // inserted again between the watermarks: that change is newer
		}
		ev, err := ch.Rel.Gone(tx, pk, ch.Job, ch.Sink)
		if err != nil {
			return err
		}
		if err := ss.publish(ctx, ev, ss.topo.Partition(ev.Schema, ev.Table, ev.PkValues)); err != nil {
			return err
		}
	}
	ss.published = append(ss.published, ch.Acked)
	return nil
}

func (ss *session) publish(ctx context.Context, ev *sluicev1.ChangeEvent, partition int) error {
	if ss.resume.Covers(partition, ev.CommitLsn, ev.CommitIdx, ev.Schema+"."+ev.Table) {
		return nil // published before a restart
	}
	return ss.pub.Add(ctx, partition, ev)
}

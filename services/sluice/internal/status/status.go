// Package status is `sluice status`: where the pipeline stands, read from
// Postgres and JetStream (the services need not be reachable themselves).
// Each side is read on its own, so that one being down does not hide the
// other.
package status

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	jobs "github.com/sluicehq/sluice/pkg/backfill"
	"github.com/sluicehq/sluice/pkg/backlog"
	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/lineage"
	"github.com/sluicehq/sluice/pkg/topology"
)

// Output formats.
const (
	Text = "text"
	JSON = "json"
)

// CheckOutput refuses an unknown output format.
func CheckOutput(output string) error {
	if output != Text && output != JSON {
		return fmt.Errorf("--output: %q is neither text nor json", output)
	}
	return nil
}

// postgresTimeout bounds the connection to Postgres: an unreachable host
// must not keep the NATS side from being printed.
const postgresTimeout = 5 * time.Second

// Run prints the status of the pipeline of cfg in the output format. It
// prints what it could read before it returns an error for what it could
// not.
func Run(ctx context.Context, out io.Writer, cfg *config.Config, log *zap.Logger, output string) error {
	if err := CheckOutput(output); err != nil {
		return err
	}
	now := time.Now().UTC()
	r := Report{At: now, NATS: NATS{URL: topology.Redact(cfg.NATS.URL)}, Sinks: []Sink{}, Backfills: []Backfill{}}
	// Both sides at once: an unreachable Postgres host costs its timeout
	// once, not on top of NATS's.
	pg := make(chan Postgres, 1)
	go func() { pg <- readPostgres(ctx, cfg.Postgres) }()
	if err := readNATS(ctx, cfg, log, &r, now); err != nil {
		r.NATS.Error = err.Error()
	}
	r.Postgres = <-pg
	if output == JSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			return fmt.Errorf("write status: %w", err)
		}
	} else {
		writeText(out, r)
	}
	var failed []string
	if r.Postgres.Error != "" {
		failed = append(failed, "postgres could not be reached")
	}
	if r.NATS.Error != "" {
		failed = append(failed, "nats could not be read")
	}
	if len(failed) > 0 {
		return fmt.Errorf("%s (the status above says what could be read)", strings.Join(failed, " and "))
	}
	return nil
}

// readPostgres reads the replication slot. It never returns the URL's
// password, nor an error that holds it.
func readPostgres(ctx context.Context, p config.Postgres) Postgres {
	r := Postgres{}
	pc, err := pgx.ParseConfig(p.URL)
	if err != nil {
		// The parser's message may quote the URL: say only that it failed.
		r.Error = "postgres.url cannot be parsed (sluice config check says why)"
		return r
	}
	r.Host = net.JoinHostPort(pc.Host, strconv.Itoa(int(pc.Port)))
	r.Database = pc.Database
	ctx, cancel := context.WithTimeout(ctx, postgresTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, pc)
	if err != nil {
		r.Error = redact(oneLine(err.Error()), pc.Password)
		return r
	}
	defer conn.Close(ctx)
	s := Slot{Name: p.Slot, Exists: true}
	var pid *int32
	var confirmed *string
	var lag *int64
	err = conn.QueryRow(ctx, `SELECT active, active_pid, confirmed_flush_lsn::text,
		pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1`, p.Slot).
		Scan(&s.Active, &pid, &confirmed, &lag)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		s.Exists = false
	case err != nil:
		r.Error = redact(fmt.Sprintf("read slot %s: %v", p.Slot, err), pc.Password)
		return r
	}
	s.WalsenderPID, s.ConfirmedFlushLSN, s.RetainedWALBytes = deref(pid), deref(confirmed), uint64(max(0, deref(lag)))
	r.Slot = &s
	return r
}

// oneLine joins the lines of a message, once each: the driver puts each
// address it tried on a line of its own, often the same one twice (with
// TLS, then without).
func oneLine(msg string) string {
	var lines []string
	for _, l := range strings.Split(msg, "\n") {
		if l = strings.TrimSpace(l); l != "" && !slices.Contains(lines, l) {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, " ")
}

// redact removes a password from a message, should a driver quote it.
func redact(msg, password string) string {
	if password == "" {
		return msg
	}
	return strings.ReplaceAll(msg, password, "xxxxx")
}

// readNATS fills in the stream, the sinks and the backfills. On an error
// it returns, keeping what it read until then.
func readNATS(ctx context.Context, cfg *config.Config, log *zap.Logger, r *Report, now time.Time) error {
	nc, js, err := topology.Dial(cfg.NATS, "sluice status", log)
	if err != nil {
		return err
	}
	defer nc.Close()
	topo := topology.New(cfg.NATS)
	r.Capture = readCapture(ctx, js, topo)
	r.Stream = &Stream{Name: topo.Stream}
	st, err := js.Stream(ctx, topo.Stream)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		st = nil // no backlog to read: capture creates it
	case err != nil:
		return fmt.Errorf("read stream %s: %w", topo.Stream, err)
	default:
		info, err := st.Info(ctx)
		if err != nil {
			return fmt.Errorf("read stream %s: %w", topo.Stream, err)
		}
		s := info.State
		r.Stream.Exists = true
		r.Stream.Messages, r.Stream.Bytes, r.Stream.FirstSeq, r.Stream.LastSeq, r.Stream.LastTime = s.Msgs, s.Bytes, s.FirstSeq, s.LastSeq, s.LastTime
	}
	// Status reads: it does not create the jobs' bucket when no backfill
	// ever ran.
	var store *jobs.Store
	if _, err := js.KeyValue(ctx, jobs.BucketName(topo)); err == nil {
		if store, err = jobs.Open(ctx, js, topo); err != nil {
			return err
		}
	} else if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return fmt.Errorf("read backfill jobs: %w", err)
	}
	if st != nil {
		names := make([]string, len(cfg.Sinks))
		for i, s := range cfg.Sinks {
			names[i] = s.Name
		}
		sinks, err := backlog.Read(ctx, js, st, topo, names)
		if err != nil {
			return err
		}
		for _, b := range sinks {
			s := Sink{Sink: b, PendingMessages: b.Pending(), OldestUnapplied: b.Oldest(), Assignment: map[string][]int{}}
			for _, w := range b.Writers {
				s.Assignment[w] = topo.Assign(b.Writers, w)
			}
			if store != nil {
				m, _, err := store.Marker(ctx, b.Name)
				if err != nil {
					return err
				}
				s.RedisResets, s.LastRedisReset = m.Resets, m.LastReset
			}
			r.Sinks = append(r.Sinks, s)
		}
	}
	if store == nil {
		return nil
	}
	list, err := store.List(ctx)
	if err != nil {
		return err
	}
	for _, j := range listed(list, now) {
		r.Backfills = append(r.Backfills, backfillOf(j))
	}
	return nil
}

// Ended backfills are listed for a day, at most the last few of them;
// active ones always are.
const (
	endedFor   = 24 * time.Hour
	endedShown = 5
)

// listed picks, from every job (oldest first), those status lists: the
// active ones, and the last endedShown that ended within endedFor of now.
func listed(list []jobs.Job, now time.Time) []jobs.Job {
	var shown []jobs.Job
	ended := 0
	for i := len(list) - 1; i >= 0; i-- {
		j := list[i]
		if !j.State.Active() {
			if ended >= endedShown || now.Sub(endedAt(j)) > endedFor {
				continue
			}
			ended++
		}
		shown = append(shown, j)
	}
	slices.Reverse(shown)
	return shown
}

// endedAt is when an ended job last changed: when it ended.
func endedAt(j jobs.Job) time.Time {
	if j.Updated.IsZero() {
		return j.Created
	}
	return j.Updated
}

func backfillOf(j jobs.Job) Backfill {
	b := Backfill{ID: j.ID, Sink: j.Sink, Table: j.Table, Where: j.Where, Keys: len(j.Keys), State: j.State,
		RowsRead: j.Done, RowsEstimated: j.Total, Error: j.Error, Created: j.Created, Updated: j.Updated}
	if j.State == jobs.Running {
		b.RowsPerSecond = j.Rate
		b.ETASeconds = j.ETA().Round(time.Second).Seconds()
	}
	return b
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// readCapture reads the capture lease and the stream's source, without
// creating their buckets.
func readCapture(ctx context.Context, js jetstream.JetStream, topo topology.Topology) *Capture {
	c := &Capture{}
	if kv, err := js.KeyValue(ctx, topo.CaptureLeaseBucket()); err == nil {
		if e, err := kv.Get(ctx, topology.CaptureLeaderKey); err == nil {
			c.Leader = string(e.Value())
		}
	}
	if _, err := js.KeyValue(ctx, lineage.BucketName(topo)); err == nil {
		if lin, err := lineage.Open(ctx, js, topo); err == nil {
			if src, ok, err := lin.Source(ctx); err == nil && ok {
				c.SystemID = src.SystemID
			}
			if req, ok, err := lin.Resync(ctx); err == nil && ok && req.Done.IsZero() {
				c.ResyncPending = true
			}
		}
	}
	return c
}

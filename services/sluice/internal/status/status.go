// Package status is `sluice status`: where the pipeline stands, read from
// Postgres and JetStream (the services need not be reachable themselves).
package status

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	jobs "github.com/sluicehq/sluice/pkg/backfill"
	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/deadletter"
	"github.com/sluicehq/sluice/pkg/topology"
)

// Run prints the status of the pipeline of cfg.
func Run(ctx context.Context, out io.Writer, cfg *config.Config, log *zap.Logger) error {
	if err := slot(ctx, out, cfg.Postgres); err != nil {
		return err
	}
	nc, js, err := topology.Dial(cfg.NATS.URL, "sluice status", log)
	if err != nil {
		return err
	}
	defer nc.Close()
	topo := topology.New(cfg.NATS)
	st, err := js.Stream(ctx, topo.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		fmt.Fprintf(out, "stream    %s does not exist yet (capture creates it)\n", topo.Stream)
		return nil
	}
	if err != nil {
		return fmt.Errorf("read stream %s: %w", topo.Stream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return fmt.Errorf("read stream %s: %w", topo.Stream, err)
	}
	s := info.State
	fmt.Fprintf(out, "stream    %s: %d changes held (%s), sequence %d, last at %s\n", topo.Stream, s.Msgs, size(s.Bytes), s.LastSeq, when(s.LastTime))
	var letters map[string]uint64
	if dlq, err := js.Stream(ctx, deadletter.StreamName(topo)); err == nil {
		if di, err := dlq.Info(ctx, jetstream.WithSubjectFilter(topo.Stream+".dlq.*")); err == nil {
			letters = di.State.Subjects
		}
	}
	var store *jobs.Store
	if _, err := js.KeyValue(ctx, jobs.BucketName(topo)); err == nil {
		if store, err = jobs.Open(ctx, js, topo); err != nil {
			return err
		}
	}
	for _, sink := range cfg.Sinks {
		if err := sinkStatus(ctx, out, js, st, topo, sink.Name, letters[topo.Stream+".dlq."+sink.Name]); err != nil {
			return err
		}
		if store != nil {
			if m, _, err := store.Marker(ctx, sink.Name); err == nil && m.Resets > 0 {
				fmt.Fprintf(out, "  redis lost its data %d times, last at %s\n", m.Resets, when(m.LastReset))
			}
		}
	}
	if store == nil {
		return nil // no backfill ever
	}
	return backfills(ctx, out, store)
}

// backfills lists the active backfills and the last few that ended.
func backfills(ctx context.Context, out io.Writer, store *jobs.Store) error {
	list, err := store.List(ctx)
	if err != nil {
		return err
	}
	var shown []jobs.Job
	ended := 0
	for i := len(list) - 1; i >= 0; i-- {
		if j := list[i]; j.State.Active() || ended < 5 {
			if !j.State.Active() {
				ended++
			}
			shown = append(shown, j)
		}
	}
	slices.Reverse(shown)
	for _, j := range shown {
		line := fmt.Sprintf("backfill  %s %s → %s: %s, %d of ~%d rows", j.ID, j.Table, j.Sink, j.State, j.Done, j.Total)
		if j.State == jobs.Running {
			line += fmt.Sprintf(", %.0f rows/s", j.Rate)
			if eta := j.ETA(); eta > 0 {
				line += ", ETA " + eta.Round(time.Second).String()
			}
		}
		if j.Error != "" {
			line += ": " + j.Error
		}
		fmt.Fprintln(out, line)
	}
	return nil
}

func slot(ctx context.Context, out io.Writer, p config.Postgres) error {
	conn, err := pgx.Connect(ctx, p.URL)
	if err != nil {
		return fmt.Errorf("connect to postgres: %w", err)
	}
	defer conn.Close(ctx)
	var active bool
	var pid *int32
	var confirmed *string
	var lag *int64
	err = conn.QueryRow(ctx, `SELECT active, active_pid, confirmed_flush_lsn::text,
		pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1`, p.Slot).
		Scan(&active, &pid, &confirmed, &lag)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		fmt.Fprintf(out, "postgres  slot %s does not exist yet (capture creates it)\n", p.Slot)
		return nil
	case err != nil:
		return fmt.Errorf("read slot %s: %w", p.Slot, err)
	}
	state := "idle: no capture is streaming it"
	if active && pid != nil {
		state = fmt.Sprintf("streaming (walsender pid %d)", *pid)
	}
	fmt.Fprintf(out, "postgres  slot %s: %s, confirmed %s, retains %s of WAL\n", p.Slot, state, deref(confirmed), size(uint64(max(0, deref(lag)))))
	return nil
}

func sinkStatus(ctx context.Context, out io.Writer, js jetstream.JetStream, st jetstream.Stream, topo topology.Topology, sink string, letters uint64) error {
	var total uint64
	var busy []string
	for p := range topo.Partitions {
		c, err := st.Consumer(ctx, topology.ConsumerName(sink, p))
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			busy = append(busy, fmt.Sprintf("%d: no consumer", p))
			continue
		}
		if err != nil {
			return fmt.Errorf("read consumer of sink %s: %w", sink, err)
		}
		ci := c.CachedInfo()
		n := ci.NumPending + uint64(ci.NumAckPending)
		total += n
		if n > 0 {
			busy = append(busy, fmt.Sprintf("%d: %d", p, n))
		}
	}
	detail := ""
	if len(busy) > 0 {
		detail = " (partition " + strings.Join(busy, ", ") + ")"
	}
	fmt.Fprintf(out, "sink      %s: %d pending%s, %d dead letters\n", sink, total, detail, letters)

	var members []string
	if kv, err := js.KeyValue(ctx, topo.MembersBucket(sink)); err == nil {
		if keys, err := kv.ListKeys(ctx); err == nil {
			for k := range keys.Keys() {
				members = append(members, k)
			}
		}
	}
	slices.Sort(members)
	if len(members) == 0 {
		fmt.Fprintln(out, "  writers none running")
		return nil
	}
	for i, m := range members {
		label := "         "
		if i == 0 {
			label = "  writers"
		}
		fmt.Fprintf(out, "%s %s  partitions %s\n", label, m, ints(topo.Assign(members, m)))
	}
	return nil
}

func ints(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

func size(b uint64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(b)/(1<<10))
	}
	return fmt.Sprintf("%d B", b)
}

func when(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.UTC().Format(time.RFC3339)
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

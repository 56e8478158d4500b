package decoder_test

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/testenv"
	sluicev1 "github.com/sluicehq/sluice/proto/sluice/v1"
	"github.com/sluicehq/sluice/services/capture/internal/decoder"
	"github.com/sluicehq/sluice/services/capture/internal/event"
	"github.com/sluicehq/sluice/services/capture/internal/pgoutput"
	"github.com/sluicehq/sluice/services/capture/internal/pgvalue"
	"github.com/sluicehq/sluice/services/capture/internal/source"
)

// One cluster serves every test of the package; each test has its own
// tables, publication and slot.
var (
	clusterOnce sync.Once
	cluster     *testenv.Postgres
	clusterErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if cluster != nil {
		cluster.Stop()
	}
	os.Exit(code)
}

func postgres(t *testing.T) *testenv.Postgres {
	t.Helper()
	clusterOnce.Do(func() {
		cluster, clusterErr = testenv.StartPostgres(context.Background(), testenv.PostgresOptions{})
	})
	if clusterErr != nil {
		t.Fatalf("start postgres: %v", clusterErr)
	}
	return cluster
}

// replica reads a slot's changes the way capture does: the real
// replication stream, pgoutput decoding, and a Decoder on the catalog
// connection.
type replica struct {
	t      *testing.T
	pg     *testenv.Postgres
	src    *source.Source
	stream *source.Stream
	dec    *decoder.Decoder
	// unchanged counts the unchanged TOAST values Postgres did not send in
	// the new rows of updates.
	unchanged int
}

var nonName = regexp.MustCompile(`[^a-z0-9_]+`)

// startReplica runs setup, then publishes tables (schema.table) through a
// new slot and starts streaming it: changes made after this returns are
// received.
func startReplica(t *testing.T, setup string, tables ...string) *replica {
	t.Helper()
	ctx := context.Background()
	pg := postgres(t)
	if setup != "" {
		pg.Exec(t, setup)
	}
	name := nonName.ReplaceAllString(strings.ToLower(t.Name()), "_")
	cfg := config.Postgres{URL: pg.URL, Slot: name, Publication: name, Tables: tables, StatusInterval: time.Second}
	src, err := source.Connect(ctx, cfg, pgvalue.SessionParams)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close(context.Background()) })
	if _, err := src.Tables(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := src.EnsurePublication(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := src.EnsureSlot(ctx); err != nil {
		t.Fatal(err)
	}
	stream, err := src.StartStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stream.Close(context.Background())
		dropSlot(t, pg, name)
	})
	captured := func(schema, table string) bool {
		for _, q := range tables {
			if q == schema+"."+table {
				return true
			}
		}
		return false
	}
	dec := decoder.New(event.Origin{Database: src.Database(), Host: src.Host()}, captured, src, pgvalue.NewTypes(src))
	return &replica{t: t, pg: pg, src: src, stream: stream, dec: dec}
}

// dropSlot drops a slot once its walsender has let go of it, so that the
// shared cluster does not run out of slots.
func dropSlot(t *testing.T, pg *testenv.Postgres, slot string) {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var active bool
		if err := query(pg, `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, []any{slot}, &active); err != nil || !active {
			break
		}
	}
	pg.Exec(t, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, slot)
}

// events returns the next n change events, in commit order, failing the
// test when they do not come within a deadline.
func (r *replica) events(n int) []*sluicev1.ChangeEvent {
	r.t.Helper()
	ctx := context.Background()
	var evs []*sluicev1.ChangeEvent
	deadline := time.Now().Add(30 * time.Second)
	for len(evs) < n {
		if time.Now().After(deadline) {
			r.t.Fatalf("got %d of %d events: %v", len(evs), n, records(evs))
		}
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		msg, err := r.stream.Receive(rctx)
		cancel()
		if source.IsTimeout(err) {
			continue
		}
		if err != nil {
			r.t.Fatal(err)
		}
		x, ok := msg.(*source.XLogData)
		if !ok {
			continue
		}
		m, err := pgoutput.Parse(x.Data)
		if err != nil {
			r.t.Fatal(err)
		}
		if u, ok := m.(*pgoutput.Update); ok {
			for _, v := range u.New {
				if v.Kind == pgoutput.Unchanged {
					r.unchanged++
				}
			}
		}
		ev, err := r.dec.Decode(ctx, m)
		if err != nil {
			r.t.Fatalf("decode %T: %v", m, err)
		}
		if ev != nil {
			evs = append(evs, ev)
		}
		if c, ok := m.(*pgoutput.Commit); ok {
			if err := r.stream.SendStatus(context.Background(), c.EndLSN); err != nil {
				r.t.Fatal(err)
			}
		}
	}
	return evs
}

func records(evs []*sluicev1.ChangeEvent) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = string(ev.Record)
	}
	return out
}

// expectRecords checks the records of the next len(want) events.
func (r *replica) expectRecords(want ...string) []*sluicev1.ChangeEvent {
	r.t.Helper()
	evs := r.events(len(want))
	for i, ev := range evs {
		if got := string(ev.Record); got != want[i] {
			r.t.Errorf("event %d (%s):\n got %s\nwant %s", i, ev.Action, got, want[i])
		}
	}
	return evs
}

// query scans one row.
func query(pg *testenv.Postgres, sql string, args []any, dest ...any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.URL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if err := conn.QueryRow(ctx, sql, args...).Scan(dest...); err != nil {
		return fmt.Errorf("%s: %w", sql, err)
	}
	return nil
}

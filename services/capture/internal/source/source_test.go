package source

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/testenv"
	"github.com/sluicehq/sluice/services/capture/internal/pgoutput"
	"github.com/sluicehq/sluice/services/capture/internal/pgvalue"
)

func cfg(url string, tables ...string) config.Postgres {
	return config.Postgres{URL: url, Slot: "sluice", Publication: "sluice", Tables: tables}
}

func TestPrepareAndStream(t *testing.T) {
	ctx := context.Background()
	pg := testenv.NewPostgres(t, testenv.PostgresOptions{})
	pg.Exec(t, `CREATE TABLE orders (note text, id int, tenant text, PRIMARY KEY (tenant, id));
		CREATE TABLE full_id (id int PRIMARY KEY); ALTER TABLE full_id REPLICA IDENTITY FULL;
		CREATE TABLE nopk (a int);
		CREATE TABLE byindex (a int NOT NULL UNIQUE, id int PRIMARY KEY); ALTER TABLE byindex REPLICA IDENTITY USING INDEX byindex_a_key;
		CREATE VIEW v AS SELECT 1 AS one`)

	src, err := Connect(ctx, cfg(pg.URL, "public.orders", "public.full_id"), pgvalue.SessionParams)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(ctx)
	tables, err := src.Tables(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if o := tables["public.orders"]; strings.Join(o.PK, ",") != "id,tenant" || o.Identity != 'd' || tables["public.full_id"].Identity != 'f' {
		t.Fatalf("tables = %+v %+v", o, tables["public.full_id"])
	}

	bad, err := Connect(ctx, cfg(pg.URL, "public.ghost", "public.nopk", "public.byindex", "public.v"), pgvalue.SessionParams)
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close(ctx)
	_, err = bad.Tables(ctx)
	for _, want := range []string{"table public.ghost does not exist", "table public.nopk has no primary key", "table public.byindex has REPLICA IDENTITY USING INDEX", "public.v is not a table"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Tables error %v, want it to say %q", err, want)
		}
	}

	if _, err := src.EnsurePublication(ctx); err != nil {
		t.Fatal(err)
	}
	if p, err := src.EnsurePublication(ctx); err != nil || p.Created || !p.Managed { // exists now
		t.Fatalf("publication again: %+v, %v", p, err)
	}

	if created, err := src.EnsureSlot(ctx); err != nil || !created {
		t.Fatalf("slot: created %v, %v", created, err)
	}
	if created, err := src.EnsureSlot(ctx); err != nil || created { // exists now
		t.Fatalf("slot again: created %v, %v", created, err)
	}
	st, err := src.StartStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close(ctx)
	// While the slot is streamed, another capture is told who holds it.
	other, _ := Connect(ctx, cfg(pg.URL, "public.orders"), pgvalue.SessionParams)
	defer other.Close(ctx)
	if _, err := other.ensureSlot(ctx); err == nil || !strings.Contains(err.Error(), "replication slot sluice is in use by another process (pid") {
		t.Errorf("busy slot: %v", err)
	}

	pg.Exec(t, `INSERT INTO orders VALUES ('hi', 7, 'acme')`)
	var got []string
	deadline := time.Now().Add(20 * time.Second)
	for len(got) < 4 && time.Now().Before(deadline) {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		msg, err := st.Receive(rctx)
		cancel()
		if IsTimeout(err) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if x, ok := msg.(*XLogData); ok {
			m, err := pgoutput.Parse(x.Data)
			if err != nil {
				t.Fatal(err)
			}
			switch m := m.(type) {
			case *pgoutput.Begin:
				got = append(got, "begin")
			case *pgoutput.Relation:
				got = append(got, "relation "+m.Name)
			case *pgoutput.Insert:
				got = append(got, "insert "+string(m.New[0].Data)+" "+string(m.New[2].Data))
			case *pgoutput.Commit:
				got = append(got, "commit")
				if err := st.SendStatus(ctx, m.EndLSN); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if strings.Join(got, "; ") != "begin; relation orders; insert hi acme; commit" {
		t.Fatalf("stream: %v", got)
	}

	// A wait ends at its context's deadline, or once the context is
	// cancelled (a shutdown), and the stream goes on after either.
	receive := func(rctx context.Context) (any, error) {
		for {
			msg, err := st.Receive(rctx)
			if _, ok := msg.(*Keepalive); !ok {
				return msg, err
			}
		}
	}
	began := time.Now()
	rctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	backstop := time.AfterFunc(15*time.Second, cancel) // should the deadline be ignored
	_, err = receive(rctx)
	backstop.Stop()
	cancel()
	if !IsTimeout(err) || time.Since(began) > 10*time.Second {
		t.Fatalf("receive past its deadline: %v after %s", err, time.Since(began))
	}
	// Cancelled long before its deadline, which only bounds a wait that
	// ignores the cancellation.
	began = time.Now()
	rctx, cancel = context.WithTimeout(ctx, 15*time.Second)
	time.AfterFunc(200*time.Millisecond, cancel)
	_, err = receive(rctx)
	if !IsTimeout(err) || time.Since(began) > 10*time.Second {
		t.Fatalf("receive cancelled: %v after %s", err, time.Since(began))
	}
	// A transaction waiting in the socket makes the stream busy, until it
	// is read.
	pg.Exec(t, `INSERT INTO orders VALUES ('again', 8, 'acme')`)
	for deadline := time.Now().Add(20 * time.Second); st.Idle(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the stream stays idle while a transaction waits in it")
		}
	}
	rctx, cancel = context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	msg, err := receive(rctx)
	if x, ok := msg.(*XLogData); !ok || err != nil {
		t.Fatalf("receive after a timeout: %T, %v", msg, err)
	} else if m, err := pgoutput.Parse(x.Data); err != nil {
		t.Fatal(err)
	} else if _, ok := m.(*pgoutput.Begin); !ok {
		t.Fatalf("receive after a timeout: %T, want the next transaction's begin", m)
	}
	for {
		msg, err := receive(rctx)
		if err != nil {
			t.Fatal(err)
		}
		if m, _ := pgoutput.Parse(msg.(*XLogData).Data); m != nil {
			if _, ok := m.(*pgoutput.Commit); ok {
				break
			}
		}
	}
	// Read to its end, and to the keepalive Postgres sends once caught up,
	// the stream is idle.
	for !st.Idle() {
		if _, err := st.Receive(rctx); err != nil {
			t.Fatalf("the stream is never idle after its last transaction: %v", err)
		}
	}
}

func TestServerChecks(t *testing.T) {
	ctx := context.Background()
	pg := testenv.NewPostgres(t, testenv.PostgresOptions{Settings: map[string]string{"wal_level": "replica"}})
	pg.Exec(t, `CREATE ROLE app LOGIN`)
	_, err := Connect(ctx, cfg(pg.URL, "public.t"), pgvalue.SessionParams)
	if err == nil || !strings.Contains(err.Error(), "wal_level = replica; logical replication needs wal_level = logical") {
		t.Errorf("wal_level: %v", err)
	}

	pg2 := testenv.NewPostgres(t, testenv.PostgresOptions{})
	pg2.Exec(t, `CREATE ROLE app LOGIN`)
	url := strings.Replace(pg2.URL, "postgres@", "app@", 1)
	_, err = Connect(ctx, cfg(url, "public.t"), pgvalue.SessionParams)
	if err == nil || !strings.Contains(err.Error(), `postgres role app may not replicate; grant it: ALTER ROLE "app" REPLICATION`) {
		t.Errorf("role: %v", err)
	}
}

// Rows by key says which keys matched as Postgres compares them, not as
// their text reads: '01' is the row whose id is 1.
func TestRowsByKey(t *testing.T) {
	ctx := context.Background()
	pg := testenv.NewPostgres(t, testenv.PostgresOptions{})
	pg.Exec(t, `CREATE TABLE orders (note text, id int, tenant text, PRIMARY KEY (tenant, id));
		INSERT INTO orders VALUES ('a', 1, 'x'), ('b', 2, 'x'), ('c', 1, 'y')`)
	src, err := Connect(ctx, cfg(pg.URL, "public.orders"), pgvalue.SessionParams)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(ctx)
	sh, err := src.Shape(ctx, "public", "orders")
	if err != nil {
		t.Fatal(err)
	}
	// Keys in PK order (id, tenant).
	keys := [][]string{{"01", "x"}, {"3", "x"}, {"1", "y"}, {"2", "z"}}
	rows, found, err := src.Rows(ctx, sh, keys)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 || len(rows[0]) != len(sh.Relation.Columns) || !slices.Equal(found, []bool{true, false, true, false}) {
		t.Fatalf("%d rows, found %v", len(rows), found)
	}
}

// A watermark is flushed when Watermark returns, on a server whose
// synchronous_commit is off too (the test servers' setting): logical
// replication sends only flushed WAL, and a chunk waits for both its
// watermarks.
func TestWatermarkFlushed(t *testing.T) {
	ctx := context.Background()
	pg := testenv.NewPostgres(t, testenv.PostgresOptions{Settings: map[string]string{"synchronous_commit": "off", "wal_writer_delay": "10s"}})
	src, err := Connect(ctx, cfg(pg.URL), pgvalue.SessionParams)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(ctx)
	conn, err := pgx.Connect(ctx, pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for i := range 5 {
		lsn, err := src.Watermark(ctx, "low chunk"+strconv.Itoa(i)+" public.t")
		if err != nil {
			t.Fatal(err)
		}
		var flushed bool
		if err := conn.QueryRow(ctx, `SELECT pg_current_wal_flush_lsn() - '0/0' >= $1::bigint`, int64(lsn)).Scan(&flushed); err != nil {
			t.Fatal(err)
		}
		if lsn == 0 || !flushed {
			t.Fatalf("watermark %d at %s not flushed once written", i, lsn)
		}
	}
}

// From Postgres 17 on the slot is created as a failover slot; before, the
// call has no such argument. (The servers here are older than 17: the
// tests above create slots through the first form.)
func TestCreateSlotSQL(t *testing.T) {
	if got := createSlotSQL(160004); strings.Contains(got, "true") {
		t.Errorf("Postgres 16: %s", got)
	}
	if got := createSlotSQL(170000); !strings.HasSuffix(got, "'pgoutput', false, false, true)") {
		t.Errorf("Postgres 17: %s", got)
	}
}

package e2e

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluicehq/sluice/e2e/harness"
)

// A slot dropped while capture was stopped: capture refuses to stream and
// says why (log, /readyz, sluice_capture_source_refused) instead of making
// a new slot after the changes made meanwhile; `sluice resync` then has it
// make one and backfill the sink, and Redis ends equal to Postgres.
func TestSlotLossAndResync(t *testing.T) {
	e := harness.NewEnv(t)
	e.Exec(harness.AccountsSchema)
	cfg := e.Config([]string{"accounts"}, true)
	capture := e.RunPipeline(cfg, "cache")
	e.Exec(`INSERT INTO accounts (id, n) SELECT g, g % 10 FROM generate_series(1, 500) g`)
	e.WaitMatch(60*time.Second, harness.Accounts)
	if code := capture.Stop(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("capture exited %d", code)
	}

	// Meanwhile: changes, and the slot goes.
	e.Exec(`UPDATE accounts SET n = n + 100 WHERE id % 7 = 0`)
	e.Exec(`INSERT INTO accounts (id, n) SELECT g, 1 FROM generate_series(501, 600) g`)
	e.DropSlot("sluice")

	served := harness.StartServing(t, "sluice-capture", "--config", cfg)
	harness.Eventually(t, 30*time.Second, func() string {
		if r := served.Get("/readyz"); !strings.Contains(r, "503") || !strings.Contains(r, "replication slot sluice is gone") {
			return "/readyz: " + r
		}
		if m := served.Get("/metrics"); !strings.Contains(m, `sluice_capture_source_refused{reason="slot_lost"} 1`) {
			return "no refusal metric"
		}
		return ""
	})
	var slots int
	if err := e.Conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_replication_slots`).Scan(&slots); err != nil || slots != 0 {
		t.Fatalf("capture made a slot while refusing: %d slots (%v)", slots, err)
	}
	if !strings.Contains(served.Output(), "capture refuses to stream") {
		t.Errorf("no refusal logged: %s", served.Tail(2000))
	}

	rs := harness.Start(t, "sluice", "resync", "--config", cfg)
	if code := rs.WaitExit(2 * time.Minute); code != 0 {
		t.Fatalf("sluice resync exited %d: %s", code, rs.Output())
	}
	// Changes after the resync flow too.
	e.Exec(`UPDATE accounts SET note = 'after' WHERE id <= 50`)
	e.WaitMatch(60*time.Second, harness.Accounts)
	harness.Eventually(t, 30*time.Second, func() string {
		if m := served.Get("/metrics"); !strings.Contains(m, `sluice_capture_source_refused{reason="slot_lost"} 0`) {
			return "still refused"
		}
		if r := served.Get("/readyz"); !strings.HasPrefix(r, "200") {
			return "/readyz: " + r
		}
		return ""
	})
	// The new slot keeps WAL from now on: the operator is told.
	if !strings.Contains(served.Output(), `"msg":"created the replication slot`) {
		t.Errorf("the new slot not logged: %s", served.Tail(2000))
	}
}

// A database restored from a base backup taken earlier, started in place
// of the original: its WAL ends before the stream's last change, and (as
// pg_basebackup copies no slot) the slot is gone too. Capture refuses with
// database_behind, which tells the operator to flush the caches before a
// resync, not slot_lost; after the flush and `sluice resync` Redis holds
// the restored rows.
func TestRestoredDatabaseRefused(t *testing.T) {
	e := harness.NewEnv(t)
	e.Exec(harness.AccountsSchema)
	cfg := e.Config([]string{"accounts"}, true)
	served := harness.StartServing(t, "sluice-capture", "--config", cfg)
	e.WaitStreaming(served.Proc)
	harness.Start(t, "sluice-redis-writer", "--config", cfg, "--sink", "cache")
	e.Exec(`INSERT INTO accounts (id, n) SELECT g, g % 10 FROM generate_series(1, 300) g`)
	e.WaitMatch(60*time.Second, harness.Accounts)

	ctx := context.Background()
	backup, err := e.PG.BaseBackup(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Changes the backup does not have reach Redis.
	e.Exec(`UPDATE accounts SET n = n + 100, note = 'after the backup' WHERE id % 3 = 0`)
	e.Exec(`INSERT INTO accounts (id, n) SELECT g, 1 FROM generate_series(301, 400) g`)
	e.WaitMatch(60*time.Second, harness.Accounts)

	e.Conn.Close(ctx)
	if err := e.PG.Restore(ctx, backup); err != nil {
		t.Fatal(err)
	}
	e.Reconnect()
	harness.Eventually(t, 60*time.Second, func() string {
		if r := served.Get("/readyz"); !strings.Contains(r, "503") || !strings.Contains(r, "restored to an earlier point") {
			return "/readyz: " + r
		}
		m := served.Get("/metrics")
		if !strings.Contains(m, `sluice_capture_source_refused{reason="database_behind"} 1`) {
			return "no database_behind refusal metric"
		}
		if !strings.Contains(m, `sluice_capture_source_refused{reason="slot_lost"} 0`) {
			return "refused as slot_lost"
		}
		return ""
	})
	if out := served.Output(); !strings.Contains(out, "capture refuses to stream") || !strings.Contains(out, `"reason":"database_behind"`) ||
		!strings.Contains(out, "flush every sink's Redis") {
		t.Errorf("the refusal's log does not say the database is behind and the caches must be flushed: %s", served.Tail(2000))
	}
	var slots int
	if err := e.Conn.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots`).Scan(&slots); err != nil || slots != 0 {
		t.Fatalf("capture made a slot while refusing: %d slots (%v)", slots, err)
	}

	// What the refusal says to do: flush, resync.
	if err := e.RC.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	rs := harness.Start(t, "sluice", "resync", "--config", cfg)
	if code := rs.WaitExit(2 * time.Minute); code != 0 {
		t.Fatalf("sluice resync exited %d: %s", code, rs.Output())
	}
	e.Exec(`UPDATE accounts SET note = 'restored' WHERE id <= 20`)
	e.WaitMatch(90*time.Second, harness.Accounts)
}

package faults

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sluicehq/sluice/e2e/harness"
	"github.com/sluicehq/sluice/pkg/testenv"
)

var docs = testenv.Table{Schema: "public", Name: "docs", PK: []string{"id"}, KeyPrefix: "sequin"}

// Rows of 3 MB and 20 MB, through a NATS server with the default
// max_payload of 1 MiB, among a normal workload and while a writer is
// killed: every change lands, in order with the others of its key.
func TestLargeRows(t *testing.T) {
	e := harness.NewEnv(t)
	e.Exec(harness.AccountsSchema + `; CREATE TABLE docs (id int PRIMARY KEY, v int NOT NULL DEFAULT 0, body text)`)
	if max := e.NATS.JetStream(t).Conn().MaxPayload(); max != 1<<20 {
		t.Fatalf("the test server allows %d bytes a message; the default is 1 MiB", max)
	}
	cfg := e.Config([]string{"accounts", "docs"}, true)
	capture := e.RunPipeline(cfg)
	steady := harness.Start(t, "sluice-redis-writer", "--config", cfg, "--sink", "cache")
	victim := harness.Start(t, "sluice-redis-writer", "--config", cfg, "--sink", "cache")

	stopLoad := harness.Background(t, e.PG.URL, 100, 9)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, e.PG.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// Each row changes several times between small and large, so that an
	// older value landing last would show.
	sizes := []int{3 << 20, 20 << 20, 100, 3 << 20, 5, 20 << 20}
	for round, size := range sizes {
		for id := range 4 {
			n := size / (id + 1)
			if _, err := conn.Exec(ctx, `INSERT INTO docs (id, v, body) VALUES ($1, $2::int, repeat(md5($2::int::text), $3::int / 32 + 1))
				ON CONFLICT (id) DO UPDATE SET v = excluded.v, body = excluded.body`, id, round, n); err != nil {
				t.Fatal(err)
			}
		}
		if round == 2 {
			victim.Signal(syscall.SIGKILL)
			victim.WaitExit(10 * time.Second)
			victim = harness.Start(t, "sluice-redis-writer", "--config", cfg, "--sink", "cache")
		}
	}
	if _, err := conn.Exec(ctx, `DELETE FROM docs WHERE id = 3`); err != nil {
		t.Fatal(err)
	}
	changes := stopLoad()
	t.Logf("%d changes of the workload, %d of large rows", changes, len(sizes)*4+1)
	e.WaitMatch(2*time.Minute, harness.Accounts)
	e.WaitMatch(time.Minute, docs)
	t.Logf("peak RSS: capture %d MiB, writer %d MiB, the writer restarted after round 2 %d MiB", harness.PeakRSS(t, capture.Pid())>>20, harness.PeakRSS(t, steady.Pid())>>20, harness.PeakRSS(t, victim.Pid())>>20)
}

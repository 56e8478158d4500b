package faults

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sluicehq/sluice/e2e/harness"
)

// Killing capture with SIGKILL at random moments loses no change and
// publishes none twice: afterwards the stream holds every change exactly
// once, in commit order, and Redis equals Postgres.
func TestCaptureKilled(t *testing.T) {
	e := harness.NewEnv(t)
	e.Exec(harness.AccountsSchema)
	cfg := e.Config([]string{"accounts"}, true)
	harness.Start(t, "sluice-redis-writer", "--config", cfg, "--sink", "cache")
	capture := e.RunPipeline(cfg)

	// Each restart waits for the killed one's slot to be released, then
	// streams for a random while before the next kill.
	const kills = 8
	done := harness.Chaos(t, kills, 300*time.Millisecond, 1200*time.Millisecond, func() {
		capture.Signal(syscall.SIGKILL)
		capture.WaitExit(10 * time.Second)
		capture = harness.Start(t, "sluice-capture", "--config", cfg)
	})
	// Besides the mixed workload, one transaction of 100,000 rows, streamed
	// while capture is being killed.
	big := make(chan int64, 1)
	go func() {
		conn, err := pgx.Connect(context.Background(), e.PG.URL)
		if err != nil {
			big <- -1
			return
		}
		defer conn.Close(context.Background())
		time.Sleep(200 * time.Millisecond)
		tag, err := conn.Exec(context.Background(), `INSERT INTO accounts (id, note) SELECT g, 'big' FROM generate_series(1000000, 1099999) g`)
		if err != nil {
			big <- -1
			return
		}
		big <- tag.RowsAffected()
	}()
	changes := harness.Workload(t, e.PG.URL, 400, 1, done)
	n := <-big
	if n != 100000 {
		t.Fatalf("the big transaction inserted %d rows", n)
	}
	changes += int(n)
	t.Logf("%d changes, capture killed %d times", changes, kills)
	e.WaitMatch(90*time.Second, harness.Accounts)
	harness.CheckStream(t, e.NATS.URL(), changes)
}

// Killing writers with SIGKILL mid-batch loses nothing: their unacknowledged
// messages are redelivered, to them or to the other writer, and the
// versioned writes keep every key at its last committed value.
func TestWriterKilled(t *testing.T) {
	e := harness.NewEnv(t)
	e.Exec(harness.AccountsSchema)
	cfg := e.Config([]string{"accounts"}, true)
	e.RunPipeline(cfg)
	steady := harness.Start(t, "sluice-redis-writer", "--config", cfg, "--sink", "cache")
	victim := harness.Start(t, "sluice-redis-writer", "--config", cfg, "--sink", "cache")

	const kills = 10
	n := 0
	done := harness.Chaos(t, kills, 100*time.Millisecond, 500*time.Millisecond, func() {
		victim.Signal(syscall.SIGKILL)
		victim.WaitExit(10 * time.Second)
		if n++; n%3 == 0 { // and, now and then, the other one
			steady.Signal(syscall.SIGKILL)
			steady.WaitExit(10 * time.Second)
			steady = harness.Start(t, "sluice-redis-writer", "--config", cfg, "--sink", "cache")
		}
		victim = harness.Start(t, "sluice-redis-writer", "--config", cfg, "--sink", "cache")
	})
	// Few keys, many updates: stale values would show.
	changes := harness.Workload(t, e.PG.URL, 50, 2, done)
	t.Logf("%d changes, writers killed %d times", changes, kills+kills/3)
	e.WaitMatch(90*time.Second, harness.Accounts)
}

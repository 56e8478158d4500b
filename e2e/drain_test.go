package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluicehq/sluice/e2e/harness"
	"github.com/sluicehq/sluice/pkg/testenv"
)

// A writer stopped with SIGTERM while all its lanes are busy finishes the
// batches in flight, hands back what it had not started, and exits 0: no
// write fails, nothing it took waits out its ack_wait, and the next writer
// completes the rest at once. Redis sits 150 ms away, so that a batch
// spans several round trips and the signal lands in the middle of them.
func TestWriterDrainsItsLanes(t *testing.T) {
	e := harness.NewEnv(t)
	e.Exec(harness.AccountsSchema)
	const partitions = 4
	far := testenv.Distant(t, e.Redis.Addr, 150*time.Millisecond)
	config := func(port int) string {
		return e.WriteConfig(fmt.Sprintf(`postgres: {url: %q, tables: [accounts], status_interval: 200ms}
nats: {url: %q, partitions: %d}
sinks:
  - name: cache
    batch_size: 50
    ack_wait: 30s
    failover: 1m
    destination: {type: redis_string, host: 127.0.0.1, port: %d}
log: {level: info, format: json}
`, e.PG.URL, e.NATSURL(), partitions, port))
	}
	capture := harness.Start(t, "sluice-capture", "--config", config(e.Redis.Port))
	e.WaitStreaming(capture)
	e.Exec(`INSERT INTO accounts (id, n, note) SELECT g, g % 10, md5(g::text) FROM generate_series(1, 4000) g`)

	writer := harness.Start(t, "sluice-redis-writer", "--config", config(far), "--sink", "cache")
	ctx := context.Background()
	rows := func() int { return len(e.RC.Keys(ctx, "sequin:accounts:*").Val()) }
	harness.Eventually(t, 60*time.Second, func() string {
		if rows() == 0 {
			return "no row written yet"
		}
		return ""
	})
	before, signalled := rows(), time.Now()
	writer.Signal(syscall.SIGTERM)
	if code := writer.WaitExit(30 * time.Second); code != 0 {
		t.Fatalf("writer exited %d after SIGTERM: %s", code, writer.Tail(2000))
	}
	after := rows()
	t.Logf("%d rows in Redis when the signal was sent, %d once the writer exited", before, after)
	if after == before || after == 4000 {
		t.Fatalf("%d rows when the signal was sent, %d after: the batches in flight were not completed, or none was left", before, after)
	}
	for _, line := range strings.Split(writer.Output(), "\n") {
		var entry struct{ Level, TS string }
		if json.Unmarshal([]byte(line), &entry) != nil || entry.Level != "warn" && entry.Level != "error" {
			continue
		}
		if at, err := time.Parse(time.RFC3339Nano, entry.TS); err == nil && at.Before(signalled.Add(-time.Millisecond)) {
			continue // before the signal: not this test's concern
		}
		t.Errorf("the writer complained while draining: %s", line)
	}

	// What it took is acknowledged or handed back, and its partitions are
	// unpinned: the next writer gets the rest at once, rather than after
	// the ack_wait (30 s) or the failover time (1 min).
	began := time.Now()
	harness.Start(t, "sluice-redis-writer", "--config", config(e.Redis.Port), "--sink", "cache")
	e.WaitMatch(15*time.Second, harness.Accounts)
	t.Logf("the next writer completed the rest in %s", time.Since(began).Round(100*time.Millisecond))
}

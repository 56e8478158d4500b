package faults

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sluicehq/sluice/e2e/harness"
	"github.com/sluicehq/sluice/pkg/testenv"
)

// Caches that evict: Redis with a small maxmemory under allkeys-lru (with
// the default value, and with a transform) and under volatile-lru with
// expire_ms, a workload of hot keys with deletes, and writers SIGSTOPped
// past their failover time then resumed, so that their partitions move
// and their messages are redelivered. Keys come and go with eviction; but
// no key present holds anything older than its row, and no deleted row is
// present.
func TestEvictingCaches(t *testing.T) {
	e := harness.NewEnv(t)
	e.Exec(harness.AccountsSchema)
	lru := testenv.NewRedis(t, "--maxmemory", "3mb", "--maxmemory-policy", "allkeys-lru")
	volatile := testenv.NewRedis(t, "--maxmemory", "3mb", "--maxmemory-policy", "volatile-lru")
	transformed := testenv.NewRedis(t, "--maxmemory", "3mb", "--maxmemory-policy", "allkeys-lru")
	cfg := e.WriteConfig(fmt.Sprintf(`postgres: {url: %q, tables: [accounts], status_interval: 200ms}
nats: {url: %q, partitions: 8}
sinks:
  - name: lru
    ack_wait: 1s
    failover: 3s
    destination: {type: redis_string, host: 127.0.0.1, port: %d}
  - name: volatile
    ack_wait: 1s
    failover: 3s
    destination: {type: redis_string, host: 127.0.0.1, port: %d, expire_ms: 600000}
  - name: transformed
    ack_wait: 1s
    failover: 3s
    transform: record
    destination: {type: redis_string, host: 127.0.0.1, port: %d}
`, e.PG.URL, e.NATS.URL(), lru.Port, volatile.Port, transformed.Port))
	e.RunPipeline(cfg)
	var victims []*harness.Proc
	for _, sink := range []string{"lru", "volatile", "transformed"} {
		harness.Start(t, "sluice-redis-writer", "--config", cfg, "--sink", sink)
		victims = append(victims, harness.Start(t, "sluice-redis-writer", "--config", cfg, "--sink", sink))
	}
	// Hot keys with deletes, and enough other keys to fill the caches.
	stopLoad := harness.Background(t, e.PG.URL, 60, 5)
	stop := make(chan struct{})
	filled := make(chan struct{})
	go func() {
		defer close(filled)
		conn, err := pgx.Connect(context.Background(), e.PG.URL)
		if err != nil {
			return
		}
		defer conn.Close(context.Background())
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			from := 10000 + i%20*500
			if _, err := conn.Exec(context.Background(), `INSERT INTO accounts (id, note) SELECT g, repeat(md5(g::text), 8) FROM generate_series($1::int, $1::int + 499) g
				ON CONFLICT (id) DO UPDATE SET n = accounts.n + 1, note = excluded.note`, from); err != nil {
				return
			}
		}
	}()
	// Paused past failover: their partitions move on, and their messages
	// go to the other writer; then they wake up.
	for round := range 2 {
		time.Sleep(2 * time.Second)
		v := victims[round%len(victims)]
		v.Signal(syscall.SIGSTOP)
		time.Sleep(5 * time.Second)
		v.Signal(syscall.SIGCONT)
	}
	// And the worst time to wake up: after the last changes, once the other
	// writers applied them, so that a late write would be the key's last.
	time.Sleep(2 * time.Second)
	const lapsed = "lease in the writer group ran out"
	lapses := make([]int, len(victims))
	for i, v := range victims {
		v.Signal(syscall.SIGSTOP)
		lapses[i] = strings.Count(v.Output(), lapsed)
	}
	time.Sleep(4 * time.Second)
	close(stop)
	t.Logf("%d changes of hot keys", stopLoad())
	<-filled
	harness.WaitDrained(t, e, "lru", "volatile", "transformed")
	for _, v := range victims {
		v.Signal(syscall.SIGCONT)
	}
	// Whatever they would write late, they try before they notice that
	// their lease ran out.
	harness.Eventually(t, 30*time.Second, func() string {
		for i, v := range victims {
			if v.Exited() {
				t.Fatalf("writer %d exited: %s", i, v.Tail(2000))
			}
			if strings.Count(v.Output(), lapsed) == lapses[i] {
				return fmt.Sprintf("writer %d has not noticed that it was replaced", i)
			}
		}
		return ""
	})
	ctx := context.Background()
	check := func(name string, r *testenv.Redis, bare bool) {
		rc := r.Client()
		defer rc.Close()
		harness.Eventually(t, 90*time.Second, func() string {
			if msg := harness.StaleKeys(e, rc, bare); msg != "" {
				return name + ": " + msg
			}
			// Quiet: every writer caught up (the backlog is drained).
			return ""
		})
		evicted := harness.InfoInt(rc.Info(ctx, "stats").Val(), "evicted_keys")
		if evicted == 0 {
			t.Errorf("%s: nothing was evicted; the test did not exercise eviction", name)
		}
		t.Logf("%s: %d keys evicted, %d present", name, evicted, rc.DBSize(ctx).Val())
	}
	check("allkeys-lru", lru, false)
	check("volatile-lru with expire_ms", volatile, false)
	check("allkeys-lru with a transform", transformed, true)
}

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

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
	e := newEnv(t)
	e.exec(accountsSchema)
	lru := testenv.NewRedis(t, "--maxmemory", "3mb", "--maxmemory-policy", "allkeys-lru")
	volatile := testenv.NewRedis(t, "--maxmemory", "3mb", "--maxmemory-policy", "volatile-lru")
	transformed := testenv.NewRedis(t, "--maxmemory", "3mb", "--maxmemory-policy", "allkeys-lru")
	cfg := e.writeConfig(fmt.Sprintf(`postgres: {url: %q, tables: [accounts], status_interval: 200ms}
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
`, e.pg.URL, e.nats.URL(), lru.Port, volatile.Port, transformed.Port))
	e.runPipeline(cfg)
	var victims []*proc
	for _, sink := range []string{"lru", "volatile", "transformed"} {
		start(t, "sluice-redis-writer", "--config", cfg, "--sink", sink)
		victims = append(victims, start(t, "sluice-redis-writer", "--config", cfg, "--sink", sink))
	}
	// Hot keys with deletes, and enough other keys to fill the caches.
	stop := make(chan struct{})
	done := make(chan int)
	go func() { done <- workload(t, e.pg.URL, 60, 5, stop) }()
	filled := make(chan struct{})
	go func() {
		defer close(filled)
		conn, err := pgx.Connect(context.Background(), e.pg.URL)
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
	for round := range 3 {
		time.Sleep(2 * time.Second)
		v := victims[round%len(victims)]
		v.Signal(syscall.SIGSTOP)
		time.Sleep(5 * time.Second)
		v.Signal(syscall.SIGCONT)
	}
	time.Sleep(2 * time.Second)
	close(stop)
	t.Logf("%d changes of hot keys", <-done)
	<-filled

	ctx := context.Background()
	check := func(name string, r *testenv.Redis, bare bool) {
		rc := r.Client()
		defer rc.Close()
		eventually(t, 90*time.Second, func() string {
			if msg := staleKeys(e, rc, bare); msg != "" {
				return name + ": " + msg
			}
			// Quiet: every writer caught up (the backlog is drained).
			return ""
		})
		evicted := infoInt(rc.Info(ctx, "stats").Val(), "evicted_keys")
		if evicted == 0 {
			t.Errorf("%s: nothing was evicted; the test did not exercise eviction", name)
		}
		t.Logf("%s: %d keys evicted, %d present", name, evicted, rc.DBSize(ctx).Val())
	}
	waitDrained(t, e, "lru", "volatile", "transformed")
	check("allkeys-lru", lru, false)
	check("volatile-lru with expire_ms", volatile, false)
	check("allkeys-lru with a transform", transformed, true)
}

// staleKeys returns what is wrong with the accounts keys present in rc:
// a key whose row is gone, or whose value differs from its row.
func staleKeys(e *env, rc *redis.Client, bare bool) string {
	ctx := context.Background()
	want, err := testenv.PostgresRows(ctx, e.conn, accounts)
	if err != nil {
		return err.Error()
	}
	var bad []string
	iter := rc.Scan(ctx, 0, "sequin:accounts:*", 1000).Iterator()
	for iter.Next(ctx) {
		key := iter.Val()
		raw, err := rc.Get(ctx, key).Result()
		if err == redis.Nil {
			continue // evicted meanwhile
		}
		if err != nil {
			return err.Error()
		}
		var rec map[string]any
		if bare {
			err = json.NewDecoder(strings.NewReader(raw)).Decode(&rec)
		} else {
			var m struct{ Record map[string]any }
			dec := json.NewDecoder(strings.NewReader(raw))
			dec.UseNumber()
			err = dec.Decode(&m)
			rec = m.Record
		}
		if err != nil {
			return fmt.Sprintf("%s: %v", key, err)
		}
		row, ok := want[key]
		switch {
		case !ok:
			bad = append(bad, "deleted row present: "+key)
		case fmt.Sprint(row["n"]) != fmt.Sprint(rec["n"]) || row["note"] != rec["note"]:
			bad = append(bad, fmt.Sprintf("%s holds n=%v, its row n=%v", key, rec["n"], row["n"]))
		}
	}
	if len(bad) > 5 {
		bad = append(bad[:5], fmt.Sprintf("… %d more", len(bad)-5))
	}
	return strings.Join(bad, "; ")
}

// waitDrained waits until every partition consumer of sinks has nothing
// pending.
func waitDrained(t *testing.T, e *env, sinks ...string) {
	t.Helper()
	ctx := context.Background()
	js := e.nats.JetStream(t)
	st, err := js.Stream(ctx, "SLUICE")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Minute, func() string {
		for c := range st.ListConsumers(ctx).Info() {
			if c.NumPending+uint64(c.NumAckPending) > 0 {
				return fmt.Sprintf("%s: %d pending, %d unacknowledged", c.Name, c.NumPending, c.NumAckPending)
			}
		}
		return ""
	})
}

func infoInt(info, field string) int64 {
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

package faults

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/e2e/harness"
	"github.com/sluicehq/sluice/pkg/testenv"
	"github.com/sluicehq/sluice/pkg/topology"
)

// Redis stopped, out of memory, and refusing the writer's user, each for
// longer than max_deliver attempts take, during a workload: the writer
// holds its partitions, says it is not ready, and resumes by itself when
// Redis is fixed, with nothing dead-lettered. A change that fails on its
// own (WRONGTYPE on its key) is still dead-lettered, alone.
func TestRedisOutages(t *testing.T) {
	e := harness.NewEnv(t)
	e.Exec(harness.AccountsSchema)
	// A server that keeps its data across the restart (AOF), with a user
	// for the writer whose permissions the test revokes.
	r := testenv.NewRedis(t, "--appendonly", "yes", "--appendfsync", "always", "--user", "sluice", "on", ">pw", "~*", "&*", "+@all")
	admin := r.Client()
	defer admin.Close()
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg := e.WriteConfig(fmt.Sprintf(`postgres: {url: %q, tables: [accounts], status_interval: 200ms}
nats: {url: %q, partitions: 4}
sinks:
  - name: cache
    max_deliver: 3
    backoff: 100ms
    max_backoff: 400ms
    ack_wait: 1s
    failover: 3s
    destination: {type: redis_string, host: 127.0.0.1, port: %d, username: sluice, password: pw}
`, e.PG.URL, e.NATS.URL(), r.Port))
	e.RunPipeline(cfg)
	harness.Start(t, "sluice-redis-writer", "--config", cfg, "--sink", "cache", "--http", "127.0.0.1:"+strconv.Itoa(port))
	readyz := func() int {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", port))
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	harness.Eventually(t, 30*time.Second, func() string {
		if code := readyz(); code != http.StatusOK {
			return fmt.Sprintf("writer not ready: %d", code)
		}
		return ""
	})
	// The version record of this key is not a string: its writes fail on
	// their own (WRONGTYPE).
	const badKey = "sequin:accounts:100000"
	ctx := context.Background()
	if err := admin.HSet(ctx, "sluice:v:{"+badKey+"}", "x", "y").Err(); err != nil {
		t.Fatal(err)
	}

	stopLoad := harness.Background(t, e.PG.URL, 200, 11)
	outage := func(name string, begin, end func()) {
		time.Sleep(time.Second)
		begin()
		e.Exec(`INSERT INTO accounts (id) VALUES (100000) ON CONFLICT (id) DO UPDATE SET n = accounts.n + 1`)
		harness.Eventually(t, 20*time.Second, func() string {
			if code := readyz(); code != http.StatusServiceUnavailable {
				return fmt.Sprintf("%s: /readyz answers %d", name, code)
			}
			return ""
		})
		time.Sleep(5 * time.Second) // max_deliver attempts take under a second
		end()
		harness.Eventually(t, 30*time.Second, func() string {
			if code := readyz(); code != http.StatusOK {
				return fmt.Sprintf("after %s: /readyz answers %d", name, code)
			}
			return ""
		})
	}
	outage("redis stopped", r.Stop, func() {
		if err := r.Restart(ctx); err != nil {
			t.Fatal(err)
		}
	})
	outage("out of memory", func() { admin.ConfigSet(ctx, "maxmemory", "1") }, func() { admin.ConfigSet(ctx, "maxmemory", "0") })
	outage("permission revoked", func() { admin.Do(ctx, "ACL", "SETUSER", "sluice", "resetkeys") },
		func() { admin.Do(ctx, "ACL", "SETUSER", "sluice", "~*") })
	t.Logf("%d changes", stopLoad())

	// Every row but the bad one matches; the bad one's changes, and only
	// those, are dead letters, whose error names the failing command.
	harness.Eventually(t, 90*time.Second, func() string {
		return harness.OnlyMissing(e, admin, harness.Accounts, badKey)
	})
	dlq := func(args ...string) string { return harness.DLQ(t, cfg, args...) }
	harness.Eventually(t, 30*time.Second, func() string {
		out := dlq("list")
		lines := strings.Split(strings.TrimSpace(out), "\n")[1:]
		if len(lines) != 3 {
			return fmt.Sprintf("want the 3 changes of %s dead-lettered:\n%s", badKey, out)
		}
		for _, l := range lines {
			if !strings.Contains(l, " "+badKey+" ") || !strings.Contains(l, "GET sluice:v:{"+badKey+"}: WRONGTYPE") || !strings.Contains(l, "  3  ") {
				return "unexpected letter: " + l
			}
		}
		return ""
	})
	admin.Del(ctx, "sluice:v:{"+badKey+"}") // the fix
	if out := dlq("replay"); !strings.Contains(out, "replayed 3 letter") {
		t.Fatalf("replay: %s", out)
	}
	harness.Eventually(t, 30*time.Second, func() string {
		if diffs, err := testenv.TableDiff(ctx, e.Conn, admin, harness.Accounts); err != nil || len(diffs) > 0 {
			return fmt.Sprintf("after the replay: %v %v", err, diffs)
		}
		return ""
	})
}

// A key that keeps failing does not hold back the other keys of its
// partition, nor the writer's other partitions, while its changes wait for
// their next attempts.
func TestFailingKeyHoldsNothingBack(t *testing.T) {
	e := harness.NewEnv(t)
	e.Exec(harness.AccountsSchema)
	cfg := e.SinkConfig(2, "    max_deliver: 10\n    backoff: 2s\n    ack_wait: 1s\n    failover: 3s\n")
	e.RunPipeline(cfg, "cache")
	ctx := context.Background()
	const bad = "sequin:accounts:1"
	if err := e.RC.HSet(ctx, "sluice:v:{"+bad+"}", "x", "y").Err(); err != nil {
		t.Fatal(err)
	}
	// Many messages, each with a change of the failing key: more than a
	// partition may have unacknowledged.
	e.Exec(`INSERT INTO accounts (id) VALUES (1)`)
	st, err := e.NATS.JetStream(t).Stream(ctx, "SLUICE")
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; st.CachedInfo().State.Msgs < 2*topology.MaxAckPending; i++ {
		if i > 1000 {
			t.Fatalf("after %d updates the stream holds %d messages", i, st.CachedInfo().State.Msgs)
		}
		e.Exec(`UPDATE accounts SET n = $1 WHERE id = 1`, i)
		time.Sleep(50 * time.Millisecond)
		if _, err := st.Info(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// The other keys, of both partitions, land while the failing key's
	// changes still have minutes of attempts ahead.
	e.Exec(`INSERT INTO accounts (id) SELECT generate_series(2, 50)`)
	harness.Eventually(t, 15*time.Second, func() string {
		return harness.OnlyMissing(e, e.RC, harness.Accounts, bad)
	})
}

// Redis losing its data is noticed, and the cache refills itself: FLUSHALL
// in the middle of a workload, then redis-server killed and restarted
// empty. Each time the writers see the marker gone, report it, and have
// the sink's tables backfilled, while changes keep flowing: Redis ends
// equal to Postgres with no manual step.
func TestRedisResetRefills(t *testing.T) {
	e := harness.NewEnv(t)
	harness.Fill(e, 3000)
	doc := strings.Replace(e.ConfigText([]string{"accounts"}, true), "  - name: cache\n", "  - name: cache\n    initial_backfill: true\n", 1)
	cfg := e.WriteConfig(doc)
	e.RunPipeline(cfg, "cache")
	e.WaitMatch(time.Minute, harness.Accounts)
	stopLoad := harness.Background(t, e.PG.URL, 3000, 13)
	ctx := context.Background()
	store := harness.OpenJobs(t, e)
	resets := func(n int) {
		harness.Eventually(t, time.Minute, func() string {
			if m, _, err := store.Marker(ctx, "cache"); err != nil || m.Resets != n {
				return fmt.Sprintf("the writers have not reported reset %d (%+v, %v)", n, m, err)
			}
			return ""
		})
	}
	time.Sleep(time.Second)
	if err := e.RC.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	resets(1)
	e.Redis.Kill()
	time.Sleep(time.Second)
	if err := e.Redis.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	resets(2)
	time.Sleep(2 * time.Second) // changes keep flowing during the refill
	t.Logf("%d changes", stopLoad())
	e.WaitMatch(2*time.Minute, harness.Accounts)

	st := harness.Start(t, "sluice", "status", "--config", cfg)
	if code := st.WaitExit(30 * time.Second); code != 0 || !strings.Contains(st.Output(), "redis lost its data 2 times") {
		t.Fatalf("sluice status (%d) does not report the resets:\n%s", code, st.Output())
	}
}

// Replaying a letter writes its row as Postgres holds it now: however old
// the letter, and long after the tombstone of its deleted row expired, it
// does not bring the row back; a row that still exists gets its current
// value, not the letter's.
func TestReplayNeverResurrects(t *testing.T) {
	e := harness.NewEnv(t)
	e.Exec(harness.AccountsSchema)
	cfg := e.SinkConfig(4, "    max_deliver: 1\n    tombstone_ttl: 100ms\n")
	e.RunPipeline(cfg, "cache")
	ctx := context.Background()
	// The version records of keys 7 and 8 are not strings: their inserts
	// fail on their own.
	for _, k := range []string{"sluice:v:{sequin:accounts:7}", "sluice:v:{sequin:accounts:8}"} {
		if err := e.RC.HSet(ctx, k, "x", "y").Err(); err != nil {
			t.Fatal(err)
		}
	}
	e.Exec(`INSERT INTO accounts (id, note) VALUES (7, 'old'), (8, 'old'), (9, 'old')`)
	dlq := func(args ...string) string { return harness.DLQ(t, cfg, args...) }
	harness.Eventually(t, 30*time.Second, func() string {
		if out := dlq("list"); strings.Count(out, "WRONGTYPE") != 2 {
			return "want the letters of keys 7 and 8: " + out
		}
		return ""
	})
	// Fixed; then row 7 is deleted (its tombstone expires), row 8 changes.
	e.RC.Del(ctx, "sluice:v:{sequin:accounts:7}", "sluice:v:{sequin:accounts:8}")
	if err := e.RC.ConfigSet(ctx, "notify-keyspace-events", "K$").Err(); err != nil {
		t.Fatal(err)
	}
	tombstone := e.RC.Subscribe(ctx, "__keyspace@0__:sluice:v:{sequin:accounts:7}")
	defer tombstone.Close()
	if _, err := tombstone.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	e.Exec(`DELETE FROM accounts WHERE id = 7`)
	e.Exec(`UPDATE accounts SET note = 'new' WHERE id = 8`)
	harness.Eventually(t, 30*time.Second, func() string {
		if !strings.Contains(e.RC.Get(ctx, "sequin:accounts:8").Val(), `"note":"new"`) {
			return "update of 8 not applied"
		}
		return ""
	})
	select {
	case <-tombstone.Channel(): // written by the delete of 7
	case <-time.After(30 * time.Second):
		t.Fatal("the delete of 7 wrote no tombstone")
	}
	harness.Eventually(t, 10*time.Second, func() string {
		if e.RC.Exists(ctx, "sluice:v:{sequin:accounts:7}").Val() != 0 {
			return "the tombstone of 7 outlives its TTL"
		}
		return ""
	})
	if out := dlq("replay"); !strings.Contains(out, "replayed 2 letter") {
		t.Fatalf("replay: %s", out)
	}
	e.WaitMatch(30*time.Second, harness.Accounts)
	if e.RC.Exists(ctx, "sequin:accounts:7").Val() != 0 {
		t.Fatal("replaying an old letter brought a deleted row back")
	}
	if out := dlq("list"); !strings.Contains(out, "no dead letters") {
		t.Fatalf("after replay: %s", out)
	}
}

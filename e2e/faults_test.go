package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/pkg/testenv"
	"github.com/sluicehq/sluice/pkg/topology"
)

// Redis stopped, out of memory, and refusing the writer's user, each for
// longer than max_deliver attempts take, during a workload: the writer
// holds its partitions, says it is not ready, and resumes by itself when
// Redis is fixed, with nothing dead-lettered. A change that fails on its
// own (WRONGTYPE on its key) is still dead-lettered, alone.
func TestRedisOutages(t *testing.T) {
	e := newEnv(t)
	e.exec(accountsSchema)
	// A server that keeps its data across the restart (AOF), with a user
	// for the writer whose permissions the test revokes.
	r := testenv.NewRedis(t, "--appendonly", "yes", "--appendfsync", "always", "--user", "sluice", "on", ">pw", "~*", "&*", "+@all")
	admin := r.Client()
	defer admin.Close()
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg := e.writeConfig(fmt.Sprintf(`postgres: {url: %q, tables: [accounts], status_interval: 200ms}
nats: {url: %q, partitions: 4}
sinks:
  - name: cache
    max_deliver: 3
    backoff: 100ms
    max_backoff: 400ms
    ack_wait: 2s
    failover: 3s
    destination: {type: redis_string, host: 127.0.0.1, port: %d, username: sluice, password: pw}
`, e.pg.URL, e.nats.URL(), r.Port))
	e.runPipeline(cfg)
	start(t, "sluice-redis-writer", "--config", cfg, "--sink", "cache", "--http", "127.0.0.1:"+strconv.Itoa(port))
	readyz := func() int {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", port))
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	eventually(t, 30*time.Second, func() string {
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

	stop := make(chan struct{})
	done := make(chan int)
	go func() { done <- workload(t, e.pg.URL, 200, 11, stop) }()
	outage := func(name string, begin, end func()) {
		time.Sleep(time.Second)
		begin()
		e.exec(`INSERT INTO accounts (id) VALUES (100000) ON CONFLICT (id) DO UPDATE SET n = accounts.n + 1`)
		eventually(t, 20*time.Second, func() string {
			if code := readyz(); code != http.StatusServiceUnavailable {
				return fmt.Sprintf("%s: /readyz answers %d", name, code)
			}
			return ""
		})
		time.Sleep(5 * time.Second) // max_deliver attempts take under a second
		end()
		eventually(t, 30*time.Second, func() string {
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
	close(stop)
	t.Logf("%d changes", <-done)

	// Every row but the bad one matches; the bad one's changes, and only
	// those, are dead letters, whose error names the failing command.
	eventually(t, 90*time.Second, func() string {
		diffs, err := testenv.TableDiff(ctx, e.conn, admin, accounts)
		if err != nil {
			return err.Error()
		}
		if len(diffs) != 1 || diffs[0] != "missing in redis: "+badKey {
			return strings.Join(diffs[:min(len(diffs), 5)], "; ")
		}
		return ""
	})
	dlq := func(args ...string) string {
		p := start(t, "sluice", append([]string{"dlq"}, append(args, "--config", cfg, "--sink", "cache")...)...)
		if code := p.wait(30 * time.Second); code != 0 {
			t.Fatalf("sluice dlq %v exited %d: %s", args, code, p.Output())
		}
		return p.Output()
	}
	eventually(t, 30*time.Second, func() string {
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
	if diffs, err := testenv.TableDiff(ctx, e.conn, admin, accounts); err != nil || len(diffs) > 0 {
		t.Fatalf("after the replay: %v %v", err, diffs)
	}
}

// A key that keeps failing does not hold back the other keys of its
// partition, nor the writer's other partitions, while its changes wait for
// their next attempts.
func TestFailingKeyHoldsNothingBack(t *testing.T) {
	e := newEnv(t)
	e.exec(accountsSchema)
	cfg := e.writeConfig(fmt.Sprintf(`postgres: {url: %q, tables: [accounts], status_interval: 200ms}
nats: {url: %q, partitions: 2}
sinks:
  - name: cache
    max_deliver: 10
    backoff: 2s
    ack_wait: 2s
    failover: 3s
    destination: {type: redis_string, host: 127.0.0.1, port: %d}
`, e.pg.URL, e.nats.URL(), e.redis.Port))
	e.runPipeline(cfg, "cache")
	ctx := context.Background()
	const bad = "sequin:accounts:1"
	if err := e.rc.HSet(ctx, "sluice:v:{"+bad+"}", "x", "y").Err(); err != nil {
		t.Fatal(err)
	}
	// Many messages, each with a change of the failing key: more than a
	// partition may have unacknowledged.
	e.exec(`INSERT INTO accounts (id) VALUES (1)`)
	st, err := e.nats.JetStream(t).Stream(ctx, "SLUICE")
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; st.CachedInfo().State.Msgs < 2*topology.MaxAckPending; i++ {
		e.exec(`UPDATE accounts SET n = $1 WHERE id = 1`, i)
		time.Sleep(50 * time.Millisecond)
		if _, err := st.Info(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// The other keys, of both partitions, land while the failing key's
	// changes still have minutes of attempts ahead.
	e.exec(`INSERT INTO accounts (id) SELECT generate_series(2, 50)`)
	eventually(t, 15*time.Second, func() string {
		diffs, err := testenv.TableDiff(ctx, e.conn, e.rc, accounts)
		if err != nil {
			return err.Error()
		}
		if len(diffs) != 1 || diffs[0] != "missing in redis: "+bad {
			return strings.Join(diffs[:min(len(diffs), 5)], "; ")
		}
		return ""
	})
}

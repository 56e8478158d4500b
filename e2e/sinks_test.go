package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/e2e/harness"
	"github.com/sluicehq/sluice/pkg/testenv"
)

// routedDiff compares accounts in Postgres with a sink that stores the bare
// record under "app:<table>:<id>" (transform `record`, routing below).
func routedDiff(e *harness.Env, rc redis.UniversalClient) string {
	ctx := context.Background()
	want, err := testenv.PostgresRows(ctx, e.Conn, harness.Accounts)
	if err != nil {
		return err.Error()
	}
	got := map[string]map[string]any{}
	var mu sync.Mutex // ForEachMaster scans the masters concurrently
	scan := func(ctx context.Context, c *redis.Client) error {
		iter := c.Scan(ctx, 0, "app:accounts:*", 1000).Iterator()
		for iter.Next(ctx) {
			raw, err := c.Get(ctx, iter.Val()).Result()
			if err == redis.Nil {
				continue
			}
			if err != nil {
				return err
			}
			var rec map[string]any
			dec := json.NewDecoder(strings.NewReader(raw))
			dec.UseNumber()
			if err := dec.Decode(&rec); err != nil {
				return fmt.Errorf("%s: %v", iter.Val(), err)
			}
			mu.Lock()
			got[iter.Val()] = rec
			mu.Unlock()
		}
		return iter.Err()
	}
	switch c := rc.(type) {
	case *redis.ClusterClient:
		err = c.ForEachMaster(ctx, scan)
	case *redis.Client:
		err = scan(ctx, c)
	}
	if err != nil {
		return err.Error()
	}
	var diffs []string
	for key, row := range want {
		k := "app:accounts:" + strings.TrimPrefix(key, "sequin:accounts:")
		r, ok := got[k]
		if !ok {
			diffs = append(diffs, "missing "+k)
			continue
		}
		for col, v := range row {
			if !testenv.SameValue(v, r[col]) {
				diffs = append(diffs, fmt.Sprintf("%s.%s: %v != %v", k, col, v, r[col]))
			}
		}
		delete(got, k)
	}
	for k := range got {
		diffs = append(diffs, "extra "+k)
	}
	if len(diffs) > 5 {
		diffs = append(diffs[:5], fmt.Sprintf("… %d more", len(diffs)-5))
	}
	return strings.Join(diffs, "; ")
}

// Two sinks read the stream independently: one standalone Redis with the
// default key and value, one Redis Cluster with a transform and routing.
// Stopping the first for a while does not hold back the second, and the
// first catches up when it returns.
func TestFanOut(t *testing.T) {
	e := harness.NewEnv(t)
	e.Exec(harness.AccountsSchema)
	// The standalone server keeps its data across the restart (AOF).
	a := testenv.NewRedis(t, "--appendonly", "yes", "--appendfsync", "always")
	cluster := testenv.NewRedisCluster(t, 3)
	cfg := e.WriteConfig(fmt.Sprintf(`postgres: {url: %q, tables: [accounts], status_interval: 200ms}
nats: {url: %q, partitions: 4}
sinks:
  - name: plain
    ack_wait: 1s
    failover: 3s
    destination: {type: redis_string, host: 127.0.0.1, port: %d}
  - name: routed
    ack_wait: 1s
    failover: 3s
    transform: record
    routing: '"app:" + metadata.table_name + ":" + string(record.id)'
    destination: {type: redis_string, addresses: [%s]}
`, e.PG.URL, e.NATS.URL(), a.Port, strings.Join(cluster.Addrs(), ", ")))
	e.RunPipeline(cfg, "plain", "routed")
	rcA := a.Client()
	defer rcA.Close()
	rcB := cluster.Client()
	defer rcB.Close()
	plain := func() string {
		diffs, err := testenv.TableDiff(context.Background(), e.Conn, rcA, harness.Accounts)
		if err != nil {
			return err.Error()
		}
		return strings.Join(diffs, "; ")
	}

	harness.Workload(t, e.PG.URL, 200, 3, harness.After(time.Second))
	a.Stop()
	harness.Workload(t, e.PG.URL, 200, 4, harness.After(2*time.Second))
	harness.Eventually(t, 60*time.Second, func() string { return routedDiff(e, rcB) })
	if err := a.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 60*time.Second, plain)
}

// A change Redis keeps refusing goes to the dead-letter stream after
// max_deliver attempts while the other keys flow; `sluice dlq` lists it,
// replays it once the cause is fixed, and drops letters.
func TestDeadLetters(t *testing.T) {
	e := harness.NewEnv(t)
	e.Exec(harness.AccountsSchema)
	cfg := e.SinkConfig(4, "    max_deliver: 2\n    ack_wait: 1s\n    failover: 3s\n")
	e.RunPipeline(cfg, "cache")
	ctx := context.Background()
	// The version record of key 13 is not a string: its writes fail (WRONGTYPE).
	if err := e.RC.HSet(ctx, "sluice:v:{sequin:accounts:13}", "x", "y").Err(); err != nil {
		t.Fatal(err)
	}
	e.Exec(`INSERT INTO accounts (id) SELECT generate_series(1, 20)`)

	dlq := func(args ...string) string { return harness.DLQ(t, cfg, args...) }
	harness.Eventually(t, 30*time.Second, func() string {
		if out := dlq("list"); !strings.Contains(out, "sequin:accounts:13") {
			return "no dead letter yet: " + out
		}
		return ""
	})
	out := dlq("list")
	if !strings.Contains(out, "WRONGTYPE") || !strings.Contains(out, "  2  ") {
		t.Errorf("list does not show the error and 2 attempts:\n%s", out)
	}
	if n := e.RC.Exists(ctx, "sequin:accounts:12", "sequin:accounts:14", "sequin:accounts:13").Val(); n != 2 {
		t.Fatalf("%d of keys 12, 13, 14 exist; want 12 and 14 only", n)
	}

	e.RC.Del(ctx, "sluice:v:{sequin:accounts:13}") // the fix
	if out := dlq("replay"); !strings.Contains(out, "replayed 1 letter") {
		t.Fatalf("replay: %s", out)
	}
	e.WaitMatch(10*time.Second, harness.Accounts)
	if out := dlq("list"); !strings.Contains(out, "no dead letters") {
		t.Fatalf("after replay: %s", out)
	}

	// The key itself is not a string now: the version its value carries
	// cannot be read (WRONGTYPE).
	e.RC.Del(ctx, "sequin:accounts:5")
	if err := e.RC.HSet(ctx, "sequin:accounts:5", "x", "y").Err(); err != nil {
		t.Fatal(err)
	}
	e.Exec(`UPDATE accounts SET n = 1 WHERE id = 5`)
	harness.Eventually(t, 30*time.Second, func() string {
		if out := dlq("list"); !strings.Contains(out, "sequin:accounts:5") {
			return "no dead letter yet"
		}
		return ""
	})
	if out := dlq("drop", "--all"); !strings.Contains(out, "dropped 1 letter") {
		t.Fatalf("drop: %s", out)
	}
	if out := dlq("list"); !strings.Contains(out, "no dead letters") {
		t.Fatalf("after drop: %s", out)
	}
}

// A sink receives only its tables and actions.
func TestSinkSelection(t *testing.T) {
	e := harness.NewEnv(t)
	e.Exec(harness.AccountsSchema + `; CREATE TABLE users (id int PRIMARY KEY)`)
	cfg := e.WriteConfig(fmt.Sprintf(`postgres: {url: %q, tables: [accounts, users], status_interval: 200ms}
nats: {url: %q, partitions: 1} # one partition: the update below lands after the delete
sinks:
  - name: cache
    tables: [accounts]
    actions: [insert, update]
    destination: {type: redis_string, host: 127.0.0.1, port: %d}
`, e.PG.URL, e.NATS.URL(), e.Redis.Port))
	e.RunPipeline(cfg, "cache")
	e.Exec(`INSERT INTO users VALUES (1); INSERT INTO accounts (id) VALUES (1), (2)`)
	e.Exec(`DELETE FROM accounts WHERE id = 1`)
	e.Exec(`UPDATE accounts SET n = 5 WHERE id = 2`)
	ctx := context.Background()
	harness.Eventually(t, 30*time.Second, func() string {
		if !strings.Contains(e.RC.Get(ctx, "sequin:accounts:2").Val(), `"n":5`) {
			return "update of accounts 2 not applied"
		}
		return ""
	})
	if e.RC.Exists(ctx, "sequin:accounts:1").Val() != 1 {
		t.Error("a delete reached a sink without the delete action")
	}
	if e.RC.Exists(ctx, "sequin:users:1").Val() != 0 {
		t.Error("a table outside the sink's tables reached it")
	}
}

// A filtered sink holds exactly the rows that match: a row leaves it when
// an update makes it stop matching and when it is deleted. A routed sink
// whose routing gives a row the same key after its primary key changed
// holds the new row.
func TestFilterAndRoutingLeaveNoStaleRow(t *testing.T) {
	e := harness.NewEnv(t)
	// Routing reads the email: a delete carries it under REPLICA IDENTITY
	// FULL only.
	e.Exec(`CREATE TABLE members (id int PRIMARY KEY, email text NOT NULL, active bool NOT NULL);
		ALTER TABLE members REPLICA IDENTITY FULL`)
	routed := testenv.NewRedis(t)
	cfg := e.WriteConfig(fmt.Sprintf(`postgres: {url: %q, tables: [members], status_interval: 200ms}
nats: {url: %q, partitions: 2}
sinks:
  - name: active
    filter: 'record.active == true'
    destination: {type: redis_string, host: 127.0.0.1, port: %d}
  - name: by-email
    transform: record
    routing: '"members:" + record.email'
    destination: {type: redis_string, host: 127.0.0.1, port: %d}
`, e.PG.URL, e.NATS.URL(), e.Redis.Port, routed.Port))
	e.RunPipeline(cfg, "active", "by-email")
	e.Exec(`INSERT INTO members SELECT g, 'm' || g || '@x', g % 2 = 0 FROM generate_series(1, 40) g`)
	e.Exec(`UPDATE members SET active = false WHERE id <= 10`)            // stop matching
	e.Exec(`UPDATE members SET active = true WHERE id BETWEEN 11 AND 15`) // start matching
	e.Exec(`DELETE FROM members WHERE id BETWEEN 16 AND 25`)
	e.Exec(`UPDATE members SET id = id + 100 WHERE id BETWEEN 30 AND 33`) // same email: same routed key
	ctx := context.Background()
	harness.Eventually(t, 30*time.Second, func() string {
		var want []string
		rows, err := e.Conn.Query(ctx, `SELECT id FROM members WHERE active ORDER BY id`)
		if err != nil {
			return err.Error()
		}
		for rows.Next() {
			var id int
			rows.Scan(&id)
			want = append(want, fmt.Sprintf("sequin:members:%d", id))
		}
		got, _ := e.RC.Keys(ctx, "sequin:members:*").Result()
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			return fmt.Sprintf("filtered sink holds %v, want %v", got, want)
		}
		rc := routed.Client()
		defer rc.Close()
		for id := 30; id <= 33; id++ {
			v := rc.Get(ctx, fmt.Sprintf("members:m%d@x", id)).Val()
			if !strings.Contains(v, fmt.Sprintf(`"id":%d`, id+100)) {
				return fmt.Sprintf("members:m%d@x = %q, want the row with id %d", id, v, id+100)
			}
		}
		rows, err = e.Conn.Query(ctx, `SELECT 'members:' || email FROM members ORDER BY 1`)
		if err != nil {
			return err.Error()
		}
		emails, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err.Error()
		}
		routedKeys, _ := rc.Keys(ctx, "members:*").Result()
		slices.Sort(routedKeys)
		if !slices.Equal(routedKeys, emails) {
			return fmt.Sprintf("routed sink holds %v, want %v", routedKeys, emails)
		}
		return ""
	})
}

// A Redis that forbids scripts: a versioned sink says so at start, naming
// the way out; an unversioned sink writes plain SET and DEL commands.
func TestUnversionedSink(t *testing.T) {
	e := harness.NewEnv(t)
	e.Exec(harness.AccountsSchema)
	r := testenv.NewRedis(t, "--rename-command", "EVALSHA", "", "--rename-command", "EVAL", "", "--rename-command", "SCRIPT", "")
	doc := fmt.Sprintf(`postgres: {url: %q, tables: [accounts], status_interval: 200ms}
nats: {url: %q, partitions: 2}
sinks:
  - name: cache
    destination: {type: redis_string, host: 127.0.0.1, port: %d%s}
`, e.PG.URL, e.NATS.URL(), r.Port, "%s")
	versioned := e.WriteConfig(fmt.Sprintf(doc, ""))
	w := harness.Start(t, "sluice-redis-writer", "--config", versioned, "--sink", "cache")
	if code := w.WaitExit(30 * time.Second); code == 0 || !strings.Contains(w.Output(), "set destination.unversioned if scripts are forbidden") {
		t.Fatalf("versioned sink on a Redis without scripts: exit %d: %s", code, w.Output())
	}
	cfg := e.WriteConfig(fmt.Sprintf(doc, ", unversioned: true"))
	e.RunPipeline(cfg, "cache")
	harness.Workload(t, e.PG.URL, 100, 21, harness.After(2*time.Second))
	rc := r.Client()
	defer rc.Close()
	harness.Eventually(t, 30*time.Second, func() string {
		diffs, err := testenv.TableDiff(context.Background(), e.Conn, rc, harness.Accounts)
		if err != nil {
			return err.Error()
		}
		return strings.Join(diffs[:min(len(diffs), 5)], "; ")
	})
	if keys := rc.Keys(context.Background(), "sluice:v:*").Val(); len(keys) != 0 {
		t.Fatalf("an unversioned sink wrote %v", keys)
	}
}

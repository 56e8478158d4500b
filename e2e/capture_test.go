package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sluicehq/sluice/e2e/harness"
	"github.com/sluicehq/sluice/pkg/testenv"
)

// Capture comes back by itself after Postgres restarts, after its
// replication connection is cut, and after NATS restarts, each in the
// middle of a workload: every change reaches Redis, and the stream holds
// each exactly once, in order.
func TestCaptureReconnects(t *testing.T) {
	e := harness.NewEnv(t)
	e.Exec(harness.AccountsSchema)
	cfg := e.Config([]string{"accounts"}, true)
	capture := e.RunPipeline(cfg, "cache")
	stop := harness.Enduring(t, e.PG.URL, 300, 1)
	// underWay waits for the workload to write more WAL.
	underWay := func() {
		t.Helper()
		from := e.WALPosition()
		harness.Eventually(t, 30*time.Second, func() string {
			if n := e.WALPosition() - from; n < 256<<10 {
				return fmt.Sprintf("the workload wrote %d bytes of WAL", n)
			}
			return ""
		})
	}
	underWay()

	// The replication connection is cut.
	e.Exec(`SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'sluice'`)
	underWay()

	// Postgres restarts (fast shutdown), cutting the workload's connection
	// too.
	e.Conn.Close(context.Background())
	if err := e.PG.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.Reconnect()
	underWay()

	// NATS restarts.
	if err := e.NATS.Restart(); err != nil {
		t.Fatal(err)
	}
	underWay()
	total := stop()

	e.WaitMatch(90*time.Second, harness.Accounts)
	harness.CheckStream(t, e.NATS.URL(), total)
	if out := capture.Output(); strings.Count(out, "restarting from the slot") < 2 {
		t.Errorf("capture logged %d restarts:\n%s", strings.Count(out, "restarting from the slot"), harness.Tail(out, 3000))
	}
}

// Heartbeats keep the slot's confirmed position moving while the captured
// tables are idle and the server writes WAL for something else (here
// another database, whose transactions decoding skips without a word): the
// WAL the slot retains stays bounded instead of growing with every write.
func TestHeartbeatBoundsSlot(t *testing.T) {
	e := harness.NewEnv(t)
	e.Exec(harness.AccountsSchema)
	e.Exec(`CREATE DATABASE other`)
	other, err := pgx.Connect(context.Background(), strings.Replace(e.PG.URL, "/postgres?", "/other?", 1))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(context.Background())
	if _, err := other.Exec(context.Background(), `CREATE TABLE noise (id serial PRIMARY KEY, pad text)`); err != nil {
		t.Fatal(err)
	}
	doc := strings.Replace(e.ConfigText([]string{"accounts"}, true), "status_interval: 200ms", "status_interval: 200ms\n  heartbeat_interval: 300ms", 1)
	cfg := e.WriteConfig(doc)
	e.RunPipeline(cfg)

	ctx := context.Background()
	sampler, err := pgx.Connect(ctx, e.PG.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer sampler.Close(ctx)
	lag := func() (int64, error) {
		var n int64
		err := sampler.QueryRow(ctx, `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
			FROM pg_replication_slots WHERE slot_name = 'sluice'`).Scan(&n)
		return n, err
	}
	var written, maxLag int64
	start := e.WALPosition()
	done := harness.After(4 * time.Second)
	var sampling sync.WaitGroup
	sampling.Add(1)
	go func() {
		defer sampling.Done()
		for {
			select {
			case <-done:
				return
			case <-time.After(100 * time.Millisecond):
				l, err := lag()
				if err != nil {
					t.Errorf("read the slot's lag: %v", err)
					return
				}
				maxLag = max(maxLag, l)
			}
		}
	}()
	for {
		select {
		case <-done:
		default:
			if _, err := other.Exec(ctx, `INSERT INTO noise (pad) SELECT repeat('x', 200) FROM generate_series(1, 1000)`); err != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond)
			continue
		}
		break
	}
	written = e.WALPosition() - start
	sampling.Wait() // the sampler's connection and maxLag are ours again
	t.Logf("the other database wrote %d MiB of WAL; the slot retained at most %d MiB", written>>20, maxLag>>20)
	if written < 10<<20 {
		t.Fatalf("only %d bytes of WAL written: too little to tell", written)
	}
	if maxLag > written/4 {
		t.Fatalf("the slot retained up to %d of %d bytes written: heartbeats do not advance it", maxLag, written)
	}
	harness.Eventually(t, 10*time.Second, func() string {
		if l, err := lag(); err != nil || l > 1<<20 {
			return fmt.Sprintf("slot still retains %d bytes after the writes stopped (%v)", l, err)
		}
		return ""
	})
}

// TRUNCATE deletes the table's keys in a sink with on_truncate: delete, and
// leaves them in one with the default, ignore (as Sequin).
func TestTruncate(t *testing.T) {
	e := harness.NewEnv(t)
	e.Exec(harness.AccountsSchema + `; CREATE TABLE users (id int PRIMARY KEY)`)
	ignored := testenv.NewRedis(t)
	cfg := e.WriteConfig(fmt.Sprintf(`postgres: {url: %q, tables: [accounts, users], status_interval: 200ms}
nats: {url: %q, partitions: 4}
sinks:
  - name: cache
    on_truncate: delete
    destination: {type: redis_string, host: 127.0.0.1, port: %d}
  - name: keep
    destination: {type: redis_string, host: 127.0.0.1, port: %d}
`, e.PG.URL, e.NATS.URL(), e.Redis.Port, ignored.Port))
	e.RunPipeline(cfg, "cache", "keep")
	e.Exec(`INSERT INTO accounts (id) SELECT generate_series(1, 300); INSERT INTO users VALUES (1), (2)`)
	e.WaitMatch(30*time.Second, harness.Accounts, users)
	// Truncated, then refilled in part, in one transaction.
	e.Exec(`BEGIN; TRUNCATE accounts; INSERT INTO accounts (id) VALUES (7), (1000); COMMIT`)
	e.WaitMatch(30*time.Second, harness.Accounts, users)

	ctx := context.Background()
	rc := ignored.Client()
	defer rc.Close()
	harness.Eventually(t, 30*time.Second, func() string {
		if n := rc.Exists(ctx, "sequin:accounts:1000").Val(); n != 1 {
			return "the ignoring sink has not caught up"
		}
		return ""
	})
	if keys, _ := rc.Keys(ctx, "sequin:accounts:*").Result(); len(keys) != 301 {
		t.Fatalf("the sink that ignores TRUNCATE holds %d keys of accounts, want the 300 from before and 1000", len(keys))
	}
}

// Readiness follows the NATS connection: while the server is down, capture
// and writer answer 503 on /readyz and say why, /healthz stays 200 (a
// restart would not help), and both are ready again once it is back.
func TestReadinessFollowsNATS(t *testing.T) {
	e := harness.NewEnv(t)
	e.Exec(harness.AccountsSchema)
	cfg := e.Config([]string{"accounts"}, true)
	served := []*harness.Served{
		harness.StartServing(t, "sluice-capture", "--config", cfg),
		harness.StartServing(t, "sluice-redis-writer", "--sink", "cache", "--config", cfg),
	}
	all := func(path string, want int, says string) func() string {
		return func() string {
			for _, s := range served {
				if got := s.Get(path); !strings.HasPrefix(got, strconv.Itoa(want)+" ") || !strings.Contains(got, says) {
					return s.Addr + path + ": " + got
				}
			}
			return ""
		}
	}
	harness.Eventually(t, 30*time.Second, all("/readyz", http.StatusOK, ""))
	e.NATS.Shutdown()
	harness.Eventually(t, 30*time.Second, all("/readyz", http.StatusServiceUnavailable, "nats"))
	if msg := all("/healthz", http.StatusOK, "")(); msg != "" {
		t.Errorf("while NATS is down: %s", msg)
	}
	if err := e.NATS.Restart(); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 60*time.Second, all("/readyz", http.StatusOK, ""))
}

// A Postgres that stops answering (SIGSTOP here; a connection dropped
// without a word looks the same from capture's side) is noticed within
// postgres.timeout: capture stops streaming, says why in its log and on
// /readyz, and keeps trying; once the server answers again it streams on,
// and nothing is lost.
func TestCaptureNoticesHungPostgres(t *testing.T) {
	e := harness.NewEnv(t)
	e.Exec(harness.AccountsSchema)
	cfg := e.WriteConfig(strings.Replace(e.ConfigText([]string{"accounts"}, true),
		"status_interval: 200ms", "status_interval: 200ms\n  timeout: 3s", 1))
	capture := harness.StartServing(t, "sluice-capture", "--config", cfg)
	harness.Start(t, "sluice-redis-writer", "--config", cfg, "--sink", "cache")
	ready := func(want bool) func() string {
		return func() string {
			if got := capture.Get("/readyz"); strings.HasPrefix(got, "200 ") != want {
				return "capture /readyz: " + got
			}
			return ""
		}
	}
	harness.Eventually(t, 30*time.Second, ready(true))
	total := harness.Workload(t, e.PG.URL, 300, 1, harness.After(time.Second))

	if err := e.PG.Pause(); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	harness.Eventually(t, 60*time.Second, func() string {
		if !strings.Contains(capture.Output(), "postgres does not answer") {
			return "capture has not said that postgres does not answer"
		}
		return ready(false)()
	})
	t.Logf("capture noticed the hung server after %s (postgres.timeout 3s)", time.Since(began).Round(100*time.Millisecond))
	if err := e.PG.Resume(); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 60*time.Second, ready(true))
	total += harness.Workload(t, e.PG.URL, 300, 2, harness.After(time.Second))
	e.WaitMatch(60*time.Second, harness.Accounts)
	harness.CheckStream(t, e.NATS.URL(), total)
}

// Stopped while it waits for Postgres, capture exits cleanly: a shutdown
// is not a failure, whatever it cut short.
func TestCaptureStopsWhilePostgresHangs(t *testing.T) {
	e := harness.NewEnv(t)
	e.Exec(harness.AccountsSchema)
	cfg := e.Config([]string{"accounts"}, true)
	if err := e.PG.Pause(); err != nil {
		t.Fatal(err)
	}
	defer e.PG.Resume()
	capture := harness.Start(t, "sluice-capture", "--config", cfg)
	harness.Eventually(t, 30*time.Second, func() string {
		if !strings.Contains(capture.Output(), "leading: this capture streams from the slot") {
			return "capture has not begun to lead"
		}
		return ""
	})
	capture.Signal(syscall.SIGTERM)
	if code := capture.WaitExit(30 * time.Second); code != 0 {
		t.Fatalf("capture exited %d: %s", code, capture.Tail(2000))
	}
}

// Each service runs with its memory limit and, under it, a collector that
// lets the heap grow to five times what is live (GOGC 400): collecting
// whenever the heap doubled was much of a busy service's CPU.
func TestServicesCollectUnderTheirLimit(t *testing.T) {
	e := harness.NewEnv(t)
	e.Exec(harness.AccountsSchema)
	cfg := e.Config([]string{"accounts"}, true)
	for _, s := range []*harness.Served{
		harness.StartServing(t, "sluice-capture", "--config", cfg),
		harness.StartServing(t, "sluice-redis-writer", "--sink", "cache", "--config", cfg),
	} {
		harness.Eventually(t, 30*time.Second, func() string {
			m := s.Get("/metrics")
			for _, want := range []string{"\ngo_gc_gogc_percent 400\n", "\ngo_gc_gomemlimit_bytes 8.388608e+07\n"} {
				if !strings.Contains(m, want) {
					return s.Addr + "/metrics has no " + strings.TrimSpace(want) + ": " + harness.Tail(m, 300)
				}
			}
			return ""
		})
	}
}

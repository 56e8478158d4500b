// Package e2e runs the Sluice binaries as separate processes against real
// Postgres, NATS JetStream and Redis servers, and checks Redis against
// Postgres row by row.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/pkg/testenv"
)

// bin holds the binaries built for this run.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sluice-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = dir
	build := exec.Command("go", "build", "-o", dir+"/",
		"github.com/sluicehq/sluice/services/capture/cmd/sluice-capture",
		"github.com/sluicehq/sluice/services/redis-writer/cmd/sluice-redis-writer",
		"github.com/sluicehq/sluice/services/sluice/cmd/sluice")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build binaries:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// env is one test's servers.
type env struct {
	t     testing.TB
	pg    *testenv.Postgres
	redis *testenv.Redis
	nats  *testenv.NATS
	dir   string
	conn  *pgx.Conn
	rc    *redis.Client
}

func newEnv(t testing.TB) *env {
	t.Helper()
	e := &env{t: t, pg: testenv.NewPostgres(t, testenv.PostgresOptions{}), redis: testenv.NewRedis(t), nats: testenv.NewNATS(t), dir: t.TempDir()}
	e.reconnect()
	t.Cleanup(func() { e.conn.Close(context.Background()) })
	e.rc = e.redis.Client()
	t.Cleanup(func() { e.rc.Close() })
	return e
}

// reconnect opens the test's own connection to Postgres.
func (e *env) reconnect() {
	e.t.Helper()
	conn, err := pgx.Connect(context.Background(), e.pg.URL)
	if err != nil {
		e.t.Fatal(err)
	}
	e.conn = conn
}

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	if _, err := e.conn.Exec(context.Background(), sql, args...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

// config writes a config file for tables and returns its path. Without
// withNATS it names no NATS server, for `sluice dev`.
func (e *env) config(tables []string, withNATS bool) string {
	e.t.Helper()
	return e.writeConfig(e.configText(tables, withNATS))
}

// configText is config's document.
func (e *env) configText(tables []string, withNATS bool) string {
	natsURL := ""
	if withNATS {
		natsURL = "url: " + e.nats.URL()
	}
	doc := fmt.Sprintf(`postgres:
  url: %s
  tables: [%s]
  status_interval: 200ms
nats:
  %s
  partitions: 4
sinks:
  - name: cache
    batch_size: 100
    ack_wait: 2s
    destination: {type: redis_string, host: 127.0.0.1, port: %d}
log:
  level: debug
  format: json
`, e.pg.URL, strings.Join(tables, ", "), natsURL, e.redis.Port)
	return doc
}

// writeConfig writes a config file and returns its path.
func (e *env) writeConfig(doc string) string {
	e.t.Helper()
	f, err := os.CreateTemp(e.dir, "sluice-*.yaml")
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(doc); err != nil {
		e.t.Fatal(err)
	}
	return f.Name()
}

// proc is a Sluice binary running as a child process.
type proc struct {
	*testenv.Process
	t testing.TB
}

// start runs a binary; the test's end kills it if it still runs, and a
// failed test shows its output.
func start(t testing.TB, name string, args ...string) *proc {
	t.Helper()
	log, err := os.CreateTemp(t.TempDir(), name+"-*.log")
	if err != nil {
		t.Fatal(err)
	}
	log.Close()
	p, err := testenv.StartProcess(name, log.Name(), nil, filepath.Join(bin, name), args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Stop(syscall.SIGKILL, time.Second)
		if t.Failed() {
			t.Logf("%s %v output:\n%s", name, args, p.Tail(6000))
		}
	})
	return &proc{Process: p, t: t}
}

// wait waits for the process to exit and returns its status.
func (p *proc) wait(timeout time.Duration) int {
	p.t.Helper()
	code, ok := p.Wait(timeout)
	if !ok {
		p.t.Fatalf("%s still runs after %s", p.Name, timeout)
	}
	return code
}

// eventually polls cond until it returns "" (done) or timeout, then fails
// with cond's last answer.
func eventually(t testing.TB, timeout time.Duration, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		msg := cond()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, msg)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// waitMatch waits until Redis holds exactly the rows of each table.
func (e *env) waitMatch(timeout time.Duration, tables ...testenv.Table) {
	e.t.Helper()
	ctx := context.Background()
	eventually(e.t, timeout, func() string {
		for _, tb := range tables {
			diffs, err := testenv.TableDiff(ctx, e.conn, e.rc, tb)
			if err != nil {
				return err.Error()
			}
			if len(diffs) > 0 {
				if len(diffs) > 5 {
					diffs = append(diffs[:5], fmt.Sprintf("… %d more", len(diffs)-5))
				}
				return tb.Name + ": " + strings.Join(diffs, "; ")
			}
		}
		return ""
	})
}

// runPipeline starts capture, waits until it streams from the slot, and
// starts a writer of each of sinks. It returns capture.
func (e *env) runPipeline(cfg string, sinks ...string) *proc {
	e.t.Helper()
	capture := start(e.t, "sluice-capture", "--config", cfg)
	e.waitStreaming(capture)
	for _, s := range sinks {
		start(e.t, "sluice-redis-writer", "--config", cfg, "--sink", s)
	}
	return capture
}

// waitStreaming waits until capture holds the replication slot.
func (e *env) waitStreaming(p *proc) {
	e.t.Helper()
	eventually(e.t, 30*time.Second, func() string {
		if p.Exited() {
			e.t.Fatalf("%s exited: %s", p.Name, p.Tail(3000))
		}
		var active bool
		err := e.conn.QueryRow(context.Background(), "SELECT active FROM pg_replication_slots WHERE slot_name = 'sluice'").Scan(&active)
		if err != nil || !active {
			return fmt.Sprintf("slot not active (%v)", err)
		}
		return ""
	})
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

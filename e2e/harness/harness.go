// Package harness runs the Sluice binaries as separate processes against
// real Postgres, NATS JetStream and Redis servers for the end-to-end tests,
// and checks Redis against Postgres row by row.
package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/pkg/testenv"
)

// bin holds the binaries built for this run.
var bin string

// Main builds the binaries, runs a package's tests and returns their exit
// status: the body of each end-to-end package's TestMain.
func Main(m *testing.M) int {
	dir, err := os.MkdirTemp("", "sluice-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	bin = dir
	build := exec.Command("go", "build", "-o", dir+"/",
		"github.com/sluicehq/sluice/services/capture/cmd/sluice-capture",
		"github.com/sluicehq/sluice/services/redis-writer/cmd/sluice-redis-writer",
		"github.com/sluicehq/sluice/services/sluice/cmd/sluice")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build binaries:", err)
		return 1
	}
	return m.Run()
}

// Env is one test's servers, with a connection to Postgres and Redis.
type Env struct {
	T     testing.TB
	PG    *testenv.Postgres
	Redis *testenv.Redis
	// NATS is the embedded server, or nil when Cluster serves instead.
	NATS    *testenv.NATS
	Cluster *testenv.NATSCluster
	Dir     string
	Conn    *pgx.Conn
	RC      *redis.Client
}

func NewEnv(t testing.TB) *Env {
	t.Helper()
	return newEnv(t, func(e *Env) { e.NATS = testenv.NewNATS(t) })
}

// NewClusterEnv is NewEnv with a JetStream cluster of nodes nats-server
// processes instead of the embedded server. It returns as soon as the
// nodes accept clients, before they have elected their leaders, as a
// cluster just started (e.Cluster.WaitReady waits for them). Configs name
// every node in nats.url, and nats.replicas is the node count.
func NewClusterEnv(t testing.TB, nodes int) *Env {
	t.Helper()
	return newEnv(t, func(e *Env) {
		c, err := testenv.LaunchNATSCluster(context.Background(), natsServer(t), nodes)
		if err != nil {
			t.Fatalf("start nats cluster: %v", err)
		}
		t.Cleanup(func() {
			if t.Failed() {
				for _, n := range c.Nodes {
					t.Logf("nats-server %s output:\n%s", n.Name, Tail(n.Log(), 3000))
				}
			}
			c.Close()
		})
		e.Cluster = c
	})
}

func newEnv(t testing.TB, nats func(*Env)) *Env {
	t.Helper()
	e := &Env{T: t, PG: testenv.NewPostgres(t, testenv.PostgresOptions{}), Redis: testenv.NewRedis(t), Dir: t.TempDir()}
	nats(e)
	e.Reconnect()
	t.Cleanup(func() { e.Conn.Close(context.Background()) })
	e.RC = e.Redis.Client()
	t.Cleanup(func() { e.RC.Close() })
	return e
}

// NATSURL is the env's nats.url: the embedded server's, or every node's.
func (e *Env) NATSURL() string {
	if e.Cluster != nil {
		return e.Cluster.URLs()
	}
	return e.NATS.URL()
}

// natsServer builds nats-server once per run, from the module the
// workspace requires (the system's may be too old), and returns its path.
func natsServer(t testing.TB) string {
	t.Helper()
	natsBuild.Do(func() { natsBin, natsErr = testenv.BuildNATSServer(bin) })
	if natsErr != nil {
		t.Fatal(natsErr)
	}
	return natsBin
}

var (
	natsBuild sync.Once
	natsBin   string
	natsErr   error
)

// Reconnect opens the test's own connection to Postgres.
func (e *Env) Reconnect() {
	e.T.Helper()
	conn, err := pgx.Connect(context.Background(), e.PG.URL)
	if err != nil {
		e.T.Fatal(err)
	}
	e.Conn = conn
}

func (e *Env) Exec(sql string, args ...any) {
	e.T.Helper()
	if _, err := e.Conn.Exec(context.Background(), sql, args...); err != nil {
		e.T.Fatalf("%s: %v", sql, err)
	}
}

// Config writes a config file for tables and returns its path. Without
// withNATS it names no NATS server, for `sluice dev`.
func (e *Env) Config(tables []string, withNATS bool) string {
	e.T.Helper()
	return e.WriteConfig(e.ConfigText(tables, withNATS))
}

// ConfigText is config's document.
func (e *Env) ConfigText(tables []string, withNATS bool) string {
	natsURL := ""
	if withNATS {
		natsURL = "url: " + e.NATSURL()
		if e.Cluster != nil {
			natsURL += fmt.Sprintf("\n  replicas: %d", len(e.Cluster.Nodes))
		}
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
`, e.PG.URL, strings.Join(tables, ", "), natsURL, e.Redis.Port)
	return doc
}

// DefaultConfig writes a config file for tables with Sluice's defaults but
// for warnings-only logs, as an operator runs it (the tests' Config has
// small batches, few partitions and debug logs), and returns its path: for
// benchmarks.
func (e *Env) DefaultConfig(tables []string) string {
	e.T.Helper()
	return e.WriteConfig(fmt.Sprintf(`postgres: {url: %q, tables: [%s]}
nats: {url: %q}
sinks:
  - name: cache
    destination: {type: redis_string, host: 127.0.0.1, port: %d}
log: {level: warn}
`, e.PG.URL, strings.Join(tables, ", "), e.NATSURL(), e.Redis.Port))
}

// SinkConfig writes a config file that captures Accounts into partitions
// partitions and one sink, cache, on the env's Redis, with settings (YAML
// lines, indented as a sink's) added to the sink, and returns its path.
func (e *Env) SinkConfig(partitions int, settings string) string {
	e.T.Helper()
	return e.WriteConfig(fmt.Sprintf(`postgres: {url: %q, tables: [accounts], status_interval: 200ms}
nats: {url: %q, partitions: %d}
sinks:
  - name: cache
%s    destination: {type: redis_string, host: 127.0.0.1, port: %d}
`, e.PG.URL, e.NATSURL(), partitions, settings, e.Redis.Port))
}

// DLQ runs `sluice dlq <args> --config cfg --sink cache`, fails the test
// unless it exits 0, and returns its output.
func DLQ(t testing.TB, cfg string, args ...string) string {
	t.Helper()
	p := Start(t, "sluice", append([]string{"dlq"}, append(args, "--config", cfg, "--sink", "cache")...)...)
	if code := p.WaitExit(time.Minute); code != 0 {
		t.Fatalf("sluice dlq %v exited %d: %s", args, code, p.Output())
	}
	return p.Output()
}

// WriteConfig writes a config file and returns its path.
func (e *Env) WriteConfig(doc string) string {
	e.T.Helper()
	f, err := os.CreateTemp(e.Dir, "sluice-*.yaml")
	if err != nil {
		e.T.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(doc); err != nil {
		e.T.Fatal(err)
	}
	return f.Name()
}

// Proc is a Sluice binary running as a child process.
type Proc struct {
	*testenv.Process
	t testing.TB
}

// Start runs a binary; the test's end kills it if it still runs, and a
// failed test shows its output.
func Start(t testing.TB, name string, args ...string) *Proc {
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
	return &Proc{Process: p, t: t}
}

// WaitExit waits for the process to exit and returns its status.
func (p *Proc) WaitExit(timeout time.Duration) int {
	p.t.Helper()
	code, ok := p.Wait(timeout)
	if !ok {
		p.t.Fatalf("%s still runs after %s", p.Name, timeout)
	}
	return code
}

// Eventually polls cond until it returns "" (done) or timeout, then fails
// with cond's last answer.
func Eventually(t testing.TB, timeout time.Duration, cond func() string) {
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

// WaitMatch waits until Redis holds exactly the rows of each table.
func (e *Env) WaitMatch(timeout time.Duration, tables ...testenv.Table) {
	e.T.Helper()
	ctx := context.Background()
	Eventually(e.T, timeout, func() string {
		for _, tb := range tables {
			diffs, err := testenv.TableDiff(ctx, e.Conn, e.RC, tb)
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

// RunPipeline starts capture, waits until it streams from the slot, and
// starts a writer of each of sinks. It returns capture.
func (e *Env) RunPipeline(cfg string, sinks ...string) *Proc {
	e.T.Helper()
	capture := Start(e.T, "sluice-capture", "--config", cfg)
	e.WaitStreaming(capture)
	for _, s := range sinks {
		Start(e.T, "sluice-redis-writer", "--config", cfg, "--sink", s)
	}
	return capture
}

// WaitStreaming waits until capture streams from the replication slot: a
// walsender holds it. A slot is active while it is being created too,
// held by the creating backend, and a change committed before it is
// complete is not decoded.
func (e *Env) WaitStreaming(p *Proc) { e.WaitStreamingFrom(p, "sluice") }

// WaitStreamingFrom is WaitStreaming from the slot named slot.
func (e *Env) WaitStreamingFrom(p *Proc, slot string) {
	e.T.Helper()
	Eventually(e.T, 30*time.Second, func() string {
		if p.Exited() {
			e.T.Fatalf("%s exited: %s", p.Name, p.Tail(3000))
		}
		var streaming bool
		err := e.Conn.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM pg_replication_slots r
			JOIN pg_stat_activity a ON a.pid = r.active_pid WHERE r.slot_name = $1 AND a.backend_type = 'walsender')`, slot).Scan(&streaming)
		if err != nil || !streaming {
			return fmt.Sprintf("no walsender streams from the slot (%v)", err)
		}
		return ""
	})
}

// DropSlot drops the replication slot once no walsender holds it: one
// ends a moment after its client went, so a capture that just exited
// can still hold the slot.
func (e *Env) DropSlot(name string) {
	e.T.Helper()
	Eventually(e.T, 30*time.Second, func() string {
		if _, err := e.Conn.Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, name); err != nil {
			return err.Error()
		}
		return ""
	})
}

// Tail is the last n bytes of s, for error messages.
func Tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// After returns a channel closed after d.
func After(d time.Duration) <-chan struct{} {
	c := make(chan struct{})
	time.AfterFunc(d, func() { close(c) })
	return c
}

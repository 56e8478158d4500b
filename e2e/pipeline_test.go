package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluicehq/sluice/e2e/harness"
	"github.com/sluicehq/sluice/pkg/testenv"
)

var (
	users  = testenv.Table{Schema: "public", Name: "users", PK: []string{"id"}, KeyPrefix: "sequin"}
	orders = testenv.Table{Schema: "public", Name: "orders", PK: []string{"id", "tenant"}, KeyPrefix: "sequin"}
)

const schema = `
CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL, email text, active bool, balance numeric(10,2),
	score float8, tags text[], profile jsonb, created_at timestamptz, born date, uid uuid);
-- The key's columns in column order (id, tenant) differ from the PRIMARY KEY's order.
CREATE TABLE orders (note text, id int, tenant text, total numeric, PRIMARY KEY (tenant, id));`

// A change committed in Postgres lands in Redis with the exact key and
// value, through separately running capture and writer processes.
func TestSeparateServices(t *testing.T) {
	e := harness.NewEnv(t)
	e.Exec(schema)
	cfg := e.Config([]string{"public.users", "public.orders"}, true)
	capture := harness.Start(t, "sluice-capture", "--config", cfg)
	writer := harness.Start(t, "sluice-redis-writer", "--config", cfg, "--sink", "cache")
	e.WaitStreaming(capture)

	e.Exec(`INSERT INTO users VALUES (1, 'Ada', 'ada@example.com', true, 199.99, 1.5, '{admin,"two words"}',
		'{"lang": "en", "n": [1, 2.5]}', '2026-11-25 20:00:00.123456+00', '1815-12-10', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11')`)
	e.Exec(`INSERT INTO users (id, name) SELECT g, 'user ' || g FROM generate_series(2, 50) g`)
	e.Exec(`INSERT INTO orders VALUES ('first', 7, 'acme', 10.50), ('second', 8, 'acme', NULL), ('x', 7, 'globex', 1)`)
	e.Exec(`UPDATE users SET email = 'u' || id || '@example.com', balance = id * 1.25 WHERE id BETWEEN 2 AND 20`)
	e.Exec(`UPDATE users SET id = 500 WHERE id = 30`) // primary-key change: old key deleted
	e.Exec(`UPDATE orders SET tenant = 'initech' WHERE tenant = 'globex'`)
	e.Exec(`DELETE FROM users WHERE id BETWEEN 40 AND 45`)
	e.Exec(`DELETE FROM orders WHERE id = 8`)
	e.WaitMatch(30*time.Second, users, orders)

	ctx := context.Background()
	if n := e.RC.Exists(ctx, "sequin:users:30", "sequin:users:40", "sequin:orders:7:globex", "sequin:orders:8:acme").Val(); n != 0 {
		t.Fatalf("%d deleted or moved keys remain", n)
	}
	if e.RC.Exists(ctx, "sequin:orders:7:acme", "sequin:orders:7:initech").Val() != 2 {
		t.Fatal("composite keys are not <id>:<tenant>")
	}

	// The exact value of one row: keys in the order Sequin's encoder
	// writes them, the version first.
	raw := e.RC.Get(ctx, "sequin:users:1").Val()
	if !regexp.MustCompile(`^\{"action":"insert","changes":null,"metadata":\{"commit_idx":0,"commit_lsn":\d+,"commit_timestamp":`).MatchString(raw) {
		t.Fatalf("value of sequin:users:1 does not begin as Sequin's: %s", raw)
	}
	record := raw[strings.Index(raw, `},"record":`)+2:]
	want := `"record":{"id":1,"name":"Ada","email":"ada@example.com","active":true,"balance":"199.99","score":1.5,` +
		`"tags":["admin","two words"],"profile":{"n": [1, 2.5], "lang": "en"},"created_at":"2026-11-25T20:00:00.123456Z",` +
		`"born":"1815-12-10","uid":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}}`
	if record != want {
		t.Fatalf("value of sequin:users:1:\n got %s\nwant …%s", raw, want)
	}
	var msg struct {
		Changes  *map[string]any `json:"changes"`
		Action   string          `json:"action"`
		Metadata struct {
			TableSchema            string   `json:"table_schema"`
			TableName              string   `json:"table_name"`
			CommitTimestamp        string   `json:"commit_timestamp"`
			CommitLSN              uint64   `json:"commit_lsn"`
			CommitIdx              uint32   `json:"commit_idx"`
			DatabaseName           string   `json:"database_name"`
			TransactionAnnotations *string  `json:"transaction_annotations"`
			IdempotencyKey         string   `json:"idempotency_key"`
			RecordPKs              []string `json:"record_pks"`
			Consumer               struct{ ID, Name string }
		} `json:"metadata"`
	}
	if err := json.Unmarshal([]byte(raw), &msg); err != nil {
		t.Fatal(err)
	}
	md := msg.Metadata
	key, _ := base64.StdEncoding.DecodeString(md.IdempotencyKey)
	if msg.Action != "insert" || msg.Changes != nil || md.TableSchema != "public" || md.TableName != "users" || md.DatabaseName != "postgres" ||
		md.CommitLSN == 0 || string(key) != fmt.Sprintf("%d:%d", md.CommitLSN, md.CommitIdx) || md.TransactionAnnotations != nil ||
		strings.Join(md.RecordPKs, ",") != "1" || md.Consumer.Name != "cache" || len(md.Consumer.ID) != 36 ||
		!regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$`).MatchString(md.CommitTimestamp) {
		t.Fatalf("message of sequin:users:1: %s", raw)
	}
	if err := json.Unmarshal([]byte(e.RC.Get(ctx, "sequin:users:2").Val()), &msg); err != nil {
		t.Fatal(err)
	}
	if msg.Action != "update" || msg.Changes == nil || len(*msg.Changes) != 0 || msg.Metadata.CommitLSN <= md.CommitLSN {
		t.Fatalf("update message: %+v", msg)
	}

	// `sluice status` shows the slot streaming, the stream, the sink drained
	// and its writer owning every partition.
	st := harness.Start(t, "sluice", "status", "--config", cfg)
	if code := st.WaitExit(30 * time.Second); code != 0 {
		t.Fatalf("sluice status exited %d: %s", code, st.Output())
	}
	for _, want := range []string{"slot sluice: streaming", "stream    SLUICE:", "sink      cache: 0 messages pending, 0 dead letters", "assigned 0,1,2,3"} {
		if !strings.Contains(st.Output(), want) {
			t.Errorf("sluice status lacks %q:\n%s", want, st.Output())
		}
	}

	// SIGTERM drains both services, which exit 0.
	writer.Signal(syscall.SIGTERM)
	capture.Signal(syscall.SIGTERM)
	if code := writer.WaitExit(30 * time.Second); code != 0 {
		t.Fatalf("writer exited %d", code)
	}
	if code := capture.WaitExit(30 * time.Second); code != 0 {
		t.Fatalf("capture exited %d", code)
	}
}

// `sluice dev` runs everything in one process with an embedded NATS server,
// with a service's memory limit for each part (capture, the writer, the
// server) and Go's default collector.
func TestSluiceDev(t *testing.T) {
	e := harness.NewEnv(t)
	e.Exec(schema)
	dev := harness.StartServing(t, "sluice", "dev", "--config", e.Config([]string{"users", "orders"}, false))
	e.WaitStreaming(dev.Proc)
	m := dev.Get("/metrics")
	for _, want := range []string{"\ngo_gc_gogc_percent 100\n", "\ngo_gc_gomemlimit_bytes 2.5165824e+08\n"} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics has no %s", strings.TrimSpace(want))
		}
	}
	e.Exec(`INSERT INTO users (id, name, profile) SELECT g, 'u' || g, jsonb_build_object('g', g) FROM generate_series(1, 200) g`)
	e.Exec(`INSERT INTO orders (id, tenant, note) VALUES (1, 'a', 'x'), (2, 'b', 'y')`)
	e.Exec(`UPDATE users SET name = upper(name) WHERE id % 3 = 0`)
	e.Exec(`DELETE FROM users WHERE id % 5 = 0`)
	e.Exec(`DELETE FROM orders WHERE tenant = 'b'`)
	e.WaitMatch(30*time.Second, users, orders)
	if !strings.Contains(dev.Output(), "embedded nats server started") {
		t.Error("sluice dev did not report its embedded NATS server")
	}
	dev.Signal(syscall.SIGINT)
	if code := dev.WaitExit(30 * time.Second); code != 0 {
		t.Fatalf("sluice dev exited %d", code)
	}
}

// Bad configuration and unreachable servers give a one-line error that
// names the problem, and a non-zero exit.
func TestStartupErrors(t *testing.T) {
	e := harness.NewEnv(t)
	e.Exec(`CREATE TABLE users (id int PRIMARY KEY); CREATE TABLE nopk (a int)`)
	good := e.Config([]string{"users"}, true)
	write := func(name, doc string) string {
		path := e.Dir + "/" + name
		if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	withBody := func(old, new string) string {
		doc, _ := os.ReadFile(good)
		return strings.Replace(string(doc), old, new, 1)
	}
	free, _ := testenv.FreePort()
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"bad port", []string{"sluice-redis-writer", "--sink", "cache", "--config", write("port.yaml", withBody(fmt.Sprintf("port: %d", e.Redis.Port), "port: 70000"))},
			"sinks[0].destination.port: must be 1-65535"},
		{"missing file", []string{"sluice-capture", "--config", e.Dir + "/nope.yaml"}, "no such file"},
		{"unknown field", []string{"sluice-redis-writer", "--sink", "cache", "--config", write("field.yaml", withBody("batch_size:", "batch_sise:"))},
			"sinks[0].batch_sise: unknown field"},
		{"no sink flag", []string{"sluice-redis-writer", "--config", good}, "--sink is required"},
		{"unknown sink", []string{"sluice-redis-writer", "--config", good, "--sink", "other"}, `no sink named "other"`},
		{"no nats url", []string{"sluice-capture", "--config", e.Config([]string{"users"}, false)}, "nats.url: is required"},
		{"postgres down", []string{"sluice-capture", "--config", write("pg.yaml", withBody(fmt.Sprintf("127.0.0.1:%d", e.PG.Port), fmt.Sprintf("127.0.0.1:%d", free)))},
			"connect to postgres"},
		{"redis down", []string{"sluice-redis-writer", "--sink", "cache", "--config", write("redis.yaml", withBody(fmt.Sprintf("port: %d", e.Redis.Port), fmt.Sprintf("port: %d", free)))},
			fmt.Sprintf("connect to redis at 127.0.0.1:%d", free)},
		{"nats down", []string{"sluice-capture", "--config", write("nats.yaml", withBody(e.NATS.URL(), fmt.Sprintf("nats://127.0.0.1:%d", free)))},
			"connect to nats"},
		{"missing table", []string{"sluice-capture", "--config", write("table.yaml", withBody("tables: [users]", "tables: [users, ghosts]"))},
			"table public.ghosts does not exist"},
		{"no primary key", []string{"sluice-capture", "--config", write("nopk.yaml", withBody("tables: [users]", "tables: [users, nopk]"))},
			"table public.nopk has no primary key"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := harness.Start(t, c.args[0], c.args[1:]...)
			if code := p.WaitExit(30 * time.Second); code == 0 {
				t.Fatalf("exit status 0; output: %s", p.Output())
			}
			// Debug logs (JSON lines) aside, the error is one line.
			var plain []string
			for _, line := range strings.Split(strings.TrimSpace(p.Output()), "\n") {
				if !strings.HasPrefix(line, "{") {
					plain = append(plain, line)
				}
			}
			if len(plain) != 1 || !strings.Contains(plain[0], c.want) || !strings.HasPrefix(plain[0], c.args[0]+": ") {
				t.Fatalf("output %q, want one line %q: … %q", plain, c.args[0], c.want)
			}
		})
	}
}

// `sluice demo`, which `make demo` runs, works end to end and cleans up.
func TestDemo(t *testing.T) {
	demo := harness.Start(t, "sluice", "demo")
	if code := demo.WaitExit(2 * time.Minute); code != 0 {
		t.Fatalf("sluice demo exited %d:\n%s", code, demo.Output())
	}
	out := demo.Output()
	for _, want := range []string{"Redis matches Postgres", `"name":"Grace Hopper"`, "sequin:users:40", "it drained and exited 0"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
}

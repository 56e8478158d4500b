package e2e

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluicehq/sluice/e2e/harness"
	"github.com/sluicehq/sluice/pkg/testenv"
)

// The publication capture created follows postgres.tables across
// restarts: a table added to the config joins it and its changes reach
// Redis; a table removed leaves it, and its changes no longer reach the
// stream.
func TestPublicationFollowsConfig(t *testing.T) {
	e := harness.NewEnv(t)
	e.Exec(`CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY, v text)`)
	ta := testenv.Table{Schema: "public", Name: "a", PK: []string{"id"}, KeyPrefix: "sequin"}
	tb := testenv.Table{Schema: "public", Name: "b", PK: []string{"id"}, KeyPrefix: "sequin"}
	run := func(tables ...string) (capture, writer *harness.Proc) {
		cfg := e.Config(tables, true)
		capture = harness.Start(t, "sluice-capture", "--config", cfg)
		e.WaitStreaming(capture)
		return capture, harness.Start(t, "sluice-redis-writer", "--config", cfg, "--sink", "cache")
	}
	stop := func(ps ...*harness.Proc) {
		for _, p := range ps {
			if code := p.Stop(syscall.SIGTERM, 30*time.Second); code != 0 {
				t.Fatalf("%s exited %d", p.Name, code)
			}
		}
	}
	published := func() string {
		var tables []string
		if err := e.Conn.QueryRow(context.Background(), `SELECT ARRAY(SELECT schemaname || '.' || tablename
			FROM pg_publication_tables WHERE pubname = 'sluice' ORDER BY 1)`).Scan(&tables); err != nil {
			t.Fatal(err)
		}
		return strings.Join(tables, ",")
	}

	capture, writer := run("a")
	e.Exec(`INSERT INTO a VALUES (1, 'x'), (2, 'x')`)
	e.WaitMatch(30*time.Second, ta)
	stop(capture, writer)

	capture, writer = run("a", "b")
	e.Exec(`INSERT INTO b VALUES (1, 'y'), (2, 'y')`)
	e.Exec(`UPDATE a SET v = 'z' WHERE id = 1`)
	e.WaitMatch(30*time.Second, ta, tb)
	if got := published(); got != "public.a,public.b" {
		t.Fatalf("published with [a, b]: %s", got)
	}
	stop(capture, writer)
	if out := capture.Output(); !strings.Contains(out, "added the table to the publication") || !strings.Contains(out, `"table":"public.b"`) {
		t.Errorf("capture did not say it added b:\n%s", harness.Tail(out, 3000))
	}

	capture, writer = run("b")
	if got := published(); got != "public.b" {
		t.Fatalf("published with [b]: %s", got)
	}
	e.Exec(`UPDATE a SET v = 'late' WHERE id = 2`)
	e.Exec(`INSERT INTO b VALUES (3, 'y')`)
	e.WaitMatch(30*time.Second, tb)
	stop(capture, writer)
	// The stream holds a's two inserts and its update, b's three inserts,
	// and nothing of a's last update, which Redis never saw.
	harness.CheckStream(t, e.NATSURL(), 6)
	if diffs, err := testenv.TableDiff(context.Background(), e.Conn, e.RC, ta); err != nil || strings.Join(diffs, "; ") != "sequin:a:2: v is late in postgres, x in redis" {
		t.Errorf("a in redis: %v (%v)", diffs, err)
	}
}

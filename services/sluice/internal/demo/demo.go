// Package demo shows Sluice working end to end on throwaway servers: it
// starts a Postgres cluster and a redis-server from the installed programs,
// runs `sluice dev` against them as a child process, changes rows, and
// prints what Redis holds next to what Postgres holds.
package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/pkg/testenv"
)

var table = testenv.Table{Schema: "public", Name: "users", PK: []string{"id"}, KeyPrefix: "sequin"}

var steps = []struct{ say, sql string }{
	{"create a table", `CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL, email text, active bool NOT NULL DEFAULT true,
		balance numeric(10,2), tags text[], profile jsonb, updated_at timestamptz NOT NULL DEFAULT now())`},
	{"insert four users", `INSERT INTO users (id, name, email, balance, tags, profile) VALUES
		(1, 'Ada Lovelace', 'ada@example.com', 199.99, '{admin,math}', '{"lang": "en", "score": 9.5}'),
		(2, 'Grace Hopper', 'grace@example.com', 42.00, '{navy}', '{"lang": "en"}'),
		(3, 'Alan Turing', 'alan@example.com', 0.10, '{}', NULL),
		(4, 'Edsger Dijkstra', NULL, 7.50, '{algo,"go to"}', '{"lang": "nl"}')`},
	{"update a row", `UPDATE users SET balance = balance + 100, active = false, updated_at = now() WHERE id = 2`},
	{"change a primary key", `UPDATE users SET id = 40 WHERE id = 4`},
	{"delete a row", `DELETE FROM users WHERE id = 3`},
}

// Run runs the demo, printing to out. With keep, it leaves everything
// running until interrupted.
func Run(ctx context.Context, out io.Writer, keep bool) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	if _, err := testenv.PostgresBinDir(); err != nil {
		return err
	}
	if _, err := testenv.RedisBin(); err != nil {
		return err
	}
	began := time.Now()
	fmt.Fprintln(out, "Sluice demo: Postgres → sluice dev (capture → embedded NATS JetStream → redis writer) → Redis")
	pg, err := testenv.StartPostgres(ctx, testenv.PostgresOptions{})
	if err != nil {
		return err
	}
	defer pg.Stop()
	fmt.Fprintf(out, "  postgres    127.0.0.1:%d  throwaway cluster, wal_level=logical\n", pg.Port)
	rd, err := testenv.StartRedis(ctx)
	if err != nil {
		return err
	}
	defer rd.Close()
	fmt.Fprintf(out, "  redis       %s\n", rd.Addr)

	dir, err := os.MkdirTemp("", "sluice-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cfgPath := filepath.Join(dir, "sluice.yaml")
	cfg := fmt.Sprintf(`postgres:
  url: %s
  tables: [public.users]
sinks:
  - name: demo
    destination: {type: redis_string, host: 127.0.0.1, port: %d}
log:
  format: console
`, pg.URL, rd.Port)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return err
	}

	conn, err := pgx.Connect(ctx, pg.URL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	fmt.Fprintf(out, "\n→ %s\n", steps[0].say)
	if _, err := conn.Exec(ctx, steps[0].sql); err != nil {
		return err
	}

	dev, err := testenv.StartProcess("sluice dev", filepath.Join(dir, "sluice-dev.log"), nil, exe, "dev", "--config", cfgPath)
	if err != nil {
		return err
	}
	defer dev.Stop(syscall.SIGKILL, time.Second)
	fmt.Fprintf(out, "  sluice dev  --config %s (log: %s)\n", cfgPath, dev.Log)
	if err := waitStreaming(ctx, conn, dev); err != nil {
		return err
	}

	for _, s := range steps[1:] {
		fmt.Fprintf(out, "→ %s\n", s.say)
		if _, err := conn.Exec(ctx, s.sql); err != nil {
			return fmt.Errorf("%s: %w", s.say, err)
		}
	}

	rc := rd.Client()
	defer rc.Close()
	start := time.Now()
	var diffs []string
	for {
		if diffs, err = testenv.TableDiff(ctx, conn, rc, table); err != nil {
			return err
		}
		if len(diffs) == 0 {
			break
		}
		if time.Since(start) > 30*time.Second || dev.Exited() {
			return fmt.Errorf("redis did not come to match postgres: %s\nsluice dev log:\n%s", strings.Join(diffs, "; "), dev.Tail(3000))
		}
		time.Sleep(20 * time.Millisecond)
	}
	fmt.Fprintf(out, "\nRedis matches Postgres %s after the last commit:\n\n", time.Since(start).Round(time.Millisecond))
	if err := show(ctx, out, conn, rc); err != nil {
		return err
	}

	if keep {
		fmt.Fprintf(out, "\nEverything keeps running; Ctrl-C stops it.\n  psql %q\n  redis-cli -p %d\n", pg.URL, rd.Port)
		<-ctx.Done()
	}
	fmt.Fprint(out, "\nStopping sluice dev with SIGTERM… ")
	if code := dev.Stop(syscall.SIGTERM, 15*time.Second); code != 0 {
		return fmt.Errorf("sluice dev exited with status %d:\n%s", code, dev.Tail(3000))
	}
	fmt.Fprintf(out, "it drained and exited 0.\nStopped Postgres and Redis. The demo took %s.\n", time.Since(began).Round(100*time.Millisecond))
	return nil
}

// show prints, key by key, the Postgres row and the record Redis holds.
func show(ctx context.Context, out io.Writer, conn *pgx.Conn, rc redis.UniversalClient) error {
	want, err := testenv.PostgresRows(ctx, conn, table)
	if err != nil {
		return err
	}
	got, err := testenv.RedisRows(ctx, rc, table)
	if err != nil {
		return err
	}
	keys := []string{"sequin:users:3", "sequin:users:4"} // deleted, and moved away
	for k := range want {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range slices.Compact(keys) {
		fmt.Fprintln(out, k)
		if row, ok := want[k]; ok {
			fmt.Fprintf(out, "  postgres  %s\n", compact(row))
		} else {
			fmt.Fprintln(out, "  postgres  (no row)")
		}
		if r, ok := got[k]; ok {
			fmt.Fprintf(out, "  redis     %s\n", compact(r.Record))
		} else {
			fmt.Fprintln(out, "  redis     (no key)")
		}
	}
	if r, ok := got["sequin:users:2"]; ok {
		var pretty bytes.Buffer
		_ = json.Indent(&pretty, []byte(r.Raw), "  ", "  ")
		fmt.Fprintf(out, "\nThe whole value of sequin:users:2 (Sequin's message format):\n  %s\n", pretty.String())
	}
	return nil
}

func compact(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// waitStreaming waits until capture holds the replication slot, so that
// the changes that follow are captured.
func waitStreaming(ctx context.Context, conn *pgx.Conn, dev *testenv.Process) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		var active bool
		err := conn.QueryRow(ctx, "SELECT active FROM pg_replication_slots WHERE slot_name = 'sluice'").Scan(&active)
		if err == nil && active {
			return nil
		}
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		if dev.Exited() || time.Now().After(deadline) {
			return fmt.Errorf("sluice dev did not start streaming:\n%s", dev.Tail(3000))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

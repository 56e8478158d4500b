package testenv

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestServers(t *testing.T) {
	ctx := context.Background()
	pg := NewPostgres(t, PostgresOptions{})
	conn, err := pgx.Connect(ctx, pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var level string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&level); err != nil || level != "logical" {
		t.Fatalf("wal_level = %q, %v", level, err)
	}

	r := NewRedis(t)
	c := r.Client()
	defer c.Close()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	r.Stop()
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("redis answers after Stop")
	}
	if err := r.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Exists(ctx, "k").Result(); err != nil || n != 0 {
		t.Fatalf("after restart: exists=%d err=%v", n, err)
	}

	ns := NewNATS(t)
	if ns.URL() == "" {
		t.Fatal("no nats url")
	}
}

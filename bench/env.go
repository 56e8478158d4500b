package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/pkg/broker"
	"github.com/sluicehq/sluice/pkg/testenv"
	"github.com/sluicehq/sluice/pkg/topology"
)

const (
	sinkName     = "bench"
	streamName   = "SLUICE"
	slotName     = "sluice"
	ceilingSlot  = "bench_ceiling"
	publication  = "sluice"
	statusPeriod = "1s"
)

// env is one set of servers with the benchmark table, its publication and
// slots, and a config file for the services.
type env struct {
	pg         *testenv.Postgres
	redis      *testenv.Redis
	nats       *broker.Server
	conn       *pgx.Conn // for the benchmark's own queries, not the load
	rc         *redis.Client
	nc         *nats.Conn
	js         jetstream.JetStream
	dir        string
	config     string
	partitions int
	logLevel   string
	keep       bool
	profiles   string
	bins       *binaries
}

func startEnv(ctx context.Context, o options, bins *binaries) (e *env, err error) {
	e = &env{partitions: o.partitions, logLevel: o.logLevel, keep: o.keep, profiles: o.profiles, bins: bins}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	if e.dir, err = os.MkdirTemp("", "sluice-bench-"); err != nil {
		return nil, err
	}
	// WAL is sent to logical replication only once flushed; the throwaway
	// cluster's synchronous_commit=off would hold every commit up to
	// wal_writer_delay (200ms). Postgres's default flushes at commit; fsync
	// stays off, so the machine's disk is not what is measured.
	pgOpts := testenv.PostgresOptions{Settings: map[string]string{"synchronous_commit": "on"}}
	if e.pg, err = testenv.StartPostgres(ctx, pgOpts); err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	if e.redis, err = testenv.StartRedis(ctx); err != nil {
		return nil, fmt.Errorf("start redis: %w", err)
	}
	if e.nats, err = broker.Start(broker.Options{}); err != nil {
		return nil, fmt.Errorf("start nats: %w", err)
	}
	if e.conn, err = pgx.Connect(ctx, e.pg.URL); err != nil {
		return nil, fmt.Errorf("connect to postgres: %w", err)
	}
	e.rc = e.redis.Client()
	if e.nc, err = nats.Connect(e.nats.URL()); err != nil {
		return nil, fmt.Errorf("connect to nats: %w", err)
	}
	if e.js, err = jetstream.New(e.nc); err != nil {
		return nil, err
	}
	if err = e.prepareDatabase(ctx); err != nil {
		return nil, err
	}
	return e, e.writeConfig()
}

// prepareDatabase creates the table, and the publication and slot exactly as
// capture would, so that the backlog is committed while no service runs.
// The second slot lets pg_recvlogical decode the same WAL alone.
func (e *env) prepareDatabase(ctx context.Context) error {
	stmts := []string{
		tableDDL,
		fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s WITH (publish_via_partition_root = true)", publication, tableName),
		fmt.Sprintf("SELECT pg_create_logical_replication_slot('%s', 'pgoutput')", slotName),
		fmt.Sprintf("SELECT pg_create_logical_replication_slot('%s', 'pgoutput')", ceilingSlot),
	}
	for _, s := range stmts {
		if _, err := e.conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("prepare database: %s: %w", s, err)
		}
	}
	return nil
}

// writeConfig writes the services' configuration: defaults everywhere but
// the addresses and the log level (warn unless debugging, so that logging
// costs nothing measurable).
func (e *env) writeConfig() error {
	doc := fmt.Sprintf(`postgres:
  url: %s
  slot: %s
  publication: %s
  tables: [%s]
  status_interval: %s
nats:
  url: %s
  stream: %s
  partitions: %d
sinks:
  - name: %s
    destination: {type: redis_string, host: 127.0.0.1, port: %d}
log:
  level: %s
  format: json
`, e.pg.URL, slotName, publication, tableName, statusPeriod, e.nats.URL(), streamName, e.partitions, sinkName, e.redis.Port, e.logLevel)
	e.config = filepath.Join(e.dir, "sluice.yaml")
	return os.WriteFile(e.config, []byte(doc), 0o644)
}

func (e *env) close() {
	if e.nc != nil {
		e.nc.Close()
	}
	if e.rc != nil {
		e.rc.Close()
	}
	if e.conn != nil {
		e.conn.Close(context.Background())
	}
	if e.nats != nil {
		e.nats.Shutdown()
	}
	if e.redis != nil {
		e.redis.Close()
	}
	if e.pg != nil {
		e.pg.Stop()
	}
	switch {
	case e.dir == "":
	case e.keep:
		log.Printf("kept the service logs and config in %s", e.dir)
	default:
		os.RemoveAll(e.dir)
	}
}

// sinkPending is how many events the sink's writers have not acknowledged
// yet, over every partition; ok is false while a partition's consumer does
// not exist yet.
func (e *env) sinkPending(ctx context.Context) (pending uint64, ok bool, err error) {
	for p := range e.partitions {
		c, err := e.js.Consumer(ctx, streamName, topology.ConsumerName(sinkName, p))
		if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
			return 0, false, nil
		}
		if err != nil {
			return 0, false, err
		}
		info := c.CachedInfo()
		pending += info.NumPending + uint64(info.NumAckPending)
	}
	return pending, true, nil
}

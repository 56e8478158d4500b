// Package source prepares a Postgres database for capture and streams its
// logical replication: it checks the server's settings and the configured
// tables, creates the publication and the slot when missing, keeps the
// publication it created to the configured tables, and reads the pgoutput
// stream of the slot.
package source

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sluicehq/sluice/pkg/config"
)

// Table is a captured table as the catalog describes it.
type Table struct {
	Schema, Name string
	OID          uint32
	// PK lists the primary-key columns in column order, the order of the
	// key's values in Redis keys and record_pks.
	PK []string
	// Identity is the replica identity: 'd' (primary key) or 'f' (full).
	Identity byte
}

// Qualified returns schema.name.
func (t *Table) Qualified() string { return t.Schema + "." + t.Name }

// Source is a connection to the captured database for catalog work.
type Source struct {
	cfg      config.Postgres
	params   map[string]string
	conn     *pgx.Conn
	database string
	version  int // server_version_num
}

// Connect opens the catalog connection and checks that the server and the
// role can do logical replication. Both the catalog and the replication
// connection get the session settings params, so that values read from
// either have the same text format.
func Connect(ctx context.Context, cfg config.Postgres, params map[string]string) (*Source, error) {
	s := &Source{cfg: cfg, params: params}
	conn, err := s.connect(ctx)
	if err != nil {
		return nil, err
	}
	s.conn = conn
	if err := s.check(ctx); err != nil {
		conn.Close(ctx)
		return nil, err
	}
	return s, nil
}

func (s *Source) check(ctx context.Context) error {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	var walLevel, role string
	var canReplicate bool
	err := s.conn.QueryRow(ctx, `SELECT current_setting('wal_level'), current_database(), current_user,
		(SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user),
		current_setting('server_version_num')::int`).Scan(&walLevel, &s.database, &role, &canReplicate, &s.version)
	if err != nil {
		return fmt.Errorf("inspect postgres: %w", err)
	}
	if walLevel != "logical" {
		return fmt.Errorf("postgres has wal_level = %s; logical replication needs wal_level = logical (ALTER SYSTEM SET wal_level = logical, then restart Postgres)", walLevel)
	}
	if !canReplicate {
		return fmt.Errorf("postgres role %s may not replicate; grant it: ALTER ROLE %s REPLICATION", role, pgx.Identifier{role}.Sanitize())
	}
	return nil
}

// Reconnect reopens the catalog connection if it was lost, e.g. when
// Postgres restarted.
func (s *Source) Reconnect(ctx context.Context) error {
	if !s.conn.IsClosed() {
		return nil
	}
	conn, err := s.connect(ctx)
	if err != nil {
		return err
	}
	s.conn = conn
	return nil
}

func (s *Source) connect(ctx context.Context) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(s.cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("postgres.url: %w", err)
	}
	maps.Copy(cfg.RuntimeParams, s.params)
	// Logical replication sends a commit only once its WAL is flushed: on
	// a server whose synchronous_commit is off, each backfill watermark
	// would wait for the WAL writer (wal_writer_delay, 200ms by default),
	// and every chunk twice that. Local flushes, waiting for no standby.
	cfg.RuntimeParams["synchronous_commit"] = "local"
	if cfg.ConnectTimeout == 0 { // the URL's connect_timeout, or this
		cfg.ConnectTimeout = s.cfg.Timeout
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to postgres: %w", err)
	}
	return conn, nil
}

// Database is the name of the captured database.
func (s *Source) Database() string { return s.database }

// Host is the host of the server, as the connection names it.
func (s *Source) Host() string { return s.conn.Config().Host }

// Close closes the catalog connection.
func (s *Source) Close(ctx context.Context) error { return s.conn.Close(ctx) }

const tableQuery = `SELECT c.oid, c.relkind, c.relreplident,
	ARRAY(SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
		WHERE i.indrelid = c.oid AND i.indisprimary ORDER BY a.attnum)
	FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
	WHERE n.nspname = $1 AND c.relname = $2`

// Tables describes the configured tables, by qualified name. A table that
// does not exist, is not a table, has no primary key or a replica identity
// that does not identify rows by primary key is an error naming it.
func (s *Source) Tables(ctx context.Context) (map[string]*Table, error) {
	tables := make(map[string]*Table, len(s.cfg.Tables))
	var errs []string
	for _, q := range s.cfg.Tables {
		schema, name := config.SplitTable(q)
		t, err := s.table(ctx, schema, name)
		if err != nil {
			var pe *tableError
			if !errors.As(err, &pe) {
				return nil, err
			}
			errs = append(errs, err.Error())
			continue
		}
		tables[q] = t
	}
	if len(errs) > 0 {
		return nil, errors.New(strings.Join(errs, "; "))
	}
	return tables, nil
}

type tableError struct{ msg string }

func (e *tableError) Error() string { return e.msg }

func (s *Source) table(ctx context.Context, schema, name string) (*Table, error) {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	t := &Table{Schema: schema, Name: name}
	var kind, ident byte
	err := s.conn.QueryRow(ctx, tableQuery, schema, name).Scan(&t.OID, &kind, &ident, &t.PK)
	q := t.Qualified()
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, &tableError{fmt.Sprintf("table %s does not exist", q)}
	case err != nil:
		return nil, fmt.Errorf("inspect table %s: %w", q, err)
	case kind != 'r' && kind != 'p':
		return nil, &tableError{fmt.Sprintf("%s is not a table (relkind %c)", q, kind)}
	case len(t.PK) == 0:
		return nil, &tableError{fmt.Sprintf("table %s has no primary key; Sluice keys every row by it (ALTER TABLE %s ADD PRIMARY KEY (...))", q, ident2(schema, name))}
	case ident != 'd' && ident != 'f':
		return nil, &tableError{fmt.Sprintf("table %s has REPLICA IDENTITY %s; deletes would not carry the primary key (ALTER TABLE %s REPLICA IDENTITY DEFAULT, or FULL)",
			q, map[byte]string{'n': "NOTHING", 'i': "USING INDEX"}[ident], ident2(schema, name))}
	}
	t.Identity = ident
	return t, nil
}

// PrimaryKey re-reads a table's primary key, after a relation message told
// that its shape changed.
func (s *Source) PrimaryKey(ctx context.Context, schema, name string) ([]string, error) {
	t, err := s.table(ctx, schema, name)
	if err != nil {
		return nil, err
	}
	return t.PK, nil
}

func ident2(schema, name string) string { return pgx.Identifier{schema, name}.Sanitize() }

// slotWait is how long EnsureSlot waits for an active slot to be released:
// after a crash, the old connection's walsender holds the slot until it
// notices the connection is gone.
const slotWait = 15 * time.Second

// EnsureSlot creates the replication slot when it is missing, and reports
// whether it did; otherwise it checks that it is a pgoutput slot of this
// database that no other process uses.
func (s *Source) EnsureSlot(ctx context.Context) (created bool, err error) {
	deadline := time.Now().Add(slotWait)
	for {
		created, err := s.ensureSlot(ctx)
		var busy *slotBusyError
		if !errors.As(err, &busy) || time.Now().After(deadline) {
			return created, err
		}
		select {
		case <-ctx.Done():
			return false, err
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// TakeSlot ends the replication connection of another sluice-capture that
// holds the slot, for the process that now holds the capture lease: the
// other is a former leader, which must not read on, or a dead one's
// connection Postgres has not noticed yet (wal_sender_timeout). A holder
// that is not sluice-capture is left alone (EnsureSlot reports it).
func (s *Source) TakeSlot(ctx context.Context) error {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	_, err := s.conn.Exec(ctx, `SELECT pg_terminate_backend(r.active_pid)
		FROM pg_replication_slots r JOIN pg_stat_activity a ON a.pid = r.active_pid
		WHERE r.slot_name = $1 AND r.active AND a.application_name = 'sluice-capture'`, s.cfg.Slot)
	if err != nil {
		return fmt.Errorf("take replication slot %s over: %w", s.cfg.Slot, err)
	}
	return nil
}

type slotBusyError struct {
	slot string
	pid  int32
	app  string
}

func (e *slotBusyError) Error() string {
	return fmt.Sprintf("replication slot %s is in use by another process (pid %d, application %q); is another sluice-capture running with another stream?", e.slot, e.pid, e.app)
}

// SlotBusy reports whether err is EnsureSlot's: another process reads the
// slot.
func SlotBusy(err error) bool {
	var busy *slotBusyError
	return errors.As(err, &busy)
}

// createSlotSQL creates the slot. From Postgres 17 on it is a failover
// slot: with sync_replication_slots on a physical standby (and the standby
// in synchronized_standby_slots), the slot is kept on the standby as well
// and survives the standby's promotion, at a position no later than what
// the standby received.
func createSlotSQL(serverVersion int) string {
	if serverVersion >= 170000 {
		return "SELECT pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)"
	}
	return "SELECT pg_create_logical_replication_slot($1, 'pgoutput')"
}

func (s *Source) ensureSlot(ctx context.Context) (created bool, err error) {
	slot := s.cfg.Slot
	var plugin, database string
	var active bool
	var pid *int32
	var app string
	err = s.conn.QueryRow(ctx, `SELECT coalesce(plugin, ''), coalesce(database, ''), active, active_pid,
		coalesce((SELECT application_name FROM pg_stat_activity WHERE pid = active_pid), '')
		FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&plugin, &database, &active, &pid, &app)
	if errors.Is(err, pgx.ErrNoRows) {
		_, err = s.conn.Exec(ctx, createSlotSQL(s.version), slot)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42710" { // created meanwhile by another process
			return s.ensureSlot(ctx)
		}
		if err != nil {
			return false, fmt.Errorf("create replication slot %s: %w", slot, err)
		}
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("inspect replication slot %s: %w", slot, err)
	}
	switch {
	case plugin != "pgoutput":
		return false, fmt.Errorf("replication slot %s uses plugin %q, not pgoutput; drop it or choose another postgres.slot", slot, plugin)
	case database != s.database:
		return false, fmt.Errorf("replication slot %s belongs to database %s, not %s; choose another postgres.slot", slot, database, s.database)
	case active && pid != nil:
		return false, &slotBusyError{slot, *pid, app}
	}
	return false, nil
}

// HeartbeatPrefix is the prefix of capture's heartbeat messages in the WAL.
const HeartbeatPrefix = "sluice.heartbeat"

// Heartbeat writes a logical message into the WAL, outside any
// transaction: decoding it lets capture confirm a position past the WAL
// that other tables' writes produced. It returns how many bytes of WAL the
// slot retains beyond its confirmed position.
func (s *Source) Heartbeat(ctx context.Context) (lagBytes int64, err error) {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	err = s.conn.QueryRow(ctx, `SELECT (SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
		FROM pg_replication_slots WHERE slot_name = $1), pg_logical_emit_message(false, $2, '')`, s.cfg.Slot, HeartbeatPrefix).Scan(&lagBytes, nil)
	if err != nil {
		return 0, fmt.Errorf("heartbeat: %w", err)
	}
	return lagBytes, nil
}

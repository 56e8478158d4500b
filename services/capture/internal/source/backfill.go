package source

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	jobs "github.com/sluicehq/sluice/pkg/backfill"

	"github.com/sluicehq/sluice/services/capture/internal/pgoutput"
)

// BackfillPrefix is the prefix of backfill watermark messages in the WAL.
const BackfillPrefix = "sluice.backfill"

// Shape is a table as a backfill reads it: its replicated columns, as a
// relation message would give them, and its primary key.
type Shape struct {
	Relation pgoutput.Relation
	// PK is the primary key in column order, the order of the key's values
	// in events. Order is the key in its index's order, which chunks are
	// read by, so that each chunk is an index range scan.
	PK, Order []string
}

// Shape reads the current shape of schema.table.
func (s *Source) Shape(ctx context.Context, schema, table string) (*Shape, error) {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	name := ident2(schema, table)
	sh := &Shape{Relation: pgoutput.Relation{Namespace: schema, Name: table}}
	rows, err := s.conn.Query(ctx, `SELECT attname::text, atttypid, atttypmod FROM pg_attribute
		WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum`, name)
	if err != nil {
		return nil, fmt.Errorf("read columns of %s.%s: %w", schema, table, err)
	}
	for rows.Next() {
		var c pgoutput.Column
		if err := rows.Scan(&c.Name, &c.TypeOID, &c.TypeMod); err != nil {
			return nil, err
		}
		sh.Relation.Columns = append(sh.Relation.Columns, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read columns of %s.%s: %w", schema, table, err)
	}
	err = s.conn.QueryRow(ctx, `SELECT array_agg(a.attname::text ORDER BY k.ord)
		FROM pg_index i, unnest(i.indkey) WITH ORDINALITY k(attnum, ord), pg_attribute a
		WHERE i.indrelid = $1::regclass AND i.indisprimary AND a.attrelid = i.indrelid AND a.attnum = k.attnum`, name).Scan(&sh.Order)
	if err != nil || len(sh.Order) == 0 {
		return nil, fmt.Errorf("read primary key of %s.%s: %v", schema, table, err)
	}
	for _, c := range sh.Relation.Columns {
		if slices.Contains(sh.Order, c.Name) {
			sh.PK = append(sh.PK, c.Name)
		}
	}
	return sh, nil
}

// Estimate returns about how many rows match where (empty: all): the
// planner's count when the table was analysed, else an exact count.
func (s *Source) Estimate(ctx context.Context, sh *Shape, where string) (int64, error) {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	name := ident2(sh.Relation.Namespace, sh.Relation.Name)
	var n int64
	if where == "" {
		if err := s.conn.QueryRow(ctx, `SELECT reltuples::bigint FROM pg_class WHERE oid = $1::regclass`, name).Scan(&n); err == nil && n > 0 {
			return n, nil
		}
	}
	q := "SELECT count(*) FROM " + name
	if where != "" {
		q += " WHERE (" + where + ")"
	}
	err := s.readOnly(ctx, func() error { return s.conn.QueryRow(ctx, q, pgx.QueryExecModeExec).Scan(&n) })
	if err != nil {
		return 0, fmt.Errorf("count rows of %s: %w", name, err)
	}
	return n, nil
}

// CheckWhere checks a backfill's condition before it runs (see
// backfill.CheckWhereIn).
func (s *Source) CheckWhere(ctx context.Context, table, where string) error {
	return jobs.CheckWhereIn(ctx, s.conn, table, where)
}

// readOnly runs fn in a read-only transaction: a backfill's reads, whose
// condition comes from an operator's command line, can change nothing.
// Strings are read as the condition was checked (backfill.CheckWhere),
// with standard_conforming_strings, whatever the server's setting.
func (s *Source) readOnly(ctx context.Context, fn func() error) error {
	if _, err := s.conn.Exec(ctx, "BEGIN READ ONLY; SET LOCAL standard_conforming_strings = on"); err != nil {
		_, _ = s.conn.Exec(ctx, "ROLLBACK")
		return err
	}
	if err := fn(); err != nil {
		_, _ = s.conn.Exec(ctx, "ROLLBACK")
		return err
	}
	_, err := s.conn.Exec(ctx, "COMMIT")
	return err
}

// maxChunkBytes bounds a chunk's memory whatever its rows' sizes.
const maxChunkBytes = 32 << 20

// Chunk reads up to limit rows of the table after the key values after
// (in Order; none: from the start) that match where, in key order, with
// their values in the text format of the replication stream. It returns
// the key (in Order) of the last row read.
func (s *Source) Chunk(ctx context.Context, sh *Shape, where string, after []string, limit int) ([]pgoutput.Tuple, []string, error) {
	var q strings.Builder
	q.WriteString(selectFrom(sh))
	order := make([]string, len(sh.Order))
	for i, c := range sh.Order {
		order[i] = pgx.Identifier{c}.Sanitize()
	}
	var conds []string
	params := make([][]byte, len(after))
	if len(after) > 0 {
		ps := make([]string, len(after))
		for i, v := range after {
			ps[i] = "$" + strconv.Itoa(i+1)
			params[i] = []byte(v)
		}
		conds = append(conds, "("+strings.Join(order, ", ")+") > ("+strings.Join(ps, ", ")+")")
	}
	if where != "" {
		conds = append(conds, "("+where+")")
	}
	if len(conds) > 0 {
		q.WriteString(" WHERE " + strings.Join(conds, " AND "))
	}
	q.WriteString(" ORDER BY " + strings.Join(order, ", ") + " LIMIT " + strconv.Itoa(limit))

	idx := make([]int, len(sh.Order))
	for i, c := range sh.Order {
		idx[i] = slices.IndexFunc(sh.Relation.Columns, func(col pgoutput.Column) bool { return col.Name == c })
	}
	rows, err := s.tuples(ctx, q.String(), params, maxChunkBytes)
	if err != nil {
		return nil, nil, fmt.Errorf("read a chunk of %s.%s: %w", sh.Relation.Namespace, sh.Relation.Name, err)
	}
	if len(rows) == 0 {
		return nil, nil, nil
	}
	last := rows[len(rows)-1]
	cursor := make([]string, len(idx))
	for i, c := range idx {
		if c < 0 || last[c].Kind != pgoutput.Text {
			return nil, nil, errors.New("primary-key column missing from a chunk")
		}
		cursor[i] = string(last[c].Data)
	}
	return rows, cursor, nil
}

// Watermark writes a backfill watermark into the WAL, in a transaction of
// its own, so that the replication stream orders it among the changes,
// and returns its position. It returns once the watermark is flushed: it
// can be streamed at once.
func (s *Source) Watermark(ctx context.Context, payload string) (pgoutput.LSN, error) {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	var lsn int64
	if err := s.conn.QueryRow(ctx, `SELECT (pg_logical_emit_message(true, $1, $2) - '0/0')::bigint`, BackfillPrefix, payload).Scan(&lsn); err != nil {
		return 0, fmt.Errorf("write backfill watermark: %w", err)
	}
	return pgoutput.LSN(lsn), nil
}

// Settle waits until the transactions still in progress now have ended,
// for at most settleMax. Called after a low watermark, before the chunk is
// read: a transaction's commit record can precede the watermark in the
// WAL while its backend has not yet left the list of running transactions,
// and a snapshot taken then would not see it; its change would come before
// the chunk's window in the stream, and the chunk's older row after it.
// A transaction still running after settleMax has not committed yet (its
// commit will fall inside the window), or is one in the instant between
// its commit record and its end, so rare and short that the bound stays
// far above it.
func (s *Source) Settle(ctx context.Context) error {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	var snap string
	if err := s.conn.QueryRow(ctx, `SELECT pg_current_snapshot()::text`).Scan(&snap); err != nil {
		return fmt.Errorf("read the running transactions: %w", err)
	}
	deadline := time.Now().Add(settleMax)
	for {
		var ended bool
		if err := s.conn.QueryRow(ctx, `SELECT NOT EXISTS (SELECT FROM pg_snapshot_xip($1::pg_snapshot) x
			WHERE x IN (SELECT pg_snapshot_xip(pg_current_snapshot())))`, snap).Scan(&ended); err != nil {
			return fmt.Errorf("read the running transactions: %w", err)
		}
		if ended || time.Now().After(deadline) {
			return nil
		}
		time.Sleep(time.Millisecond)
	}
}

// settleMax bounds Settle's wait. A session idle in a transaction (a
// pooler, a report) stays in the list for good and makes every chunk wait
// this long, so it stays short: still far above the instant between a
// commit record and the end of its transaction.
const settleMax = 100 * time.Millisecond

// Rows reads the rows of the table whose primary keys (values in PK, as
// text) are keys, with their values in the text format of the replication
// stream, and reports which keys matched a row. Postgres tells which: a
// key's text need not be the text Postgres prints for it ('01' and '1').
func (s *Source) Rows(ctx context.Context, sh *Shape, keys [][]string) (rows []pgoutput.Tuple, found []bool, err error) {
	pk := make([]string, len(sh.PK))
	for i, c := range sh.PK {
		pk[i] = pgx.Identifier{c}.Sanitize()
	}
	row := "(" + strings.Join(pk, ", ") + ")"
	params := make([][]byte, 0, len(keys)*len(pk))
	tuples := make([]string, len(keys))
	for i, key := range keys {
		if len(key) != len(pk) {
			return nil, nil, fmt.Errorf("a key of %s.%s has %d values, its primary key %d", sh.Relation.Namespace, sh.Relation.Name, len(key), len(pk))
		}
		ps := make([]string, len(key))
		for j, v := range key {
			params = append(params, []byte(v))
			ps[j] = "$" + strconv.Itoa(len(params))
		}
		tuples[i] = "(" + strings.Join(ps, ", ") + ")"
	}
	// The last column is the index of the key the row matched.
	var match strings.Builder
	match.WriteString("CASE")
	for i, t := range tuples {
		match.WriteString(" WHEN " + row + " = " + t + " THEN " + strconv.Itoa(i))
	}
	match.WriteString(" END")
	q := selectFrom(sh, match.String()) + " WHERE " + row + " IN (" + strings.Join(tuples, ", ") + ")"
	got, err := s.tuples(ctx, q, params, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("read rows of %s.%s by key: %w", sh.Relation.Namespace, sh.Relation.Name, err)
	}
	found = make([]bool, len(keys))
	for i, r := range got {
		last := r[len(r)-1]
		k, err := strconv.Atoi(string(last.Data))
		if err != nil || k < 0 || k >= len(keys) {
			return nil, nil, fmt.Errorf("read rows of %s.%s by key: matched key %q", sh.Relation.Namespace, sh.Relation.Name, last.Data)
		}
		found[k] = true
		got[i] = r[: len(r)-1 : len(r)-1]
	}
	return got, found, nil
}

// selectFrom selects the replicated columns of the table, then extra.
func selectFrom(sh *Shape, extra ...string) string {
	var q strings.Builder
	q.WriteString("SELECT ")
	for i, c := range sh.Relation.Columns {
		if i > 0 {
			q.WriteString(", ")
		}
		q.WriteString(pgx.Identifier{c.Name}.Sanitize())
	}
	for _, e := range extra {
		q.WriteString(", " + e)
	}
	q.WriteString(" FROM " + ident2(sh.Relation.Namespace, sh.Relation.Name))
	return q.String()
}

// tuples runs a query, read-only, and returns its rows with their values
// in the text format of the replication stream, stopping after maxBytes
// of values (0: no limit).
func (s *Source) tuples(ctx context.Context, q string, params [][]byte, maxBytes int) ([]pgoutput.Tuple, error) {
	var rows []pgoutput.Tuple
	err := s.readOnly(ctx, func() error {
		rr := s.conn.PgConn().ExecParams(ctx, q, params, nil, nil, nil)
		size := 0
		for rr.NextRow() {
			vals := rr.Values()
			row := make(pgoutput.Tuple, len(vals))
			for i, v := range vals {
				row[i] = pgoutput.Value{Kind: pgoutput.Null}
				if v != nil {
					row[i] = pgoutput.Value{Kind: pgoutput.Text, Data: slices.Clone(v)}
					size += len(v)
				}
			}
			rows = append(rows, row)
			if maxBytes > 0 && size > maxBytes {
				break
			}
		}
		_, err := rr.Close()
		return err
	})
	return rows, err
}

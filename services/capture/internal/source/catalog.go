package source

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sluicehq/sluice/services/capture/internal/pgoutput"
	"github.com/sluicehq/sluice/services/capture/internal/pgvalue"
)

// typesQuery reads the given types and, recursively, the base types of
// domains and the element types of arrays.
const typesQuery = `WITH RECURSIVE t AS (
		SELECT oid, typtype, typcategory, typinput, typelem, typbasetype, typdelim FROM pg_type WHERE oid = ANY($1::oid[])
	UNION
		SELECT p.oid, p.typtype, p.typcategory, p.typinput, p.typelem, p.typbasetype, p.typdelim
		FROM t JOIN pg_type p ON p.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype WHEN t.typcategory = 'A' THEN t.typelem END
	)
	SELECT oid, typtype, typcategory = 'A' AND typelem <> 0 AND typinput = 'array_in'::regproc, typelem, typbasetype, typdelim FROM t`

// Types reads types from pg_type, with the types they are made of.
func (s *Source) Types(ctx context.Context, oids []uint32) ([]pgvalue.TypeInfo, error) {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	rows, err := s.conn.Query(ctx, typesQuery, oids)
	if err != nil {
		return nil, fmt.Errorf("read pg_type: %w", err)
	}
	infos, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (pgvalue.TypeInfo, error) {
		var t pgvalue.TypeInfo
		err := row.Scan(&t.OID, &t.Type, &t.Array, &t.Elem, &t.BaseType, &t.Delim)
		return t, err
	})
	if err != nil {
		return nil, fmt.Errorf("read pg_type: %w", err)
	}
	return infos, nil
}

// gone reports whether a query failed because the table, a column, or the
// key's type is no longer what the change being read had: there is no row
// to find, as if it had been deleted, and retrying would not help.
func gone(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "42703" || // undefined column
		pgErr.Code == "42P01" || // undefined table
		strings.HasPrefix(pgErr.Code, "22")) // data exception: the key no longer fits its column's type
}

// Row reads the current values of the columns cols of the row of
// schema.table whose key columns hold the values keyValues (text format),
// in the same text format the replication stream uses. It returns false
// when there is no such row, or no longer such a table or column (renamed,
// dropped or retyped since the change being read).
func (s *Source) Row(ctx context.Context, schema, table string, key, keyValues, cols []string) ([]pgoutput.Value, bool, error) {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	var sql strings.Builder
	sql.WriteString("SELECT ")
	for i, c := range cols {
		if i > 0 {
			sql.WriteString(", ")
		}
		sql.WriteString(pgx.Identifier{c}.Sanitize())
	}
	sql.WriteString(" FROM ")
	sql.WriteString(ident2(schema, table))
	params := make([][]byte, len(key))
	for i, k := range key {
		if i == 0 {
			sql.WriteString(" WHERE ")
		} else {
			sql.WriteString(" AND ")
		}
		sql.WriteString(pgx.Identifier{k}.Sanitize() + " = $" + strconv.Itoa(i+1))
		params[i] = []byte(keyValues[i])
	}
	// Untyped text parameters take the key columns' types; text results
	// are the output functions' text, as pgoutput sends it.
	rr := s.conn.PgConn().ExecParams(ctx, sql.String(), params, nil, nil, nil)
	var vals []pgoutput.Value
	for rr.NextRow() {
		vals = vals[:0]
		for _, v := range rr.Values() {
			if v == nil {
				vals = append(vals, pgoutput.Value{Kind: pgoutput.Null})
			} else {
				vals = append(vals, pgoutput.Value{Kind: pgoutput.Text, Data: slices.Clone(v)})
			}
		}
	}
	_, err := rr.Close()
	if gone(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read %v of %s.%s: %w", cols, schema, table, err)
	}
	if vals == nil {
		return nil, false, nil
	}
	if len(vals) != len(cols) {
		return nil, false, fmt.Errorf("read %v of %s.%s: got %d values", cols, schema, table, len(vals))
	}
	return vals, true, nil
}

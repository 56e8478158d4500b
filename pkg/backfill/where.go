package backfill

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sluicehq/sluice/pkg/config"
)

// InvalidWhereError is a condition that can never run: asking again does
// not help.
type InvalidWhereError struct{ Msg string }

func (e *InvalidWhereError) Error() string { return e.Msg }

// CheckWhere checks that where is one condition, as `sluice backfill
// --where` takes it: an SQL expression with balanced parentheses, no
// statement separator and no comment, so that "WHERE (<where>)" cannot be
// closed early to run something else. It returns the names of the
// functions the condition calls, for CheckWhereIn. Quoting follows
// Postgres's lexer: '…' (and E'…' with backslash escapes), "…" and
// $tag$…$tag$.
func CheckWhere(where string) (calls []string, err error) {
	fail := func(msg string, at int) error {
		return &InvalidWhereError{fmt.Sprintf("--where must be one condition: %s at character %d of %q", msg, at+1, where)}
	}
	depth := 0
	for i := 0; i < len(where); {
		c := where[i]
		switch {
		case c == ';':
			return nil, fail("a ';' ends the statement", i)
		case strings.HasPrefix(where[i:], "--") || strings.HasPrefix(where[i:], "/*"):
			return nil, fail("comments are not allowed", i)
		case c == '(':
			depth++
			i++
		case c == ')':
			if depth--; depth < 0 {
				return nil, fail("this ')' closes more than it opened", i)
			}
			i++
		case (c == 'U' || c == 'u') && (strings.HasPrefix(where[i+1:], "&'") || strings.HasPrefix(where[i+1:], `&"`)) && (i == 0 || !identChar(where[i-1])):
			// U&'…' and U&"…" take escapes with a UESCAPE of any character.
			return nil, fail("Unicode escapes (U&) are not allowed", i)
		case c == '\'':
			escapes := i > 0 && (where[i-1] == 'E' || where[i-1] == 'e') && (i < 2 || !identChar(where[i-2]))
			end := quoted(where, i, '\'', escapes)
			if end < 0 {
				return nil, fail("unterminated string", i)
			}
			i = end
		case c == '"':
			end := quoted(where, i, '"', false)
			if end < 0 {
				return nil, fail("unterminated quoted name", i)
			}
			if name, next := where[i+1:end-1], skipSpace(where, end); next < len(where) && where[next] == '(' {
				calls = append(calls, strings.ReplaceAll(name, `""`, `"`))
			}
			i = end
		case c == '$' && (i == 0 || !identChar(where[i-1])):
			tag, ok := dollarTag(where[i:])
			if !ok {
				i++
				continue
			}
			end := strings.Index(where[i+len(tag):], tag)
			if end < 0 {
				return nil, fail("unterminated dollar-quoted string", i)
			}
			i += len(tag) + end + len(tag)
		case identStart(c):
			j := i
			for j < len(where) && identChar(where[j]) {
				j++
			}
			if next := skipSpace(where, j); next < len(where) && where[next] == '(' {
				calls = append(calls, strings.ToLower(where[i:j]))
			}
			i = j
		default:
			i++
		}
	}
	if depth != 0 {
		return nil, fail("unbalanced parentheses", len(where)-1)
	}
	if strings.TrimSpace(where) == "" {
		return nil, &InvalidWhereError{"--where is empty"}
	}
	return calls, nil
}

// quoted returns the index after the quote that closes the one at i, or
// -1. A doubled quote is one quote; with escapes, so is a backslash and
// what follows it.
func quoted(s string, i int, q byte, escapes bool) int {
	for j := i + 1; j < len(s); j++ {
		switch {
		case escapes && s[j] == '\\':
			j++
		case s[j] == q && j+1 < len(s) && s[j+1] == q:
			j++
		case s[j] == q:
			return j + 1
		}
	}
	return -1
}

// dollarTag returns the $tag$ that s starts with.
func dollarTag(s string) (string, bool) {
	for j := 1; j < len(s); j++ {
		if s[j] == '$' {
			return s[:j+1], true
		}
		if !identChar(s[j]) || j == 1 && unicode.IsDigit(rune(s[j])) {
			return "", false
		}
	}
	return "", false
}

func identStart(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80
}

func identChar(c byte) bool { return identStart(c) || c >= '0' && c <= '9' || c == '$' }

func skipSpace(s string, i int) int {
	for i < len(s) && strings.IndexByte(" \t\r\n\f\v", s[i]) >= 0 {
		i++
	}
	return i
}

// CheckWhereIn checks where (see CheckWhere) against the database: it may
// call no volatile function (none that can act, like pg_terminate_backend
// or nextval), and Postgres must plan it as a condition on table. It runs
// nothing but the plan, in a read-only transaction.
func CheckWhereIn(ctx context.Context, conn *pgx.Conn, table, where string) error {
	calls, err := CheckWhere(where)
	if err != nil {
		return err
	}
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("--where: %w", err)
	}
	defer tx.Rollback(ctx)
	// CheckWhere reads '…' strings as this setting does; a server where it
	// is off would end a string at a \' that CheckWhere reads inside it.
	if _, err := tx.Exec(ctx, "SET LOCAL standard_conforming_strings = on"); err != nil {
		return fmt.Errorf("--where: %w", err)
	}
	if len(calls) > 0 {
		var volatile []string
		err := tx.QueryRow(ctx, `SELECT coalesce(array_agg(DISTINCT proname::text ORDER BY proname::text), '{}') FROM pg_proc
			WHERE provolatile = 'v' AND (lower(proname) = ANY($1) OR proname = ANY($1))`, calls).Scan(&volatile)
		if err != nil {
			return fmt.Errorf("--where: %w", err)
		}
		if len(volatile) > 0 {
			slices.Sort(volatile)
			return &InvalidWhereError{fmt.Sprintf("--where may call only stable or immutable functions; %s is volatile (it may act, not only read)", strings.Join(volatile, ", "))}
		}
	}
	schema, name := config.SplitTable(table)
	// The extended protocol takes one statement only.
	_, err = tx.Exec(ctx, "EXPLAIN SELECT 1 FROM "+pgx.Identifier{schema, name}.Sanitize()+" WHERE ("+where+")", pgx.QueryExecModeExec)
	if pe := (*pgconn.PgError)(nil); errors.As(err, &pe) {
		return &InvalidWhereError{"--where: " + pe.Error()}
	}
	if err != nil {
		return fmt.Errorf("--where: %w", err)
	}
	return nil
}

package backfill

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/sluicehq/sluice/pkg/testenv"
)

func TestCheckWhere(t *testing.T) {
	good := map[string][]string{
		`created_at > now() - interval '7 days'`:         {"now"},
		`note = 'it''s; -- not a comment' AND id > 3`:    nil,
		`note = E'back\'slash); DROP' OR id IN (1, 2)`:   {"in"}, // keywords are looked up too, harmlessly
		`note = E'\'); DELETE FROM t; --'`:               nil,    // one string, to Postgres too
		`"Weird""Col" = $x$a ); b$x$ AND lower(n) = 'a'`: {"lower"},
		`id = ANY (ARRAY[1,2]) AND "MyFn"(id)`:           {"any", "MyFn"},
		`(select count(*) from t2) > 0`:                  {"count"},
		"lower\v(n) = 'a' AND u & 1 = 0":                 {"lower"}, // \v is a space to Postgres
	}
	for where, want := range good {
		calls, err := CheckWhere(where)
		if err != nil || !slices.Equal(calls, want) {
			t.Errorf("CheckWhere(%q) = %q, %v; want %q", where, calls, err, want)
		}
	}
	bad := map[string]string{
		`x); DELETE FROM accounts; --`:      "closes more than it opened",
		`true; DELETE FROM accounts`:        "';' ends the statement",
		`id > 1 -- and the rest`:            "comments",
		`id > 1 /* x */`:                    "comments",
		`(id > 1`:                           "unbalanced",
		`note = 'open`:                      "unterminated string",
		`note = $q$open`:                    "unterminated dollar",
		`   `:                               "empty",
		`true) OR (pg_terminate_backend(1)`: "closes more than it opened",
		`U&"\0073etval"('s', 5) > 0`:        "Unicode escapes",
		`u&'x' = note`:                      "Unicode escapes",
	}
	for where, want := range bad {
		_, err := CheckWhere(where)
		var invalid *InvalidWhereError
		if err == nil || !errors.As(err, &invalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckWhere(%q) = %v; want %q", where, err, want)
		}
	}
}

func FuzzCheckWhere(f *testing.F) {
	for _, s := range []string{`a = 'b'`, `x); DROP t; --`, `$a$ ) $a$`, `E'\''`, `"a""b"(1)`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, where string) {
		if _, err := CheckWhere(where); err != nil {
			return
		}
		// What passes cannot end the statement or the parentheses.
		if strings.Count(where, "(") < strings.Count(where, ")") && !strings.ContainsAny(where, `'"$`) {
			t.Fatalf("accepted %q", where)
		}
		if strings.Contains(where, ";") && !strings.ContainsAny(where, `'"$`) {
			t.Fatalf("accepted %q", where)
		}
	})
}

// Against a real database: a condition that would act (a volatile
// function) or run a second statement is refused, and nothing runs.
func TestCheckWhereIn(t *testing.T) {
	ctx := context.Background()
	pg := testenv.NewPostgres(t, testenv.PostgresOptions{})
	conn, err := pgx.Connect(ctx, pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE TABLE t (id int PRIMARY KEY, created_at timestamptz); INSERT INTO t VALUES (1, now()); CREATE SEQUENCE s`); err != nil {
		t.Fatal(err)
	}
	if err := CheckWhereIn(ctx, conn, "public.t", `created_at > now() - interval '1 day' AND id IN (SELECT 1)`); err != nil {
		t.Fatal(err)
	}
	for where, want := range map[string]string{
		`(SELECT pg_terminate_backend(pg_backend_pid())) IS NULL`: "pg_terminate_backend is volatile",
		`nextval('s') > 0`:              "nextval is volatile",
		`PG_CATALOG.SETVAL('s', 5) > 0`: "setval is volatile",
		`x); DELETE FROM t; --`:         "must be one condition",
		`no_such_column = 1`:            "no_such_column",
	} {
		var invalid *InvalidWhereError
		if err := CheckWhereIn(ctx, conn, "public.t", where); err == nil || !errors.As(err, &invalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckWhereIn(%q) = %v; want %q", where, err, want)
		}
	}
	// The server's setting does not change where a string ends.
	if _, err := conn.Exec(ctx, `SET standard_conforming_strings = off`); err != nil {
		t.Fatal(err)
	}
	if err := CheckWhereIn(ctx, conn, "public.t", `'a\' IS NOT NULL`); err != nil {
		t.Fatalf("with standard_conforming_strings off: %v", err)
	}
	var n, seq int64
	if err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM t), (SELECT last_value FROM s)`).Scan(&n, &seq); err != nil || n != 1 || seq != 1 {
		t.Fatalf("after the checks: %d rows, sequence at %d (%v)", n, seq, err)
	}
}

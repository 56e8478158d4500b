package source

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sluicehq/sluice/pkg/testenv"
	"github.com/sluicehq/sluice/services/capture/internal/pgvalue"
)

const pubTables = `CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY); CREATE TABLE c (id int PRIMARY KEY)`

// ensure runs EnsurePublication as a capture configured with tables would.
func ensure(t *testing.T, url string, tables ...string) (*Publication, error) {
	t.Helper()
	ctx := context.Background()
	src, err := Connect(ctx, cfg(url, tables...), pgvalue.SessionParams)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(ctx)
	return src.EnsurePublication(ctx)
}

// pubState is the publication as Postgres has it: its tables, its
// comment and options.
func pubState(t *testing.T, url string) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var tables []string
	var comment string
	var viaRoot bool
	err = conn.QueryRow(ctx, `SELECT ARRAY(SELECT schemaname || '.' || tablename FROM pg_publication_tables t WHERE t.pubname = p.pubname ORDER BY 1),
		coalesce(obj_description(oid, 'pg_publication'), ''), pubviaroot FROM pg_publication p WHERE pubname = 'sluice'`).Scan(&tables, &comment, &viaRoot)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("tables %s; comment %q; via root %v", strings.Join(tables, ","), comment, viaRoot)
}

func marked(tables string) string {
	return fmt.Sprintf("tables %s; comment %q; via root true", tables, PublicationMarker)
}

// The publication Sluice creates carries the marker, and its tables follow
// postgres.tables: added when configured, dropped when no longer.
func TestPublicationFollowsTables(t *testing.T) {
	pg := testenv.NewPostgres(t, testenv.PostgresOptions{})
	pg.Exec(t, pubTables)

	p, err := ensure(t, pg.URL, "public.a")
	if err != nil || !p.Created || !p.Managed {
		t.Fatalf("create: %+v, %v", p, err)
	}
	if got := pubState(t, pg.URL); got != marked("public.a") {
		t.Fatalf("created: %s", got)
	}

	p, err = ensure(t, pg.URL, "public.a", "public.b", "public.c")
	if err != nil || fmt.Sprint(p.Added, p.Removed) != "[public.b public.c] []" {
		t.Fatalf("add: %+v, %v", p, err)
	}
	if got := pubState(t, pg.URL); got != marked("public.a,public.b,public.c") {
		t.Fatalf("after adding: %s", got)
	}

	p, err = ensure(t, pg.URL, "public.b")
	if err != nil || fmt.Sprint(p.Added, p.Removed, p.Unconfigured) != "[] [public.a public.c] []" {
		t.Fatalf("remove: %+v, %v", p, err)
	}
	if got := pubState(t, pg.URL); got != marked("public.b") {
		t.Fatalf("after removing: %s", got)
	}

	// Nothing to do: nothing done.
	p, err = ensure(t, pg.URL, "public.b")
	if err != nil || p.Created || p.Adopted || !p.Managed || len(p.Added)+len(p.Removed)+len(p.Unconfigured) > 0 {
		t.Fatalf("unchanged: %+v, %v", p, err)
	}
}

// A publication the operator made is never altered: a configured table it
// lacks is an error saying what to run, tables it publishes beyond the
// configured ones are reported.
func TestOperatorPublication(t *testing.T) {
	pg := testenv.NewPostgres(t, testenv.PostgresOptions{})
	pg.Exec(t, pubTables)
	pg.Exec(t, `CREATE PUBLICATION sluice FOR TABLE a, c WITH (publish_via_partition_root = true)`)
	const before = `tables public.a,public.c; comment ""; via root true`

	_, err := ensure(t, pg.URL, "public.a", "public.b")
	if err == nil || !strings.Contains(err.Error(), `publication sluice does not include "public"."b" (ALTER PUBLICATION sluice ADD TABLE "public"."b")`) {
		t.Errorf("missing table: %v", err)
	}
	if got := pubState(t, pg.URL); got != before {
		t.Fatalf("after a missing table: %s", got)
	}

	p, err := ensure(t, pg.URL, "public.a")
	if err != nil || p.Managed || p.Adopted || fmt.Sprint(p.Added, p.Removed, p.Unconfigured) != "[] [] [public.c]" {
		t.Fatalf("extra table: %+v, %v", p, err)
	}
	if got := pubState(t, pg.URL); got != before {
		t.Fatalf("after an extra table: %s", got)
	}

	// The right tables, but an option Sluice would not have set: still
	// the operator's.
	pg.Exec(t, `ALTER PUBLICATION sluice DROP TABLE c; ALTER PUBLICATION sluice SET (publish_via_partition_root = false)`)
	p, err = ensure(t, pg.URL, "public.a")
	if err != nil || p.Managed || p.Adopted {
		t.Fatalf("other options: %+v, %v", p, err)
	}
	if got := pubState(t, pg.URL); got != `tables public.a; comment ""; via root false` {
		t.Fatalf("after other options: %s", got)
	}
	// A comment of the operator's is not overwritten.
	pg.Exec(t, `ALTER PUBLICATION sluice SET (publish_via_partition_root = true); COMMENT ON PUBLICATION sluice IS 'ours'`)
	if p, err = ensure(t, pg.URL, "public.a"); err != nil || p.Managed {
		t.Fatalf("commented: %+v, %v", p, err)
	}
}

// An unmarked publication exactly as Sluice creates it (one Sluice made
// before it marked them) is adopted, and follows postgres.tables after.
func TestPublicationAdopted(t *testing.T) {
	pg := testenv.NewPostgres(t, testenv.PostgresOptions{})
	pg.Exec(t, pubTables)
	pg.Exec(t, `CREATE PUBLICATION sluice FOR TABLE a, b WITH (publish_via_partition_root = true)`)

	p, err := ensure(t, pg.URL, "public.b", "public.a")
	if err != nil || !p.Adopted || !p.Managed || len(p.Added)+len(p.Removed) > 0 {
		t.Fatalf("adopt: %+v, %v", p, err)
	}
	if got := pubState(t, pg.URL); got != marked("public.a,public.b") {
		t.Fatalf("adopted: %s", got)
	}
	if p, err = ensure(t, pg.URL, "public.a"); err != nil || fmt.Sprint(p.Removed) != "[public.b]" {
		t.Fatalf("then remove: %+v, %v", p, err)
	}
	if got := pubState(t, pg.URL); got != marked("public.a") {
		t.Fatalf("after removing: %s", got)
	}
}

// Standby captures with one config start at once: each brings the
// publication to the config, none fails on another's change.
func TestPublicationConcurrentStarts(t *testing.T) {
	pg := testenv.NewPostgres(t, testenv.PostgresOptions{})
	pg.Exec(t, pubTables)
	if _, err := ensure(t, pg.URL, "public.a"); err != nil {
		t.Fatal(err)
	}
	for round, tables := range [][]string{{"public.a", "public.b", "public.c"}, {"public.c"}} {
		ctx := context.Background()
		var srcs []*Source
		for range 6 {
			src, err := Connect(ctx, cfg(pg.URL, tables...), pgvalue.SessionParams)
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close(ctx)
			srcs = append(srcs, src)
		}
		var wg sync.WaitGroup
		errs := make([]error, len(srcs))
		for i, src := range srcs {
			wg.Go(func() { _, errs[i] = src.EnsurePublication(ctx) })
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("round %d, capture %d: %v", round, i, err)
			}
		}
		if got, want := pubState(t, pg.URL), marked(strings.Join(tables, ",")); got != want {
			t.Fatalf("round %d: %s, want %s", round, got, want)
		}
	}
}

// A role that may not alter the publication is told what to run by hand.
// When only tables no longer configured would go, capture goes on: it
// skips their changes.
func TestPublicationPermission(t *testing.T) {
	pg := testenv.NewPostgres(t, testenv.PostgresOptions{})
	pg.Exec(t, pubTables)
	if _, err := ensure(t, pg.URL, "public.a", "public.c"); err != nil { // as its owner
		t.Fatal(err)
	}
	pg.Exec(t, `CREATE ROLE app LOGIN REPLICATION`)
	app := strings.Replace(pg.URL, "postgres@", "app@", 1)

	_, err := ensure(t, app, "public.a", "public.b")
	want := `(SQLSTATE 42501); run by hand as the owner of the publication and of the tables (or a superuser): ALTER PUBLICATION sluice ADD TABLE "public"."b"; ALTER PUBLICATION sluice DROP TABLE "public"."c"`
	if err == nil || !strings.HasSuffix(err.Error(), want) {
		t.Errorf("add without privileges: %v", err)
	}
	p, err := ensure(t, app, "public.a")
	if err != nil || p.Unremoved != `ALTER PUBLICATION sluice DROP TABLE "public"."c"` || fmt.Sprint(p.Removed, p.Unconfigured) != "[] [public.c]" {
		t.Errorf("drop without privileges: %+v, %v", p, err)
	}
	if got := pubState(t, pg.URL); got != marked("public.a,public.c") {
		t.Fatalf("altered: %s", got)
	}
}

// A lock held elsewhere (a capture paused while changing the publication,
// a long VACUUM FULL of a table) makes capture give up and say why, not
// wait without a word.
func TestPublicationLockTimeout(t *testing.T) {
	pg := testenv.NewPostgres(t, testenv.PostgresOptions{})
	pg.Exec(t, pubTables)
	if _, err := ensure(t, pg.URL, "public.a"); err != nil {
		t.Fatal(err)
	}
	defer func(d time.Duration) { lockTimeout = d }(lockTimeout)
	lockTimeout = 200 * time.Millisecond
	ctx := context.Background()
	other, err := pgx.Connect(ctx, pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	for _, hold := range []string{`LOCK TABLE b IN SHARE UPDATE EXCLUSIVE MODE`, `SELECT pg_advisory_xact_lock(hashtext('sluice publication sluice'))`} {
		tx, err := other.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, hold); err != nil {
			t.Fatal(err)
		}
		_, err = ensure(t, pg.URL, "public.a", "public.b")
		if err == nil || !strings.Contains(err.Error(), "(SQLSTATE 55P03); waited 200ms for a lock another session holds on the publication or on a table") {
			t.Errorf("%s: %v", hold, err)
		}
		tx.Rollback(ctx)
	}
	if _, err := ensure(t, pg.URL, "public.a", "public.b"); err != nil {
		t.Fatal(err)
	}
	if got := pubState(t, pg.URL); got != marked("public.a,public.b") {
		t.Fatalf("after the locks: %s", got)
	}
}

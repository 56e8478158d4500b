package pgvalue_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/testenv"
	"github.com/sluicehq/sluice/services/capture/internal/pgvalue"
	"github.com/sluicehq/sluice/services/capture/internal/source"
)

// The table of built-in types agrees with the catalog of the Postgres at
// hand about every built-in type: arrays, their element types and
// delimiters, and that the rest render as strings.
func TestBuiltinsMatchCatalog(t *testing.T) {
	ctx := context.Background()
	pg := testenv.NewPostgres(t, testenv.PostgresOptions{})
	src, err := source.Connect(ctx, config.Postgres{URL: pg.URL}, pgvalue.SessionParams)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(ctx)
	conn, err := pgx.Connect(ctx, pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, _ := conn.Query(ctx, `SELECT oid, typname FROM pg_type WHERE oid < 10000 ORDER BY oid`)
	type typ struct {
		OID  uint32
		Name string
	}
	builtin, err := pgx.CollectRows(rows, pgx.RowToStructByPos[typ])
	if err != nil {
		t.Fatal(err)
	}
	oids := make([]uint32, len(builtin))
	for i, b := range builtin {
		oids[i] = b.OID
	}
	fromCatalog, err := pgvalue.CatalogOnly(src).Resolve(ctx, oids)
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range builtin {
		static, ok := pgvalue.Builtin(b.OID)
		if !ok {
			t.Errorf("type %d (%s) is not in the built-in table", b.OID, b.Name)
		} else if !pgvalue.SameRendering(static, fromCatalog[i]) {
			t.Errorf("type %d (%s): built-in table %+v, catalog %+v", b.OID, b.Name, static, fromCatalog[i])
		}
	}
}

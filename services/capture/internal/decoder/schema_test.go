package decoder_test

import (
	"strings"
	"testing"
)

// Columns added, dropped, retyped and renamed while streaming: each event
// has the table's shape as of its change, and nothing stops. "live" reads
// each change right after it is made; "behind" reads them all after the
// last one, when the catalog no longer matches the earlier changes (the key
// column has a new name, the enum type of a column is gone).
func TestSchemaChanges(t *testing.T) {
	for _, mode := range []string{"live", "behind"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			table, mood := "evolve_"+mode, "mood_"+mode
			r := startReplica(t, "CREATE TABLE "+table+" (id int PRIMARY KEY, a text, b int)", "public."+table)
			steps := []struct{ sql, record, pk string }{
				{`INSERT INTO T VALUES (1, 'x', 1)`, `{"id":1,"a":"x","b":1}`, "id"},
				{`CREATE TYPE M AS ENUM ('happy', 'sad'); ALTER TABLE T ADD COLUMN c M DEFAULT 'happy'; INSERT INTO T VALUES (2, 'y', 2, 'sad')`,
					`{"id":2,"a":"y","b":2,"c":"sad"}`, "id"},
				{`ALTER TABLE T DROP COLUMN a; INSERT INTO T (id, b) VALUES (3, 3)`, `{"id":3,"b":3,"c":"happy"}`, "id"},
				{`ALTER TABLE T ALTER COLUMN b TYPE text; UPDATE T SET b = 'ten' WHERE id = 1`, `{"id":1,"b":"ten","c":"happy"}`, "id"},
				{`ALTER TABLE T RENAME COLUMN b TO bee; INSERT INTO T (id, bee) VALUES (4, 'four')`, `{"id":4,"bee":"four","c":"happy"}`, "id"},
				{`ALTER TABLE T RENAME COLUMN id TO key; UPDATE T SET bee = 'x' WHERE key = 4`, `{"key":4,"bee":"x","c":"happy"}`, "key"},
				{`ALTER TABLE T ADD COLUMN tags int[]; ALTER TABLE T ALTER COLUMN c DROP DEFAULT, ALTER COLUMN c TYPE text; DROP TYPE M; INSERT INTO T VALUES (5, 'five', 'meh', '{1,2}')`,
					`{"key":5,"bee":"five","c":"meh","tags":[1,2]}`, "key"},
				{`DELETE FROM T WHERE key = 2`, `{"key":2,"bee":null,"c":null,"tags":null}`, "key"},
			}
			names := strings.NewReplacer(" T ", " "+table+" ", " M ", " "+mood+" ", " M;", " "+mood+";")
			check := func(i int, record, pk string) {
				t.Helper()
				ev := r.events(1)[0]
				if string(ev.Record) != record || strings.Join(ev.PkColumns, ",") != pk {
					t.Errorf("step %d: record %s key %v, want %s key %s", i+1, ev.Record, ev.PkColumns, record, pk)
				}
			}
			for i, s := range steps {
				r.pg.Exec(t, names.Replace(s.sql))
				if mode == "live" {
					check(i, s.record, s.pk)
				}
			}
			if mode == "behind" {
				for i, s := range steps {
					check(i, s.record, s.pk)
				}
			}
		})
	}
}

package decoder_test

import (
	"crypto/rand"
	"encoding/base64"
	"slices"
	"strings"
	"testing"

	sluicev1 "github.com/sluicehq/sluice/proto/sluice/v1"
)

// An update that leaves a large TOASTed column alone does not carry its
// value; the record must still hold it. Under REPLICA IDENTITY FULL the old
// row supplies it; otherwise the decoder reads it from the table by key,
// getting the row's current value, which may be newer than the change's.
func TestUnchangedToast(t *testing.T) {
	for _, identity := range []string{"default", "full"} {
		t.Run(identity, func(t *testing.T) {
			t.Parallel()
			full := identity == "full"
			table := "docs_" + identity
			r := startReplica(t, "CREATE TABLE "+table+" (id int PRIMARY KEY, body text, n int); ALTER TABLE "+table+" REPLICA IDENTITY "+identity,
				"public."+table)
			// Random base64 does not compress, so it is stored out of line.
			big, big2 := random(t, 120_000), random(t, 110_000)
			r.pg.Exec(t, "INSERT INTO "+table+" VALUES (1, $1, 0)", big)
			var toastBytes int64
			if err := query(r.pg, "SELECT pg_relation_size(reltoastrelid) FROM pg_class WHERE relname = $1", []any{table}, &toastBytes); err != nil || toastBytes < 100_000 {
				t.Fatalf("TOAST table holds %d bytes (%v); the value is not out of line", toastBytes, err)
			}
			short := strings.NewReplacer(big, "<big>", big2, "<big2>")
			expect := func(evs []*sluicev1.ChangeEvent, want ...string) {
				t.Helper()
				for i, ev := range evs {
					got := short.Replace(string(ev.Record)) + " toast=" + strings.Join(ev.UnchangedToastColumns, ",") + " changes=" + short.Replace(string(ev.Changes))
					if got != want[i] {
						t.Errorf("event %d (%s):\n got %s\nwant %s", i, ev.Action, got, want[i])
					}
				}
			}
			pick := func(def, ful string) string {
				if full {
					return ful
				}
				return def
			}

			r.pg.Exec(t, "UPDATE "+table+" SET n = 1 WHERE id = 1")
			expect(r.events(2),
				`{"id":1,"body":"<big>","n":0} toast= changes=`,
				`{"id":1,"body":"<big>","n":1} toast= changes=`+pick(`{}`, `{"n":0}`))
			if r.unchanged != 1 {
				t.Fatalf("Postgres sent %d unchanged TOAST values; the test needs one", r.unchanged)
			}

			// The row changes again before the update is decoded: read by
			// key, the value is the newer one, which the next event carries
			// anyway. The old row has the value as it was.
			r.pg.Exec(t, "UPDATE "+table+" SET n = 2 WHERE id = 1")
			r.pg.Exec(t, "UPDATE "+table+" SET body = $1 WHERE id = 1", big2)
			expect(r.events(2),
				pick(`{"id":1,"body":"<big2>","n":2} toast= changes={}`, `{"id":1,"body":"<big>","n":2} toast= changes={"n":1}`),
				`{"id":1,"body":"<big2>","n":2} toast= changes=`+pick(`{}`, `{"body":"<big>"}`))

			// A new key: the value is read under the new key.
			r.pg.Exec(t, "UPDATE "+table+" SET id = 2 WHERE id = 1")
			ev := r.events(1)[0]
			expect([]*sluicev1.ChangeEvent{ev}, `{"id":2,"body":"<big2>","n":2} toast= changes=`+pick(`{}`, `{"id":1}`))
			if !slices.Equal(ev.OldPkValues, []string{"1"}) {
				t.Errorf("old key %v", ev.OldPkValues)
			}

			// The row is gone before the update is decoded: without the old
			// row the value stays out, listed as unchanged.
			r.pg.Exec(t, "UPDATE "+table+" SET n = 3 WHERE id = 2")
			r.pg.Exec(t, "DELETE FROM "+table+" WHERE id = 2")
			expect(r.events(2),
				pick(`{"id":2,"n":3} toast=body changes={}`, `{"id":2,"body":"<big2>","n":3} toast= changes={"n":2}`),
				pick(`{"id":2,"body":null,"n":null} toast= changes=`, `{"id":2,"body":"<big2>","n":3} toast= changes=`))
			// Under either identity the new rows left the value out.
			if r.unchanged != 4 {
				t.Errorf("%d unchanged TOAST values in new rows, want 4", r.unchanged)
			}
		})
	}
}

func random(t *testing.T, n int) string {
	b := make([]byte, n*3/4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

// When the table changed so much since an update that its row cannot be
// looked up by the update's key any more, the value stays out, as for a
// deleted row, and capture goes on.
func TestUnchangedToastKeyRetyped(t *testing.T) {
	t.Parallel()
	r := startReplica(t, "CREATE TABLE docs_retyped (id int PRIMARY KEY, body text, n int)", "public.docs_retyped")
	big := random(t, 120_000)
	r.pg.Exec(t, "INSERT INTO docs_retyped VALUES (1, $1, 0)", big)
	r.pg.Exec(t, "UPDATE docs_retyped SET n = 1 WHERE id = 1")
	r.pg.Exec(t, "ALTER TABLE docs_retyped ALTER COLUMN id TYPE uuid USING gen_random_uuid()")
	r.pg.Exec(t, "INSERT INTO docs_retyped VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'small', 2)")
	evs := r.events(3)
	if got := string(evs[1].Record) + " " + strings.Join(evs[1].UnchangedToastColumns, ","); got != `{"id":1,"n":1} body` {
		t.Errorf("update: %s", got)
	}
	if got := string(evs[2].Record); got != `{"id":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11","body":"small","n":2}` {
		t.Errorf("insert after: %s", got)
	}
}

package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/e2e/harness"
)

// Sequin parity: the values Sluice stores are, as JSON, those Sequin's code
// writes for the same changes (its consumers.ex metadata/3,
// slot_producer.ex numbering and transaction annotations, table_reader.ex
// backfill keys), on a real Postgres. Each expectation below is built from
// Sequin's rules, not read back from Sluice.
func TestSequinParity(t *testing.T) {
	e := harness.NewEnv(t)
	e.Exec(`CREATE TABLE items (id int PRIMARY KEY, name text, price money, amount numeric(10,2));
		CREATE TABLE other (id int PRIMARY KEY);
		CREATE TABLE pairs (a int, b text, note text, PRIMARY KEY (a, b))`)
	cfg := e.WriteConfig(fmt.Sprintf(`postgres:
  url: %q
  tables: [items, other, pairs]
  name: shop
  annotations: {env: test, tier: 1}
  status_interval: 200ms
nats: {url: %q, partitions: 2}
sinks:
  - name: cache
    tables: [items, pairs]
    annotations: {team: web}
    destination: {type: redis_string, host: 127.0.0.1, port: %d}
  - name: annotated
    tables: [items]
    filter: 'metadata.transaction_annotations != nil && metadata.transaction_annotations.user == "ann" && metadata.database.name == "shop"'
    destination: {type: redis_string, host: 127.0.0.1, port: %d, key_prefix: annotated}
`, e.PG.URL, e.NATS.URL(), e.Redis.Port, e.Redis.Port))
	e.RunPipeline(cfg, "cache", "annotated")
	ctx := context.Background()

	// One transaction: a change of a table no sink reads, annotations set,
	// cleared and set to something that is not JSON, a TRUNCATE, and
	// logical messages, transactional and not.
	e.Exec(`BEGIN;
		INSERT INTO other VALUES (1);
		INSERT INTO items VALUES (1, 'one', '$1,234.56', 199.99);
		SELECT pg_logical_emit_message(true, 'sequin:transaction_annotations.set', '{"user": "ann", "n": 1}');
		INSERT INTO items VALUES (2, 'two', 5, 2);
		SELECT pg_logical_emit_message(false, 'app.note', 'not counted: sent outside the transaction');
		SELECT pg_logical_emit_message(true, 'sequin:transaction_annotations.clear', '');
		TRUNCATE other;
		INSERT INTO items VALUES (3, 'three', 5, 3);
		SELECT pg_logical_emit_message(true, 'sequin:transaction_annotations.set', 'not json');
		INSERT INTO items VALUES (4, 'four', 5, 4);
		SELECT pg_logical_emit_message(true, 'sequin:transaction_annotations.set', '{"user": "ann"}');
		COMMIT`)
	e.Exec(`INSERT INTO items VALUES (5, 'five', 5, 5)`) // annotations end with their transaction

	get := func(key string) map[string]any {
		t.Helper()
		var raw string
		harness.Eventually(t, 30*time.Second, func() string {
			var err error
			if raw, err = e.RC.Get(ctx, key).Result(); err != nil {
				return key + ": " + err.Error()
			}
			return ""
		})
		var v map[string]any
		dec := json.NewDecoder(strings.NewReader(raw))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		return v
	}
	meta := func(v map[string]any) map[string]any { return v["metadata"].(map[string]any) }
	lsn := meta(get("sequin:items:1"))["commit_lsn"].(json.Number).String()
	uuid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

	// Sequin's message for a change of this transaction at idx, with these
	// annotations; the ids are Sluice's (Sequin's are its own UUIDs), but
	// must be stable, well-formed, and the same for each change.
	var consumerID, databaseID string
	want := func(id, idx int, name string, price, amount any, annotations any) map[string]any {
		return map[string]any{
			"action": "insert", "changes": nil,
			"record": map[string]any{"id": json.Number(fmt.Sprint(id)), "name": name, "price": price, "amount": amount},
			"metadata": map[string]any{
				"commit_idx": json.Number(fmt.Sprint(idx)), "commit_lsn": json.Number(lsn),
				"consumer": map[string]any{"annotations": map[string]any{"team": "web"}, "id": consumerID, "name": "cache"},
				"database": map[string]any{"annotations": map[string]any{"env": "test", "tier": json.Number("1")}, "database": "postgres",
					"hostname": "127.0.0.1", "id": databaseID, "name": "shop"},
				"database_name": "shop", "enrichment": nil,
				"idempotency_key": base64.StdEncoding.EncodeToString([]byte(lsn + ":" + fmt.Sprint(idx))),
				"record_pks":      []any{fmt.Sprint(id)},
				"table_name":      "items", "table_schema": "public",
				"transaction_annotations": annotations,
			},
		}
	}
	first := meta(get("sequin:items:1"))
	consumerID = first["consumer"].(map[string]any)["id"].(string)
	databaseID = first["database"].(map[string]any)["id"].(string)
	if !uuid.MatchString(consumerID) || !uuid.MatchString(databaseID) {
		t.Fatalf("ids %q, %q are not version 5 UUIDs", consumerID, databaseID)
	}
	// commit_idx: other's insert 0, items 1; the annotation message 2;
	// items 2 is 3; the non-transactional message is not counted; the
	// clear 4; the TRUNCATE 5 (once, for its one table); items 3 is 6;
	// the bad set 7; items 4 is 8. Money and numeric as Postgres prints
	// them; annotations as JSON, compacted, or null.
	ann := map[string]any{"user": "ann", "n": json.Number("1")}
	for _, c := range []struct {
		id, idx     int
		name        string
		price, amnt string
		annotations any
	}{
		{1, 1, "one", "$1,234.56", "199.99", nil},
		{2, 3, "two", "$5.00", "2.00", ann},
		{3, 6, "three", "$5.00", "3.00", nil},
		{4, 8, "four", "$5.00", "4.00", nil}, // "not json": null, as Sequin
	} {
		got, exp := get(fmt.Sprintf("sequin:items:%d", c.id)), want(c.id, c.idx, c.name, c.price, c.amnt, c.annotations)
		delete(meta(got), "commit_timestamp") // the commit's time, checked below
		if !reflect.DeepEqual(got, exp) {
			gj, _ := json.Marshal(got)
			ej, _ := json.Marshal(exp)
			t.Errorf("items %d:\n got  %s\n want %s", c.id, gj, ej)
		}
	}
	if ts := meta(get("sequin:items:5"))["commit_timestamp"].(string); !regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$`).MatchString(ts) {
		t.Errorf("commit_timestamp %q", ts)
	}
	if a := meta(get("sequin:items:5"))["transaction_annotations"]; a != nil {
		t.Errorf("annotations outlived their transaction: %v", a)
	}
	// Annotations that are not UTF-8 cannot be JSON: null, and the
	// changes around them still flow.
	e.Exec(`BEGIN;
		SELECT pg_logical_emit_message(true, 'sequin:transaction_annotations.set', '\x7b22223affff7d'::bytea);
		INSERT INTO items VALUES (6, 'six', 6, 6);
		COMMIT`)
	e.Exec(`INSERT INTO items VALUES (7, 'seven', 7, 7)`)
	if a, ok := meta(get("sequin:items:6"))["transaction_annotations"]; !ok || a != nil {
		t.Errorf("annotations that are not UTF-8: %v", a)
	}
	get("sequin:items:7")
	// Expressions see the annotations and the database: only items 2
	// passes the annotated sink's filter.
	harness.Eventually(t, 30*time.Second, func() string {
		keys := e.RC.Keys(ctx, "annotated:*").Val()
		if len(keys) != 1 || keys[0] != "annotated:items:2" {
			return fmt.Sprintf("the annotated sink holds %v", keys)
		}
		return ""
	})

	// A backfill's idempotency key: base64 of "<backfill id>:<pk1>:<pk2>".
	e.Exec(`INSERT INTO pairs VALUES (1, 'x:y', 'n')`)
	get("sequin:pairs:1:x:y")
	e.RC.Del(ctx, "sequin:pairs:1:x:y")
	bf := harness.Start(t, "sluice", "backfill", "--config", cfg, "--sink", "cache", "--table", "pairs")
	if code := bf.WaitExit(time.Minute); code != 0 {
		t.Fatalf("backfill: %s", bf.Output())
	}
	m := regexp.MustCompile(`backfill (\S+) of`).FindStringSubmatch(bf.Output())
	if m == nil {
		t.Fatalf("sluice backfill names no backfill:\n%s", bf.Output())
	}
	id := m[1]
	read := meta(get("sequin:pairs:1:x:y"))
	if key, _ := base64.StdEncoding.DecodeString(read["idempotency_key"].(string)); string(key) != id+":1:x:y" {
		t.Errorf("backfill idempotency key is base64 of %q, want %q", key, id+":1:x:y")
	}
}

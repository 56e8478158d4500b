package event

import (
	"strings"
	"testing"
	"time"

	sluicev1 "github.com/sluicehq/sluice/proto/sluice/v1"
	"github.com/sluicehq/sluice/services/capture/internal/pgoutput"
	"github.com/sluicehq/sluice/services/capture/internal/pgvalue"
)

// builtin returns the Types of columns of built-in types.
func builtin(cols []pgoutput.Column) []*pgvalue.Type {
	types := make([]*pgvalue.Type, len(cols))
	for i, c := range cols {
		t, ok := pgvalue.Builtin(c.TypeOID)
		if !ok {
			t = pgvalue.Text
		}
		types[i] = t
	}
	return types
}

// newRelation is NewRelation with built-in column types.
func newRelation(rel *pgoutput.Relation, pk []string) (*Relation, error) {
	return NewRelation(rel, pk, builtin(rel.Columns))
}

func val(s string) pgoutput.Value { return pgoutput.Value{Kind: pgoutput.Text, Data: []byte(s)} }

var (
	null  = pgoutput.Value{Kind: pgoutput.Null}
	toast = pgoutput.Value{Kind: pgoutput.Unchanged}
)

// orders(tenant text, note text, id int4, total numeric), PRIMARY KEY (id, tenant)
func orders(t *testing.T) *Relation {
	t.Helper()
	r, err := newRelation(&pgoutput.Relation{Namespace: "public", Name: "orders", Columns: []pgoutput.Column{
		{Name: "tenant", TypeOID: 25}, {Name: "note", TypeOID: 25}, {Name: "id", TypeOID: 23}, {Name: "total", TypeOID: 1700},
	}}, []string{"tenant", "id"})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func newTx() *Tx {
	return NewTx(Origin{Database: "app", Host: "db"}, &pgoutput.Begin{FinalLSN: 0x1000, CommitTime: time.UnixMicro(1795636800123456)})
}

func TestInsert(t *testing.T) {
	r, tx := orders(t), newTx()
	ev, err := r.Insert(tx, &pgoutput.Insert{New: pgoutput.Tuple{val("acme"), null, val("7"), val("19.90")}})
	if err != nil {
		t.Fatal(err)
	}
	if got := string(ev.Record); got != `{"tenant":"acme","note":null,"id":7,"total":"19.90"}` {
		t.Errorf("record = %s", got)
	}
	if strings.Join(ev.PkValues, ",") != "acme,7" || strings.Join(ev.PkColumns, ",") != "tenant,id" {
		t.Errorf("pk = %v %v", ev.PkColumns, ev.PkValues)
	}
	if ev.Action != sluicev1.Action_ACTION_INSERT || ev.CommitLsn != 0x1000 || ev.CommitIdx != 0 || ev.Database != "app" ||
		ev.CommitTimestampUs != 1795636800123456 || ev.Changes != nil || ev.IdempotencyKey != "NDA5Njow" {
		t.Errorf("event = %+v", ev)
	}
	ev2, _ := r.Insert(tx, &pgoutput.Insert{New: pgoutput.Tuple{val("acme"), null, val("8"), val("1")}})
	if ev2.CommitIdx != 1 {
		t.Errorf("second change has commit_idx %d", ev2.CommitIdx)
	}
}

func TestUpdate(t *testing.T) {
	r := orders(t)
	cases := []struct {
		name                   string
		m                      pgoutput.Update
		record, changes, toast string
		oldPK                  string
	}{
		{"default identity", pgoutput.Update{New: pgoutput.Tuple{val("acme"), val("hi"), val("7"), val("2")}},
			`{"tenant":"acme","note":"hi","id":7,"total":"2"}`, `{}`, "", ""},
		{"unchanged toast without old row", pgoutput.Update{New: pgoutput.Tuple{val("acme"), toast, val("7"), val("2")}},
			`{"tenant":"acme","id":7,"total":"2"}`, `{}`, "note", ""},
		{"full identity", pgoutput.Update{OldKind: 'O', Old: pgoutput.Tuple{val("acme"), val("long"), val("7"), val("1")}, New: pgoutput.Tuple{val("acme"), toast, val("7"), val("2")}},
			`{"tenant":"acme","note":"long","id":7,"total":"2"}`, `{"total":"1"}`, "", ""},
		{"null to value", pgoutput.Update{OldKind: 'O', Old: pgoutput.Tuple{val("acme"), null, val("7"), val("1")}, New: pgoutput.Tuple{val("acme"), val(""), val("7"), val("1")}},
			`{"tenant":"acme","note":"","id":7,"total":"1"}`, `{"note":null}`, "", ""},
		{"key changed", pgoutput.Update{OldKind: 'K', Old: pgoutput.Tuple{val("acme"), null, val("7"), null}, New: pgoutput.Tuple{val("acme"), val("x"), val("9"), val("1")}},
			`{"tenant":"acme","note":"x","id":9,"total":"1"}`, `{}`, "", "acme,7"},
	}
	for _, c := range cases {
		ev, err := r.Update(newTx(), &c.m)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if string(ev.Record) != c.record || string(ev.Changes) != c.changes || strings.Join(ev.UnchangedToastColumns, ",") != c.toast || strings.Join(ev.OldPkValues, ",") != c.oldPK {
			t.Errorf("%s: record %s changes %s toast %v oldpk %v", c.name, ev.Record, ev.Changes, ev.UnchangedToastColumns, ev.OldPkValues)
		}
	}
}

func TestDelete(t *testing.T) {
	ev, err := orders(t).Delete(newTx(), &pgoutput.Delete{OldKind: 'K', Old: pgoutput.Tuple{val("acme"), null, val("7"), null}})
	if err != nil {
		t.Fatal(err)
	}
	if string(ev.Record) != `{"tenant":"acme","note":null,"id":7,"total":null}` || ev.Action != sluicev1.Action_ACTION_DELETE || ev.Changes != nil {
		t.Errorf("event = %+v", ev)
	}
}

func TestErrors(t *testing.T) {
	r := orders(t)
	if _, err := r.Insert(newTx(), &pgoutput.Insert{New: pgoutput.Tuple{val("acme")}}); err == nil {
		t.Error("short row accepted")
	}
	if _, err := r.Insert(newTx(), &pgoutput.Insert{New: pgoutput.Tuple{null, null, val("7"), null}}); err == nil {
		t.Error("null key accepted")
	}
	if _, err := newRelation(&pgoutput.Relation{Namespace: "public", Name: "t", Columns: []pgoutput.Column{{Name: "a"}}}, []string{"id"}); err == nil {
		t.Error("relation without its key column accepted")
	}
	if _, err := NewRelation(&pgoutput.Relation{Namespace: "public", Name: "t", Columns: []pgoutput.Column{{Name: "id"}}}, []string{"id"}, nil); err == nil {
		t.Error("relation without column types accepted")
	}
}

package event

import (
	"testing"

	"github.com/sluicehq/sluice/services/capture/internal/pgoutput"
)

// A typical row: key, texts, money amount, flag, timestamp, document, array.
var benchColumns = []pgoutput.Column{
	{Name: "id", TypeOID: 20}, {Name: "name", TypeOID: 25}, {Name: "email", TypeOID: 1043},
	{Name: "balance", TypeOID: 1700}, {Name: "active", TypeOID: 16}, {Name: "updated_at", TypeOID: 1184},
	{Name: "meta", TypeOID: 3802}, {Name: "tags", TypeOID: 1007},
}

var benchRow = pgoutput.Tuple{
	val("4242"), val("Grace Hopper"), val("grace@example.com"), val("142.00"), val("t"),
	val("2026-11-25 21:07:27.55814+00"), val(`{"plan": "pro", "seats": 12}`), val("{1,2,NULL,4}"),
}

func BenchmarkInsert(b *testing.B) {
	r, err := newRelation(&pgoutput.Relation{Namespace: "public", Name: "users", Columns: benchColumns}, []string{"id"})
	if err != nil {
		b.Fatal(err)
	}
	m := &pgoutput.Insert{New: benchRow}
	b.ReportAllocs()
	for b.Loop() {
		tx := newTx()
		if _, err := r.Insert(tx, m); err != nil {
			b.Fatal(err)
		}
	}
}

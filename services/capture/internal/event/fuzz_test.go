package event

import (
	"encoding/binary"
	"encoding/json"
	"testing"

	sluicev1 "github.com/sluicehq/sluice/proto/sluice/v1"
	"github.com/sluicehq/sluice/services/capture/internal/pgoutput"
)

// msg builds pgoutput messages for seeds.
type msg []byte

func (m msg) u8(v uint8) msg   { return append(m, v) }
func (m msg) u16(v uint16) msg { return binary.BigEndian.AppendUint16(m, v) }
func (m msg) u32(v uint32) msg { return binary.BigEndian.AppendUint32(m, v) }
func (m msg) str(s string) msg { return append(append(m, s...), 0) }

func (m msg) column(key bool, name string, oid uint32) msg {
	flags := uint8(0)
	if key {
		flags = 1
	}
	return m.u8(flags).str(name).u32(oid).u32(0xffffffff)
}

// tuple writes values: nil is NULL, 'u' unchanged TOAST, a string text.
func (m msg) tuple(vals ...any) msg {
	m = m.u16(uint16(len(vals)))
	for _, v := range vals {
		switch v := v.(type) {
		case nil:
			m = m.u8('n')
		case byte:
			m = m.u8(v)
		case string:
			m = m.u8('t').u32(uint32(len(v)))
			m = append(m, v...)
		}
	}
	return m
}

// FuzzRecord decodes a relation message and a row change, as capture
// receives them, and builds the event: whatever the bytes, no panic, and
// the record and changes are valid JSON.
func FuzzRecord(f *testing.F) {
	rel := msg{'R'}.u32(1).str("public").str("t").u8('d').u16(9).
		column(true, "id", 23).column(false, "tags", 1009).column(false, "doc", 3802).column(false, "at", 1184).
		column(false, "span", 1187).column(false, "f", 701).column(false, "boxes", 1020).column(false, "ok", 16).column(false, "n", 1700)
	row := []any{"7", `{"a b",NULL,"c\"d"}`, `{"k": [1, null]}`, "2026-11-25 20:00:00.5+00", `{P1D,PT-1S}`, "NaN", `{(1,1),(0,0);(2,2),(1,1)}`, "t", "1.50"}
	old := []any{"7", `{}`, nil, "infinity", nil, "-0", `{}`, "f", "NaN"}
	toastRow := append([]any{"7", byte('u')}, row[2:]...)
	f.Add([]byte(rel), []byte(msg{'I'}.u32(1).u8('N').tuple(row...)))
	f.Add([]byte(rel), []byte(msg{'U'}.u32(1).u8('O').tuple(old...).u8('N').tuple(toastRow...)))
	f.Add([]byte(rel), []byte(msg{'U'}.u32(1).u8('K').tuple("6", nil, nil, nil, nil, nil, nil, nil, nil).u8('N').tuple(toastRow...)))
	f.Add([]byte(rel), []byte(msg{'D'}.u32(1).u8('K').tuple("7", nil, nil, nil, nil, nil, nil, nil, nil)))
	f.Fuzz(func(t *testing.T, relBytes, change []byte) {
		m, err := pgoutput.Parse(relBytes)
		if err != nil {
			return
		}
		rm, ok := m.(*pgoutput.Relation)
		if !ok {
			return
		}
		var pk []string
		for _, c := range rm.Columns {
			if c.Key {
				pk = append(pk, c.Name)
			}
		}
		r, err := newRelation(rm, pk)
		if err != nil {
			return
		}
		cm, err := pgoutput.Parse(change)
		if err != nil {
			return
		}
		var ev *sluicev1.ChangeEvent
		switch cm := cm.(type) {
		case *pgoutput.Insert:
			ev, err = r.Insert(newTx(), cm)
		case *pgoutput.Update:
			r.MissingToast(cm)
			ev, err = r.Update(newTx(), cm)
		case *pgoutput.Delete:
			ev, err = r.Delete(newTx(), cm)
		default:
			return
		}
		if err != nil {
			return
		}
		if !json.Valid(ev.Record) {
			t.Fatalf("record %q is not JSON", ev.Record)
		}
		if ev.Changes != nil && !json.Valid(ev.Changes) {
			t.Fatalf("changes %q are not JSON", ev.Changes)
		}
	})
}

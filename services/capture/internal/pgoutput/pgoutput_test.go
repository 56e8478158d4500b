package pgoutput

import (
	"encoding/binary"
	"errors"
	"reflect"
	"testing"
	"time"
)

// enc builds pgoutput messages for tests.
type enc []byte

func (e enc) u8(v uint8) enc   { return append(e, v) }
func (e enc) u16(v uint16) enc { return binary.BigEndian.AppendUint16(e, v) }
func (e enc) u32(v uint32) enc { return binary.BigEndian.AppendUint32(e, v) }
func (e enc) u64(v uint64) enc { return binary.BigEndian.AppendUint64(e, v) }
func (e enc) str(s string) enc { return append(append(e, s...), 0) }
func (e enc) tuple(vals ...any) enc {
	e = e.u16(uint16(len(vals)))
	for _, v := range vals {
		switch v := v.(type) {
		case nil:
			e = e.u8('n')
		case byte:
			e = e.u8(v)
		case string:
			e = e.u8('t').u32(uint32(len(v)))
			e = append(e, v...)
		}
	}
	return e
}

var (
	commitTime = time.Date(2026, 11, 25, 20, 0, 0, 123456000, time.UTC)
	pgCommit   = uint64(commitTime.UnixMicro() - pgEpoch)
)

func samples() map[string]enc {
	return map[string]enc{
		"begin":    enc{'B'}.u64(0x16B3748).u64(pgCommit).u32(771),
		"commit":   enc{'C'}.u8(0).u64(0x16B3748).u64(0x16B3778).u64(pgCommit),
		"origin":   enc{'O'}.u64(5).str("upstream"),
		"relation": enc{'R'}.u32(16384).str("public").str("users").u8('d').u16(2).u8(1).str("id").u32(23).u32(0xffffffff).u8(0).str("name").u32(25).u32(0xffffffff),
		"type":     enc{'Y'}.u32(16390).str("public").str("mood"),
		"insert":   enc{'I'}.u32(16384).u8('N').tuple("1", "Ann"),
		"update":   enc{'U'}.u32(16384).u8('N').tuple("1", byte('u')),
		"updateK":  enc{'U'}.u32(16384).u8('K').tuple("1", nil).u8('N').tuple("2", "Ann"),
		"updateO":  enc{'U'}.u32(16384).u8('O').tuple("1", "Ann").u8('N').tuple("1", "Bob"),
		"delete":   enc{'D'}.u32(16384).u8('K').tuple("1", nil),
		"truncate": enc{'T'}.u32(2).u8(1).u32(16384).u32(16385),
		"message":  append(enc{'M'}.u8(1).u64(0x99).str("sluice").u32(3), "abc"...),
	}
}

func TestParse(t *testing.T) {
	s := samples()
	want := map[string]Message{
		"begin":    &Begin{FinalLSN: 0x16B3748, CommitTime: commitTime, Xid: 771},
		"commit":   &Commit{CommitLSN: 0x16B3748, EndLSN: 0x16B3778, Time: commitTime},
		"origin":   &Origin{LSN: 5, Name: "upstream"},
		"relation": &Relation{ID: 16384, Namespace: "public", Name: "users", ReplicaIdentity: 'd', Columns: []Column{{true, "id", 23, -1}, {false, "name", 25, -1}}},
		"type":     &Type{OID: 16390, Namespace: "public", Name: "mood"},
		"insert":   &Insert{RelationID: 16384, New: Tuple{{'t', []byte("1")}, {'t', []byte("Ann")}}},
		"update":   &Update{RelationID: 16384, New: Tuple{{'t', []byte("1")}, {Kind: 'u'}}},
		"updateK":  &Update{RelationID: 16384, OldKind: 'K', Old: Tuple{{'t', []byte("1")}, {Kind: 'n'}}, New: Tuple{{'t', []byte("2")}, {'t', []byte("Ann")}}},
		"updateO":  &Update{RelationID: 16384, OldKind: 'O', Old: Tuple{{'t', []byte("1")}, {'t', []byte("Ann")}}, New: Tuple{{'t', []byte("1")}, {'t', []byte("Bob")}}},
		"delete":   &Delete{RelationID: 16384, OldKind: 'K', Old: Tuple{{'t', []byte("1")}, {Kind: 'n'}}},
		"truncate": &Truncate{Options: 1, RelationIDs: []uint32{16384, 16385}},
		"message":  &LogicalMessage{Transactional: true, LSN: 0x99, Prefix: "sluice", Content: []byte("abc")},
	}
	for name, b := range s {
		got, err := Parse(b)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !reflect.DeepEqual(got, want[name]) {
			t.Errorf("%s:\n got %#v\nwant %#v", name, got, want[name])
		}
		// Every proper prefix is truncated, and an error.
		for i := range len(b) {
			if _, err := Parse(b[:i]); err == nil {
				t.Errorf("%s: prefix of %d bytes parsed without error", name, i)
			}
		}
	}
}

func TestParseErrors(t *testing.T) {
	cases := map[string][]byte{
		"empty":        nil,
		"unknown type": {'Z', 0},
		"bad kind":     enc{'I'}.u32(1).u8('N').u16(1).u8('x'),
		"insert not N": enc{'I'}.u32(1).u8('K').tuple("1"),
		"huge tuple":   enc{'I'}.u32(1).u8('N').u16(60000),
		"huge value":   enc{'I'}.u32(1).u8('N').u16(1).u8('t').u32(1 << 31),
		"huge columns": enc{'R'}.u32(1).str("s").str("t").u8('d').u16(60000),
		"huge trunc":   enc{'T'}.u32(1 << 30).u8(0),
		"update kind":  enc{'U'}.u32(1).u8('X'),
		"delete kind":  enc{'D'}.u32(1).u8('N').tuple("1"),
	}
	for name, b := range cases {
		if m, err := Parse(b); err == nil {
			t.Errorf("%s: parsed as %#v", name, m)
		}
	}
	if _, err := Parse([]byte{'B', 1}); !errors.Is(err, ErrShort) {
		t.Errorf("short begin: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	for _, b := range samples() {
		f.Add([]byte(b))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Parse(b)
		if err != nil {
			return
		}
		// Whatever parses must only refer to bytes of the input.
		switch m := m.(type) {
		case *Insert:
			checkTuple(t, m.New, len(b))
		case *Update:
			checkTuple(t, m.Old, len(b))
			checkTuple(t, m.New, len(b))
		case *Delete:
			checkTuple(t, m.Old, len(b))
		}
	})
}

func checkTuple(t *testing.T, tup Tuple, max int) {
	for _, v := range tup {
		if len(v.Data) > max || (v.Kind == Text) != (v.Data != nil) && v.Kind != Binary {
			t.Fatalf("value %+v", v)
		}
	}
}

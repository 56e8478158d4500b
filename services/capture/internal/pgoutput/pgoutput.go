// Package pgoutput decodes the logical replication messages of Postgres's
// pgoutput plugin (protocol version 1).
//
// Decoding never copies column data: byte slices in the returned messages
// point into the input, which the caller must not reuse until it is done
// with the message. Malformed input is an error, never a panic.
package pgoutput

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// LSN is a WAL position.
type LSN uint64

func (l LSN) String() string { return fmt.Sprintf("%X/%X", uint32(l>>32), uint32(l)) }

// Message is one decoded pgoutput message.
type Message interface{ msg() }

// Begin starts a committed transaction.
type Begin struct {
	FinalLSN   LSN // the LSN of the commit record
	CommitTime time.Time
	Xid        uint32
}

// Commit ends a transaction.
type Commit struct {
	Flags     uint8
	CommitLSN LSN
	EndLSN    LSN // the end of the commit record: where a restart resumes
	Time      time.Time
}

// Origin names the origin of a transaction replayed from elsewhere.
type Origin struct {
	LSN  LSN
	Name string
}

// Column of a relation.
type Column struct {
	Key     bool // part of the replica identity
	Name    string
	TypeOID uint32
	TypeMod int32
}

// Relation describes a table; it precedes the first change of the table in a
// session and follows every change of its shape.
type Relation struct {
	ID              uint32
	Namespace       string
	Name            string
	ReplicaIdentity uint8 // 'd' default, 'n' nothing, 'f' full, 'i' index
	Columns         []Column
}

// Type describes a non-built-in data type used by a following relation.
type Type struct {
	OID       uint32
	Namespace string
	Name      string
}

// Kinds of tuple values.
const (
	Null      = 'n'
	Unchanged = 'u' // an unchanged TOAST value that was not sent
	Text      = 't'
	Binary    = 'b'
)

// Value is one column of a tuple.
type Value struct {
	Kind byte
	Data []byte
}

// Tuple is a row image.
type Tuple []Value

// Insert is a new row.
type Insert struct {
	RelationID uint32
	New        Tuple
}

// Update is a changed row. Old is the key before the change ('K', sent when
// the key changed) or the whole old row ('O', under REPLICA IDENTITY FULL),
// or nil.
type Update struct {
	RelationID uint32
	OldKind    byte
	Old        Tuple
	New        Tuple
}

// Delete is a removed row: its key ('K') or whole old row ('O').
type Delete struct {
	RelationID uint32
	OldKind    byte
	Old        Tuple
}

// Truncate empties tables.
type Truncate struct {
	Options     uint8 // 1: CASCADE, 2: RESTART IDENTITY
	RelationIDs []uint32
}

// LogicalMessage is a message written by pg_logical_emit_message.
type LogicalMessage struct {
	Transactional bool
	LSN           LSN
	Prefix        string
	Content       []byte
}

func (*Begin) msg()          {}
func (*Commit) msg()         {}
func (*Origin) msg()         {}
func (*Relation) msg()       {}
func (*Type) msg()           {}
func (*Insert) msg()         {}
func (*Update) msg()         {}
func (*Delete) msg()         {}
func (*Truncate) msg()       {}
func (*LogicalMessage) msg() {}

// ErrShort is returned for a message that ends before its fields do.
var ErrShort = errors.New("pgoutput: message truncated")

// Parse decodes one message.
func Parse(b []byte) (Message, error) {
	if len(b) == 0 {
		return nil, ErrShort
	}
	r := reader{b: b[1:]}
	var m Message
	switch b[0] {
	case 'B':
		m = &Begin{FinalLSN: LSN(r.u64()), CommitTime: pgTime(r.u64()), Xid: r.u32()}
	case 'C':
		m = &Commit{Flags: r.u8(), CommitLSN: LSN(r.u64()), EndLSN: LSN(r.u64()), Time: pgTime(r.u64())}
	case 'O':
		m = &Origin{LSN: LSN(r.u64()), Name: r.str()}
	case 'R':
		rel := &Relation{ID: r.u32(), Namespace: r.str(), Name: r.str(), ReplicaIdentity: r.u8()}
		n := int(r.u16())
		if r.err == nil && n > len(r.b) {
			r.err = ErrShort
		}
		if r.err == nil {
			rel.Columns = make([]Column, n)
			for i := range rel.Columns {
				rel.Columns[i] = Column{Key: r.u8()&1 == 1, Name: r.str(), TypeOID: r.u32(), TypeMod: int32(r.u32())}
			}
		}
		m = rel
	case 'Y':
		m = &Type{OID: r.u32(), Namespace: r.str(), Name: r.str()}
	case 'I':
		ins := &Insert{RelationID: r.u32()}
		r.expect('N')
		ins.New = r.tuple()
		m = ins
	case 'U':
		up := &Update{RelationID: r.u32()}
		switch kind := r.u8(); kind {
		case 'K', 'O':
			up.OldKind, up.Old = kind, r.tuple()
			r.expect('N')
		case 'N':
		default:
			r.fail(fmt.Errorf("pgoutput: update: unexpected tuple kind %q", kind))
		}
		up.New = r.tuple()
		m = up
	case 'D':
		del := &Delete{RelationID: r.u32()}
		switch kind := r.u8(); kind {
		case 'K', 'O':
			del.OldKind, del.Old = kind, r.tuple()
		default:
			r.fail(fmt.Errorf("pgoutput: delete: unexpected tuple kind %q", kind))
		}
		m = del
	case 'T':
		n := int(r.u32())
		t := &Truncate{Options: r.u8()}
		if r.err == nil && n > len(r.b)/4 {
			r.err = ErrShort
		}
		if r.err == nil {
			t.RelationIDs = make([]uint32, n)
			for i := range t.RelationIDs {
				t.RelationIDs[i] = r.u32()
			}
		}
		m = t
	case 'M':
		lm := &LogicalMessage{Transactional: r.u8()&1 == 1, LSN: LSN(r.u64()), Prefix: r.str()}
		lm.Content = r.bytes(int(r.u32()))
		m = lm
	default:
		return nil, fmt.Errorf("pgoutput: unknown message type %q", b[0])
	}
	if r.err != nil {
		return nil, r.err
	}
	return m, nil
}

// Postgres timestamps count microseconds from 2000-01-01 UTC.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC).UnixMicro()

func pgTime(us uint64) time.Time { return time.UnixMicro(pgEpoch + int64(us)).UTC() }

// reader consumes big-endian fields; after the first error every read
// returns zero values and the error sticks.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
	r.b = nil
}

func (r *reader) take(n int) []byte {
	if r.err != nil || n < 0 || len(r.b) < n {
		r.fail(ErrShort)
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u8() uint8 {
	if v := r.take(1); v != nil {
		return v[0]
	}
	return 0
}

func (r *reader) u16() uint16 {
	if v := r.take(2); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

func (r *reader) u32() uint32 {
	if v := r.take(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if v := r.take(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (r *reader) bytes(n int) []byte { return r.take(n) }

// str reads a NUL-terminated string.
func (r *reader) str() string {
	if r.err != nil {
		return ""
	}
	for i, c := range r.b {
		if c == 0 {
			s := string(r.b[:i])
			r.b = r.b[i+1:]
			return s
		}
	}
	r.fail(ErrShort)
	return ""
}

func (r *reader) expect(c byte) {
	if got := r.u8(); r.err == nil && got != c {
		r.fail(fmt.Errorf("pgoutput: expected tuple kind %q, got %q", c, got))
	}
}

func (r *reader) tuple() Tuple {
	n := int(r.u16())
	if r.err != nil {
		return nil
	}
	if n > len(r.b) { // every value takes at least one byte
		r.fail(ErrShort)
		return nil
	}
	t := make(Tuple, n)
	for i := range t {
		switch kind := r.u8(); kind {
		case Null, Unchanged:
			t[i].Kind = kind
		case Text, Binary:
			t[i] = Value{Kind: kind, Data: r.bytes(int(r.u32()))}
			if t[i].Data == nil && r.err == nil {
				t[i].Data = []byte{}
			}
		default:
			if r.err == nil {
				r.fail(fmt.Errorf("pgoutput: unknown value kind %q", kind))
			}
			return nil
		}
	}
	return t
}

package change

import (
	"errors"
	"fmt"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"

	sluicev1 "github.com/sluicehq/sluice/proto/sluice/v1"
)

// A batch (sluicev1.ChangeBatch) is encoded and decoded here by hand, field
// by field, to the same bytes protobuf's reflection gives: in a catch-up
// that reflection was a seventh of capture's CPU and of the writer's.
// FuzzEvents holds both to the generated code.

// The field numbers of ChangeEvent (proto/sluice/v1/change.proto).
const (
	fIdempotencyKey protowire.Number = iota + 1
	fAction
	fDatabase
	fSchema
	fTable
	fPKColumns
	fPKValues
	fRecord
	fChanges
	fOldPKValues
	fCommitLSN
	fCommitIdx
	fCommitTimestampUs
	fBackfillID
	fUnchangedToastColumns
	fBackfillSink
	fHost
	fTransactionAnnotations
)

// errInvalidUTF8 is protobuf's refusal of a string field that is not UTF-8.
var errInvalidUTF8 = errors.New("string field contains invalid UTF-8")

// AppendEvent appends ev to the encoding of a ChangeBatch: a batch is its
// events' encodings, each as field 1, so batches grow without re-encoding.
// On an error (a string that is not UTF-8) the batch is returned as it
// was.
func AppendEvent(batch []byte, ev *sluicev1.ChangeEvent) ([]byte, error) {
	if err := checkStrings(ev); err != nil {
		return batch, fmt.Errorf("encode change: %w", err)
	}
	batch = protowire.AppendTag(batch, 1, protowire.BytesType)
	// The event is encoded first and its length put before it, shifting
	// it by the length's few bytes: sizing it beforehand would walk every
	// field twice.
	at := len(batch)
	batch = appendEvent(batch, ev)
	n := uint64(len(batch) - at)
	size := protowire.SizeVarint(n)
	batch = append(batch, make([]byte, size)...)
	copy(batch[at+size:], batch[at:len(batch)-size])
	protowire.AppendVarint(batch[at:at], n)
	return batch, nil
}

// appendEvent appends ev's fields in field order, leaving out the zero
// values of singular fields, as protobuf does.
func appendEvent(b []byte, ev *sluicev1.ChangeEvent) []byte {
	b = appendString(b, fIdempotencyKey, ev.IdempotencyKey)
	if ev.Action != 0 {
		b = protowire.AppendTag(b, fAction, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(int64(ev.Action)))
	}
	b = appendString(b, fDatabase, ev.Database)
	b = appendString(b, fSchema, ev.Schema)
	b = appendString(b, fTable, ev.Table)
	b = appendStrings(b, fPKColumns, ev.PkColumns)
	b = appendStrings(b, fPKValues, ev.PkValues)
	b = appendBytes(b, fRecord, ev.Record)
	b = appendBytes(b, fChanges, ev.Changes)
	b = appendStrings(b, fOldPKValues, ev.OldPkValues)
	b = appendVarint(b, fCommitLSN, ev.CommitLsn)
	b = appendVarint(b, fCommitIdx, uint64(ev.CommitIdx))
	b = appendVarint(b, fCommitTimestampUs, uint64(ev.CommitTimestampUs))
	b = appendString(b, fBackfillID, ev.BackfillId)
	b = appendStrings(b, fUnchangedToastColumns, ev.UnchangedToastColumns)
	b = appendString(b, fBackfillSink, ev.BackfillSink)
	b = appendString(b, fHost, ev.Host)
	return appendString(b, fTransactionAnnotations, ev.TransactionAnnotations)
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// appendStrings appends every element of a repeated field, empty ones too.
func appendStrings(b []byte, num protowire.Number, ss []string) []byte {
	for _, s := range ss {
		b = protowire.AppendTag(b, num, protowire.BytesType)
		b = protowire.AppendString(b, s)
	}
	return b
}

func appendBytes(b []byte, num protowire.Number, v []byte) []byte {
	if len(v) == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

func appendVarint(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

// checkStrings refuses what protobuf refuses to encode: a string field that
// is not UTF-8.
func checkStrings(ev *sluicev1.ChangeEvent) error {
	for _, s := range [...]string{ev.IdempotencyKey, ev.Database, ev.Schema, ev.Table, ev.BackfillId, ev.BackfillSink, ev.Host, ev.TransactionAnnotations} {
		if !utf8.ValidString(s) {
			return errInvalidUTF8
		}
	}
	for _, ss := range [...][]string{ev.PkColumns, ev.PkValues, ev.OldPkValues, ev.UnchangedToastColumns} {
		for _, s := range ss {
			if !utf8.ValidString(s) {
				return errInvalidUTF8
			}
		}
	}
	return nil
}

// Events decodes a stream message: a ChangeBatch. The events' Record and
// Changes are slices of data, which must not change while they are used.
func Events(data []byte) ([]*sluicev1.ChangeEvent, error) {
	evs := make([]*sluicev1.ChangeEvent, 0, max(CountEvents(data), 0))
	var prev *sluicev1.ChangeEvent // whose strings the next event likely repeats
	for len(data) > 0 {
		num, typ, n := consumeTag(data)
		if n < 0 {
			return nil, decodeError(n)
		}
		data = data[n:]
		if num != 1 || typ != protowire.BytesType {
			if n = protowire.ConsumeFieldValue(num, typ, data); n < 0 {
				return nil, decodeError(n)
			}
			data = data[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(data)
		if n < 0 {
			return nil, decodeError(n)
		}
		data = data[n:]
		ev := &sluicev1.ChangeEvent{}
		if err := decodeEvent(ev, v, prev); err != nil {
			return nil, err
		}
		evs = append(evs, ev)
		prev = ev
	}
	return evs, nil
}

// decodeEvent decodes one event's fields into ev, as protobuf would: the
// last of a singular field's values wins, a field of an unknown number or
// of another wire type is skipped, a string must be UTF-8. Strings equal to
// prev's are prev's, not copies.
func decodeEvent(ev *sluicev1.ChangeEvent, b []byte, prev *sluicev1.ChangeEvent) error {
	if prev == nil {
		prev = &sluicev1.ChangeEvent{}
	}
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return decodeError(n)
		}
		b = b[n:]
		var v []byte
		var x uint64
		switch typ {
		case protowire.BytesType:
			v, n = protowire.ConsumeBytes(b)
		case protowire.VarintType:
			x, n = protowire.ConsumeVarint(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return decodeError(n)
		}
		b = b[n:]
		var err error
		switch {
		case typ == protowire.VarintType:
			switch num {
			case fAction:
				ev.Action = sluicev1.Action(int32(x))
			case fCommitLSN:
				ev.CommitLsn = x
			case fCommitIdx:
				ev.CommitIdx = uint32(x)
			case fCommitTimestampUs:
				ev.CommitTimestampUs = int64(x)
			}
		case typ != protowire.BytesType:
		case num == fIdempotencyKey:
			ev.IdempotencyKey, err = text(v, "")
		case num == fDatabase:
			ev.Database, err = text(v, prev.Database)
		case num == fSchema:
			ev.Schema, err = text(v, prev.Schema)
		case num == fTable:
			ev.Table, err = text(v, prev.Table)
		case num == fPKColumns:
			ev.PkColumns, err = appendText(ev.PkColumns, v, prev.PkColumns)
		case num == fPKValues:
			ev.PkValues, err = appendText(ev.PkValues, v, nil)
		case num == fRecord:
			ev.Record = nonEmpty(v)
		case num == fChanges:
			ev.Changes = nonEmpty(v)
		case num == fOldPKValues:
			ev.OldPkValues, err = appendText(ev.OldPkValues, v, nil)
		case num == fBackfillID:
			ev.BackfillId, err = text(v, prev.BackfillId)
		case num == fUnchangedToastColumns:
			ev.UnchangedToastColumns, err = appendText(ev.UnchangedToastColumns, v, nil)
		case num == fBackfillSink:
			ev.BackfillSink, err = text(v, prev.BackfillSink)
		case num == fHost:
			ev.Host, err = text(v, prev.Host)
		case num == fTransactionAnnotations:
			ev.TransactionAnnotations, err = text(v, prev.TransactionAnnotations)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// text is v as a string: same, when it reads the same, else a copy.
func text(v []byte, same string) (string, error) {
	if string(v) == same {
		return same, nil
	}
	if !utf8.Valid(v) {
		return "", fmt.Errorf("decode change batch: %w", errInvalidUTF8)
	}
	return string(v), nil
}

// appendText appends v to a repeated string field, reusing the element at
// the same place in same when it reads the same.
func appendText(ss []string, v []byte, same []string) ([]string, error) {
	s := ""
	if len(ss) < len(same) {
		s = same[len(ss)]
	}
	s, err := text(v, s)
	return append(ss, s), err
}

// nonEmpty is v, or nil when it is empty, as protobuf decodes an empty
// bytes field of proto3.
func nonEmpty(v []byte) []byte {
	if len(v) == 0 {
		return nil
	}
	return v[:len(v):len(v)]
}

// consumeTag is protowire.ConsumeTag, refusing field numbers past the
// largest valid one, as protobuf does.
func consumeTag(b []byte) (protowire.Number, protowire.Type, int) {
	num, typ, n := protowire.ConsumeTag(b)
	if n >= 0 && num > protowire.MaxValidNumber {
		return 0, 0, -1
	}
	return num, typ, n
}

func decodeError(n int) error {
	return fmt.Errorf("decode change batch: %w", protowire.ParseError(n))
}

// CountEvents counts the events of an encoded ChangeBatch without decoding
// them; -1 when it is malformed.
func CountEvents(data []byte) int {
	n := 0
	for len(data) > 0 {
		num, typ, l := consumeTag(data)
		if l < 0 {
			return -1
		}
		data = data[l:]
		l = protowire.ConsumeFieldValue(num, typ, data)
		if l < 0 {
			return -1
		}
		data = data[l:]
		if num == 1 {
			n++
		}
	}
	return n
}

package change

import (
	"strconv"
	"time"
	"unicode/utf8"
	"unsafe"

	sluicev1 "github.com/sluicehq/sluice/proto/sluice/v1"
)

// AppendMessage appends the event as Sequin's message JSON:
//
//	{"action":"insert","changes":{...}|null,"metadata":{"commit_idx":0,"commit_lsn":…,…},"record":{...}}
//
// record and changes are embedded as capture rendered them. JSON objects
// are unordered, and Sequin's own key order varies from build to build
// (its VM orders atom keys by an internal index); Sluice sorts the keys,
// which puts the change's version (commit_idx, commit_lsn) within the
// value's first bytes, where Redis reads it back.
func AppendMessage(dst []byte, ev *sluicev1.ChangeEvent, c Consumer) []byte {
	dst = append(dst, `{"action":"`...)
	dst = append(dst, Action(ev.Action)...)
	dst = append(dst, `","changes":`...)
	dst = appendRaw(dst, ev.Changes, "null")
	dst = append(dst, `,"metadata":{"commit_idx":`...)
	dst = strconv.AppendUint(dst, uint64(ev.CommitIdx), 10)
	dst = append(dst, `,"commit_lsn":`...)
	dst = strconv.AppendUint(dst, ev.CommitLsn, 10)
	dst = append(dst, `,"commit_timestamp":"`...)
	dst = AppendTimestamp(dst, ev.CommitTimestampUs)
	dst = append(dst, `","consumer":{"id":`...)
	dst = AppendString(dst, c.ID)
	dst = append(dst, `,"name":`...)
	dst = AppendString(dst, c.Name)
	dst = append(dst, `},"database_name":`...)
	dst = AppendString(dst, ev.Database)
	dst = append(dst, `,"idempotency_key":`...)
	dst = AppendString(dst, ev.IdempotencyKey)
	dst = append(dst, `,"record_pks":[`...)
	for i, v := range ev.PkValues {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = AppendString(dst, v)
	}
	dst = append(dst, `],"table_name":`...)
	dst = AppendString(dst, ev.Table)
	dst = append(dst, `,"table_schema":`...)
	dst = AppendString(dst, ev.Schema)
	dst = append(dst, `,"transaction_annotations":null},"record":`...)
	dst = appendRaw(dst, ev.Record, "{}")
	return append(dst, '}')
}

func appendRaw(dst, raw []byte, empty string) []byte {
	if len(raw) == 0 {
		return append(dst, empty...)
	}
	return append(dst, raw...)
}

// AppendTimestamp appends microseconds since the Unix epoch as
// "2026-11-25T20:00:00.123456Z": UTC, always six fractional digits.
func AppendTimestamp(dst []byte, us int64) []byte {
	return time.UnixMicro(us).UTC().AppendFormat(dst, "2006-01-02T15:04:05.000000Z")
}

// AppendBytes is AppendString of b, without copying it.
func AppendBytes(dst, b []byte) []byte {
	return AppendString(dst, unsafe.String(unsafe.SliceData(b), len(b))) // AppendString does not keep s
}

// AppendString appends s as a JSON string, escaped as Sequin's encoder does:
// '"', '\\' and \b \f \n \r \t get short escapes, other control characters
// \u00XX; everything else, '/' and non-ASCII included, is written as is.
// Invalid UTF-8 becomes U+FFFD so that the result is always valid JSON.
func AppendString(dst []byte, s string) []byte {
	const hex = "0123456789ABCDEF"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r != utf8.RuneError || size != 1 {
				i += size
				continue
			}
			dst = append(dst, s[start:i]...)
			dst = append(dst, "\ufffd"...)
			i++
			start = i
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\b':
			dst = append(dst, '\\', 'b')
		case '\f':
			dst = append(dst, '\\', 'f')
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		i++
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

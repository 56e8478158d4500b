package change

import (
	"bytes"
	"encoding/json"
	"slices"
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
func AppendMessage(dst []byte, ev *sluicev1.ChangeEvent, c Consumer, db *Database) []byte {
	// Room for all of it at once (the metadata's names and ids are about
	// 450 bytes): growing as it goes was a writer's largest allocation.
	dst = slices.Grow(dst, 512+len(ev.Changes)+len(ev.Record)+len(ev.TransactionAnnotations)+
		len(c.Annotations)+len(db.Annotations)+len(ev.Host)+len(ev.Database)+len(ev.IdempotencyKey)+16*len(ev.PkValues))
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
	dst = append(dst, db.origin(c, ev)...)
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
	dst = append(dst, `,"transaction_annotations":`...)
	dst = AppendAnnotations(dst, ev.TransactionAnnotations)
	dst = append(dst, `},"record":`...)
	dst = appendRaw(dst, ev.Record, "{}")
	return append(dst, '}')
}

// AppendAnnotations appends transaction annotations as Sequin renders
// them: the JSON they hold, compacted, or null when there are none or they
// are not valid JSON.
func AppendAnnotations(dst []byte, annotations string) []byte {
	if annotations == "" || !json.Valid([]byte(annotations)) {
		return append(dst, "null"...)
	}
	var b bytes.Buffer
	_ = json.Compact(&b, []byte(annotations))
	return append(dst, b.Bytes()...)
}

// origin is the part of the metadata between the commit timestamp and the
// idempotency key, which names the consumer and the database: the same
// for every change of one database and host, so it is rendered once for
// them and kept.
func (d *Database) origin(c Consumer, ev *sluicev1.ChangeEvent) []byte {
	k := &d.originOf
	if d.originJSON != nil && k.consumerID == c.ID && k.consumerName == c.Name && k.consumerAnnotations == string(c.Annotations) &&
		k.name == d.Name && k.annotations == string(d.Annotations) && k.database == ev.Database && k.host == ev.Host {
		return d.originJSON
	}
	dst := append(d.originJSON[:0], `","consumer":{"annotations":`...)
	dst = append(dst, c.Annotations...)
	dst = append(dst, `,"id":`...)
	dst = AppendString(dst, c.ID)
	dst = append(dst, `,"name":`...)
	dst = AppendString(dst, c.Name)
	name, id := d.NameAndID(ev.Database)
	dst = append(dst, `},"database":{"annotations":`...)
	dst = append(dst, d.Annotations...)
	dst = append(dst, `,"database":`...)
	dst = AppendString(dst, ev.Database)
	dst = append(dst, `,"hostname":`...)
	dst = AppendString(dst, ev.Host)
	dst = append(dst, `,"id":`...)
	dst = AppendString(dst, id)
	dst = append(dst, `,"name":`...)
	dst = AppendString(dst, name)
	dst = append(dst, `},"database_name":`...)
	dst = AppendString(dst, name)
	dst = append(dst, `,"enrichment":null,"idempotency_key":`...)
	d.originJSON = dst
	d.originOf = originKey{c.ID, c.Name, string(c.Annotations), d.Name, string(d.Annotations), ev.Database, ev.Host}
	return dst
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
	t := time.UnixMicro(us).UTC()
	year, month, day := t.Date()
	if year < 0 || year > 9999 {
		return t.AppendFormat(dst, "2006-01-02T15:04:05.000000Z")
	}
	// By hand: time's layout interpreter was a twentieth of a writer's CPU.
	hour, minute, second := t.Clock()
	dst = appendDigits(dst, year, 4)
	dst = append(dst, '-')
	dst = appendDigits(dst, int(month), 2)
	dst = append(dst, '-')
	dst = appendDigits(dst, day, 2)
	dst = append(dst, 'T')
	dst = appendDigits(dst, hour, 2)
	dst = append(dst, ':')
	dst = appendDigits(dst, minute, 2)
	dst = append(dst, ':')
	dst = appendDigits(dst, second, 2)
	dst = append(dst, '.')
	dst = appendDigits(dst, t.Nanosecond()/1000, 6)
	return append(dst, 'Z')
}

// appendDigits appends v, 0 ≤ v < 10^width, in width digits.
func appendDigits(dst []byte, v, width int) []byte {
	n := len(dst) + width
	dst = slices.Grow(dst, width)[:n]
	for i := n - 1; i >= n-width; i-- {
		dst[i] = byte('0' + v%10)
		v /= 10
	}
	return dst
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

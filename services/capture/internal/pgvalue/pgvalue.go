// Package pgvalue renders Postgres values, in the text format pgoutput sends
// them, as JSON the way Sequin does:
//
//	bool → true/false; int2/4/8, oid → number; float4/8 → number
//	(NaN/±Infinity → string); json/jsonb → embedded JSON; arrays → JSON
//	arrays of their elements, any number of dimensions, NULL → null;
//	timestamptz → "2026-11-25T20:00:00.123456Z"; timestamp →
//	"2026-11-25T20:00:00.123456"; interval →
//	{"months","days","microseconds"}; a domain → as its base type;
//	everything else → the value's text as a string: numeric (NaN and
//	±Infinity too) and money exactly as Postgres writes them, bytea as
//	"\\x…", date, time, timetz, ±infinity timestamps, uuid, network and bit
//	strings, xml, text search, geometric types, ranges, multiranges, enums,
//	composites and unknown types.
//
// The text formats depend on session settings, which capture fixes on its
// connections (see SessionParams).
//
// A value that does not look like its type's output is rendered as a string,
// so the result is always valid JSON.
package pgvalue

import (
	"bytes"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/pkg/change"
)

// SessionParams are the settings whose output formats the renderer parses.
var SessionParams = map[string]string{
	"DateStyle":          "ISO, MDY",
	"TimeZone":           "UTC",
	"IntervalStyle":      "iso_8601",
	"extra_float_digits": "3",
	"bytea_output":       "hex",
}

// Type is how the values of one Postgres type render. Types are immutable
// and shared; a column's Type is resolved once, when its relation arrives.
type Type struct {
	kind  kind
	elem  *Type // of an array
	delim byte  // separates values of this type inside an array
}

type kind uint8

const (
	kindString kind = iota
	kindBool
	kindInt
	kindFloat
	kindJSON
	kindTimestamp
	kindTimestamptz
	kindInterval
	kindArray
)

// Text renders values as JSON strings: enums, ranges, composites and every
// type the renderer does not know.
var Text = &Type{kind: kindString, delim: ','}

// Append appends the JSON of a value of type oid, given in text format. A
// type that is not built in renders as Text; see Types for the others.
func Append(dst []byte, oid uint32, text []byte) []byte {
	t, ok := Builtin(oid)
	if !ok {
		t = Text
	}
	return t.Append(dst, text)
}

// Append appends the JSON of a value of type t, given in text format.
func (t *Type) Append(dst, text []byte) []byte {
	switch t.kind {
	case kindArray:
		return appendArray(dst, t.elem, text)
	case kindBool:
		switch string(text) {
		case "t":
			return append(dst, "true"...)
		case "f":
			return append(dst, "false"...)
		}
	case kindInt, kindFloat:
		if isNumber(text) {
			return append(dst, text...)
		}
	case kindJSON:
		if validJSON(text) {
			return append(dst, text...)
		}
	case kindTimestamptz:
		if out, ok := appendTimestamptz(dst, text); ok {
			return out
		}
	case kindTimestamp:
		if out, ok := appendTimestamp(dst, text); ok {
			return out
		}
	case kindInterval:
		if out, ok := appendInterval(dst, text); ok {
			return out
		}
	}
	return change.AppendBytes(dst, text)
}

// isNumber reports whether b is a JSON number. Postgres writes the special
// floats as NaN and Infinity, which JSON lacks; those become strings.
func isNumber(b []byte) bool { return numberEnd(b, 0) == len(b) }

// numberEnd returns where the JSON number at b[i] ends,
// -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?, or -1 when none is there.
func numberEnd(b []byte, i int) int {
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		i = skipDigits(b, i)
	default:
		return -1
	}
	if i < len(b) && b[i] == '.' {
		j := skipDigits(b, i+1)
		if j == i+1 {
			return -1
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := skipDigits(b, i)
		if j == i {
			return -1
		}
		i = j
	}
	return i
}

// skipDigits returns the index of the first non-digit at or after i.
func skipDigits(b []byte, i int) int {
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return i
}

// appendTimestamptz turns "2026-11-25 20:00:00.1+00" into
// "2026-11-25T20:00:00.100000Z". Infinities and BC dates stay as text.
func appendTimestamptz(dst, s []byte) ([]byte, bool) {
	date, clock, ok := splitTimestamp(s)
	if !ok {
		return dst, false
	}
	off := bytes.LastIndexAny(clock, "+-")
	if off < 0 {
		return dst, false
	}
	if string(clock[off:]) != "+00" {
		// Not UTC: the session's TimeZone was not applied; convert.
		t, err := time.Parse("2006-01-02 15:04:05.999999-07:00:00", string(date)+" "+string(clock[:off])+normOffset(clock[off:]))
		if err != nil {
			return dst, false
		}
		return t.UTC().AppendFormat(append(dst, '"'), "2006-01-02T15:04:05.000000Z\""), true
	}
	return appendISO(dst, date, clock[:off], "Z")
}

// appendTimestamp turns "2026-11-25 20:00:00.1" into "2026-11-25T20:00:00.100000".
func appendTimestamp(dst, s []byte) ([]byte, bool) {
	date, clock, ok := splitTimestamp(s)
	if !ok {
		return dst, false
	}
	return appendISO(dst, date, clock, "")
}

// appendISO writes "<date>T<clock with six fractional digits><zone>" quoted.
func appendISO(dst, date, clock []byte, zone string) ([]byte, bool) {
	dst = append(dst, '"')
	dst = append(dst, date...)
	dst = append(dst, 'T')
	dst, ok := appendClock(dst, clock)
	dst = append(dst, zone...)
	return append(dst, '"'), ok
}

func splitTimestamp(s []byte) (date, clock []byte, ok bool) {
	date, clock, ok = bytes.Cut(s, []byte{' '})
	if !ok || !isDate(date) || bytes.IndexByte(clock, ' ') >= 0 { // " BC"
		return nil, nil, false
	}
	return date, clock, true
}

// appendClock writes HH:MM:SS with six fractional digits.
func appendClock(dst, clock []byte) ([]byte, bool) {
	whole, frac, _ := bytes.Cut(clock, []byte{'.'})
	if !matches(whole, "00:00:00") || len(frac) > 6 || !digits(frac) {
		return dst, false
	}
	dst = append(dst, whole...)
	dst = append(dst, '.')
	dst = append(dst, frac...)
	for range 6 - len(frac) {
		dst = append(dst, '0')
	}
	return dst, true
}

// isDate matches YYYY-MM-DD, with four or more year digits.
func isDate(b []byte) bool {
	return len(b) >= 10 && digits(b[:len(b)-6]) && matches(b[len(b)-6:], "-00-00")
}

// matches reports whether b has the shape of pattern, '0' standing for a digit.
func matches(b []byte, pattern string) bool {
	if len(b) != len(pattern) {
		return false
	}
	for i, c := range b {
		if p := pattern[i]; p == '0' && (c < '0' || c > '9') || p != '0' && c != p {
			return false
		}
	}
	return true
}

func normOffset(off []byte) string {
	s := string(off)
	switch len(s) {
	case 3:
		return s + ":00:00"
	case 6:
		return s + ":00"
	}
	return s
}

func digits(b []byte) bool {
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// appendInterval turns ISO 8601 intervals ("P1Y2M3DT4H5M6.5S",
// IntervalStyle iso_8601) into {"months":14,"days":3,"microseconds":14706500000}.
func appendInterval(dst, s []byte) ([]byte, bool) {
	if len(s) < 2 || s[0] != 'P' {
		return dst, false
	}
	var months, days, us int64
	inTime := false
	for i := 1; i < len(s); {
		if s[i] == 'T' {
			inTime = true
			i++
			continue
		}
		j := i
		for j < len(s) && (s[j] == '-' || s[j] == '.' || s[j] >= '0' && s[j] <= '9') {
			j++
		}
		if j == i || j == len(s) {
			return dst, false
		}
		num := string(s[i:j])
		unit := s[j]
		i = j + 1
		if unit == 'S' {
			v, ok := parseMicros(num)
			if !ok {
				return dst, false
			}
			us += v
			continue
		}
		n, err := strconv.ParseInt(num, 10, 64)
		if err != nil {
			return dst, false
		}
		switch {
		case !inTime && unit == 'Y':
			months += n * 12
		case !inTime && unit == 'M':
			months += n
		case !inTime && unit == 'W':
			days += n * 7
		case !inTime && unit == 'D':
			days += n
		case inTime && unit == 'H':
			us += n * 3600e6
		case inTime && unit == 'M':
			us += n * 60e6
		default:
			return dst, false
		}
	}
	dst = append(dst, `{"months":`...)
	dst = strconv.AppendInt(dst, months, 10)
	dst = append(dst, `,"days":`...)
	dst = strconv.AppendInt(dst, days, 10)
	dst = append(dst, `,"microseconds":`...)
	dst = strconv.AppendInt(dst, us, 10)
	return append(dst, '}'), true
}

// parseMicros parses seconds such as "-6.789" into microseconds, exactly.
func parseMicros(s string) (int64, bool) {
	neg := strings.HasPrefix(s, "-")
	if neg {
		s = s[1:]
	}
	whole, frac, _ := strings.Cut(s, ".")
	if whole == "" || len(frac) > 6 || !digits([]byte(whole)) || !digits([]byte(frac)) {
		return 0, false
	}
	w, err := strconv.ParseInt(whole, 10, 64)
	if err != nil || w > (1<<62)/1000000 {
		return 0, false
	}
	f, _ := strconv.ParseInt((frac + "000000")[:6], 10, 64)
	v := w*1e6 + f
	if neg {
		v = -v
	}
	return v, true
}

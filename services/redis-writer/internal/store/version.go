package store

import (
	"fmt"
	"strconv"
)

// These read versions as apply.lua does, for transactions (see
// transaction.go): what one of them decides must be what the script
// would, so FuzzMessageVersion holds them to the script's own reading.

// head is how much of a value is read first to find its version.
const head = 256

// headState is what a value's head says of its version.
type headState int

const (
	noVersion headState = iota // not a message value: its record holds its version
	versioned                  // a message value, carrying its version
	cut                        // the head ends before the version: read the whole value
)

// messageVersion is the version a message value, or its head, carries
// (the script's message()).
func messageVersion(s []byte) (string, headState) {
	p, ok := after(s, 0, `{"action":"`)
	if !ok {
		return "", noVersion
	}
	q := p
	for q < len(s) && (s[q] >= 'a' && s[q] <= 'z' || s[q] >= 'A' && s[q] <= 'Z') {
		q++
	}
	if q == p {
		return "", noVersion
	}
	if p, ok = after(s, q, `","changes":`); !ok {
		return "", noVersion
	}
	switch {
	case hasAt(s, p, "null,"):
		p += 5
	case hasAt(s, p, "{},"):
		p += 3
	case p < len(s) && s[p] == '{':
		end, ok := skipObject(s, p)
		if !ok {
			return "", cut
		}
		p = end + 2 // past the '}' and the comma, which the script does not check
	default:
		return "", noVersion
	}
	idx, lsn, ok := metadata(s, p)
	if !ok {
		// A head cut anywhere in the metadata's first fields fails to
		// match: the whole value is read rather than guessing.
		if len(s) >= head {
			return "", cut
		}
		return "", noVersion
	}
	if v, ok := padded(lsn, idx); ok {
		return v, versioned
	}
	return "", noVersion
}

// metadata matches `"metadata":{"commit_idx":I,"commit_lsn":L,` at p.
func metadata(s []byte, p int) (idx, lsn []byte, ok bool) {
	if p, ok = after(s, p, `"metadata":{"commit_idx":`); !ok {
		return nil, nil, false
	}
	if idx, p = digits(s, p); idx == nil {
		return nil, nil, false
	}
	if p, ok = after(s, p, `,"commit_lsn":`); !ok {
		return nil, nil, false
	}
	if lsn, p = digits(s, p); lsn == nil || !hasAt(s, p, ",") {
		return nil, nil, false
	}
	return idx, lsn, true
}

// padded is the version of a commit LSN and index in decimal (the
// script's version()); false when they are too long to be one.
func padded(lsn, idx []byte) (string, bool) {
	if len(lsn) > 20 || len(idx) > 10 {
		return "", false
	}
	b := make([]byte, 0, 30)
	for range 20 - len(lsn) {
		b = append(b, '0')
	}
	b = append(b, lsn...)
	for range 10 - len(idx) {
		b = append(b, '0')
	}
	return string(append(b, idx...)), true
}

// skipObject returns the index of the '}' closing the JSON object that
// opens at p, counting braces outside strings as the script does; false
// when s ends first.
func skipObject(s []byte, p int) (int, bool) {
	depth := 0
	for i := p; i < len(s); i++ {
		switch s[i] {
		case '"':
			for {
				i++
				for i < len(s) && s[i] != '"' {
					i++
				}
				if i >= len(s) {
					return 0, false
				}
				b := i - 1
				for s[b] == '\\' {
					b--
				}
				if (i-1-b)%2 == 0 {
					break
				}
			}
		case '{':
			depth++
		case '}':
			depth--
			if depth == 0 {
				return i, true
			}
		}
	}
	return 0, false
}

// recordVersion reads a version record (the script's record()): this
// release's 30 digits, or an earlier one's 24 hex digits. known is false
// for a record the script might read otherwise, which is left to it.
func recordVersion(r string) (v string, ok, known bool) {
	switch len(r) {
	case 30:
		return r, true, true
	case 24:
		lsn, err1 := strconv.ParseUint(r[:16], 16, 64)
		idx, err2 := strconv.ParseUint(r[16:], 16, 32)
		if err1 != nil || err2 != nil || !hexDigits(r) {
			return "", false, false
		}
		// As Lua formats its numbers, which are floats.
		return fmt.Sprintf("%020.0f%010.0f", float64(lsn), float64(idx)), true, true
	}
	return "", false, true
}

func hexDigits(s string) bool {
	for i := range len(s) {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

func hasAt(s []byte, p int, lit string) bool {
	return p <= len(s) && len(s)-p >= len(lit) && string(s[p:p+len(lit)]) == lit
}

// after returns the position after lit, when lit is at p.
func after(s []byte, p int, lit string) (int, bool) {
	if hasAt(s, p, lit) {
		return p + len(lit), true
	}
	return 0, false
}

// digits returns the decimal digits at p (nil when none) and the
// position after them.
func digits(s []byte, p int) ([]byte, int) {
	q := p
	for q < len(s) && s[q] >= '0' && s[q] <= '9' {
		q++
	}
	if q == p {
		return nil, p
	}
	return s[p:q], q
}

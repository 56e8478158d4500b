package pgvalue

// validJSON reports whether b is one JSON value, as encoding/json.Valid
// does (FuzzValidJSON holds it to that), in a fraction of its time: Valid
// runs a state machine through a function call a byte, which was 7% of
// capture's CPU on rows with a jsonb column.
func validJSON(b []byte) bool {
	v := validator{b: b}
	v.space()
	if !v.value(0) {
		return false
	}
	v.space()
	return v.i == len(v.b)
}

// maxDepth is encoding/json's limit on nesting.
const maxDepth = 10000

type validator struct {
	b []byte
	i int
}

func (v *validator) space() {
	for v.i < len(v.b) {
		switch v.b[v.i] {
		case ' ', '\t', '\n', '\r':
			v.i++
		default:
			return
		}
	}
}

// value reads one value at depth (the containers around it).
func (v *validator) value(depth int) bool {
	if v.i >= len(v.b) {
		return false
	}
	switch c := v.b[v.i]; {
	case c == '{':
		return v.container(depth+1, '}', v.member)
	case c == '[':
		return v.container(depth+1, ']', v.value)
	case c == '"':
		return v.string()
	case c == '-' || c >= '0' && c <= '9':
		return v.number()
	case c == 't':
		return v.literal("true")
	case c == 'f':
		return v.literal("false")
	case c == 'n':
		return v.literal("null")
	}
	return false
}

// container reads an object or an array from its opening brace or
// bracket to close, each of its members read by member.
func (v *validator) container(depth int, close byte, member func(depth int) bool) bool {
	if depth > maxDepth {
		return false
	}
	v.i++ // { or [
	v.space()
	if v.i < len(v.b) && v.b[v.i] == close {
		v.i++
		return true
	}
	for {
		if !member(depth) {
			return false
		}
		v.space()
		if v.i >= len(v.b) {
			return false
		}
		switch v.b[v.i] {
		case ',':
			v.i++
			v.space()
		case close:
			v.i++
			return true
		default:
			return false
		}
	}
}

// member reads an object's "name": value.
func (v *validator) member(depth int) bool {
	if v.i >= len(v.b) || v.b[v.i] != '"' || !v.string() {
		return false
	}
	v.space()
	if v.i >= len(v.b) || v.b[v.i] != ':' {
		return false
	}
	v.i++
	v.space()
	return v.value(depth)
}

// string reads a string from its opening quote: any byte but a control
// character, a quote or a backslash, or an escape.
func (v *validator) string() bool {
	v.i++ // "
	for v.i < len(v.b) {
		c := v.b[v.i]
		switch {
		case c == '"':
			v.i++
			return true
		case c < 0x20:
			return false
		case c != '\\':
			v.i++
			continue
		}
		v.i++
		if v.i >= len(v.b) {
			return false
		}
		switch v.b[v.i] {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			v.i++
		case 'u':
			if v.i+4 >= len(v.b) {
				return false
			}
			for _, h := range v.b[v.i+1 : v.i+5] {
				if !(h >= '0' && h <= '9' || h >= 'a' && h <= 'f' || h >= 'A' && h <= 'F') {
					return false
				}
			}
			v.i += 5
		default:
			return false
		}
	}
	return false
}

// number reads a number (see numberEnd).
func (v *validator) number() bool {
	end := numberEnd(v.b, v.i)
	if end < 0 {
		return false
	}
	v.i = end
	return true
}

func (v *validator) literal(word string) bool {
	if len(v.b)-v.i < len(word) || string(v.b[v.i:v.i+len(word)]) != word {
		return false
	}
	v.i += len(word)
	return true
}

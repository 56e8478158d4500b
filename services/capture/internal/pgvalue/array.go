package pgvalue

import "github.com/sluicehq/sluice/pkg/change"

// maxDims is the most dimensions a Postgres array has (MAXDIM).
const maxDims = 6

// appendArray renders an array in Postgres's text format, e.g. {1,NULL,3},
// {{"a b","c\"d"},{e,f}}, [0:1]={1,2} or {(1,1),(0,0);(2,2),(1,1)} (box
// uses ';'), as a JSON array whose elements are rendered by their own type.
// Malformed input becomes a string.
func appendArray(dst []byte, elem *Type, s []byte) []byte {
	text := s
	if len(s) > 0 && s[0] == '[' { // explicit bounds: "[0:1]={...}"
		for i, c := range s {
			if c == '=' {
				s = s[i+1:]
				break
			}
		}
	}
	p := arrayParser{s: s, elem: elem, delim: elem.delim}
	out, ok := p.level(dst, 1)
	if !ok || p.i != len(s) {
		return change.AppendBytes(dst, text)
	}
	return out
}

type arrayParser struct {
	s     []byte
	i     int
	elem  *Type
	delim byte
	buf   []byte // unescaped quoted element
}

// level parses "{...}" at p.i.
func (p *arrayParser) level(dst []byte, dim int) ([]byte, bool) {
	if p.i >= len(p.s) || p.s[p.i] != '{' || dim > maxDims {
		return dst, false
	}
	p.i++
	dst = append(dst, '[')
	if p.i < len(p.s) && p.s[p.i] == '}' {
		p.i++
		return append(dst, ']'), true
	}
	for first := true; ; first = false {
		if !first {
			dst = append(dst, ',')
		}
		var ok bool
		if dst, ok = p.element(dst, dim); !ok || p.i >= len(p.s) {
			return dst, false
		}
		switch p.s[p.i] {
		case p.delim:
			p.i++
		case '}':
			p.i++
			return append(dst, ']'), true
		default:
			return dst, false
		}
	}
}

func (p *arrayParser) element(dst []byte, dim int) ([]byte, bool) {
	if p.i >= len(p.s) {
		return dst, false
	}
	switch p.s[p.i] {
	case '{':
		return p.level(dst, dim+1)
	case '"':
		p.i++
		p.buf = p.buf[:0]
		for p.i < len(p.s) {
			c := p.s[p.i]
			p.i++
			switch c {
			case '\\':
				if p.i >= len(p.s) {
					return dst, false
				}
				p.buf = append(p.buf, p.s[p.i])
				p.i++
			case '"':
				return p.elem.Append(dst, p.buf), true
			default:
				p.buf = append(p.buf, c)
			}
		}
		return dst, false
	}
	start := p.i
	for p.i < len(p.s) && p.s[p.i] != p.delim && p.s[p.i] != '}' {
		if c := p.s[p.i]; c == '{' || c == '"' || c == '\\' {
			return dst, false // array_out quotes elements holding these
		}
		p.i++
	}
	v := p.s[start:p.i]
	if len(v) == 0 {
		return dst, false
	}
	if string(v) == "NULL" {
		return append(dst, "null"...), true
	}
	return p.elem.Append(dst, v), true
}

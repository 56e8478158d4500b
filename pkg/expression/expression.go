// Package expression compiles and runs a sink's filter, transform and
// routing expressions (the expr language: https://expr-lang.org). They are
// compiled once, type-checked against the inputs, and run sandboxed: no I/O,
// bounded memory.
//
// Every expression sees the same inputs as Sequin's functions:
// action ("insert", "update", "delete", "read"), record, changes (nil for
// other actions than update) and metadata.
package expression

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/file"
	"github.com/expr-lang/expr/vm"
)

// Input is what an expression sees.
type Input struct {
	Action   string         `expr:"action"`
	Record   map[string]any `expr:"record"`
	Changes  map[string]any `expr:"changes"`
	Metadata map[string]any `expr:"metadata"`
}

func compile(src string, opts ...expr.Option) (*vm.Program, error) {
	prog, err := expr.Compile(src, append([]expr.Option{expr.Env(Input{})}, opts...)...)
	if err != nil {
		return nil, oneLine(err)
	}
	return prog, nil
}

// oneLine turns expr's multi-line errors (with a source snippet) into one
// line with the column.
func oneLine(err error) error {
	var fe *file.Error
	if errors.As(err, &fe) {
		return fmt.Errorf("%s (at column %d)", fe.Message, fe.Column+1)
	}
	msg, _, _ := strings.Cut(err.Error(), "\n")
	return errors.New(msg)
}

// Filter decides which changes a sink applies.
type Filter struct{ prog *vm.Program }

// CompileFilter compiles an expression that must yield a boolean.
func CompileFilter(src string) (*Filter, error) {
	prog, err := compile(src, expr.AsBool())
	if err != nil {
		return nil, err
	}
	return &Filter{prog}, nil
}

// Match runs the filter.
func (f *Filter) Match(in *Input) (bool, error) {
	out, err := expr.Run(f.prog, in)
	if err != nil {
		return false, fmt.Errorf("filter: %w", oneLine(err))
	}
	b, ok := out.(bool)
	if !ok {
		return false, fmt.Errorf("filter: returned %T, not a boolean", out)
	}
	return b, nil
}

// Transform computes the value stored for a change.
type Transform struct{ prog *vm.Program }

// CompileTransform compiles an expression yielding any value.
func CompileTransform(src string) (*Transform, error) {
	prog, err := compile(src)
	if err != nil {
		return nil, err
	}
	return &Transform{prog}, nil
}

// Value runs the transform. A string is stored as is, a number or boolean
// as its text, anything else JSON-encoded (nil as "null"), as Sequin does.
func (t *Transform) Value(in *Input) ([]byte, error) {
	out, err := expr.Run(t.prog, in)
	if err != nil {
		return nil, fmt.Errorf("transform: %w", oneLine(err))
	}
	if s, ok := scalarText(out); ok {
		return []byte(s), nil
	}
	b, err := marshal(out)
	if err != nil {
		return nil, fmt.Errorf("transform: encode result: %w", err)
	}
	return b, nil
}

// scalarText is the text of a string, number or boolean.
func scalarText(v any) (string, bool) {
	switch v := v.(type) {
	case string:
		return v, true
	case bool:
		return strconv.FormatBool(v), true
	case int:
		return strconv.Itoa(v), true
	case int64:
		return strconv.FormatInt(v, 10), true
	case float64:
		if v == math.Trunc(v) && math.Abs(v) < 1e15 {
			return strconv.FormatInt(int64(v), 10), true
		}
		return strconv.FormatFloat(v, 'g', -1, 64), true
	case json.Number:
		return v.String(), true
	}
	return "", false
}

// Route is where a change goes: its key, and optionally another action
// ("set" or "del") and expiry than the sink's.
type Route struct {
	Key      string
	Action   string // "", "set" or "del"
	ExpireMS int64  // 0: the sink's
}

// Routing computes a change's key.
type Routing struct{ prog *vm.Program }

// CompileRouting compiles an expression yielding a key, or a map with
// "key" and optionally "action" and "expire_ms".
func CompileRouting(src string) (*Routing, error) {
	prog, err := compile(src)
	if err != nil {
		return nil, err
	}
	return &Routing{prog}, nil
}

// MaxKeyLen is the longest key a routing expression may return.
const MaxKeyLen = 512

// Route runs the routing expression and checks its result.
func (r *Routing) Route(in *Input) (Route, error) {
	out, err := expr.Run(r.prog, in)
	if err != nil {
		return Route{}, fmt.Errorf("routing: %w", oneLine(err))
	}
	var rt Route
	switch v := out.(type) {
	case map[string]any:
		for k, val := range v {
			switch k {
			case "key":
				rt.Key, err = keyText(val)
			case "action":
				a, ok := val.(string)
				if !ok || a != "set" && a != "del" {
					err = fmt.Errorf(`action must be "set" or "del", not %v`, val)
				}
				rt.Action = a
			case "expire_ms":
				rt.ExpireMS, err = positiveInt(val)
			default:
				err = fmt.Errorf("unknown field %q (key, action, expire_ms)", k)
			}
			if err != nil {
				return Route{}, fmt.Errorf("routing: %w", err)
			}
		}
		if _, ok := v["key"]; !ok {
			return Route{}, errors.New("routing: the map has no key")
		}
	default:
		if rt.Key, err = keyText(v); err != nil {
			return Route{}, fmt.Errorf("routing: %w", err)
		}
	}
	return rt, nil
}

func keyText(v any) (string, error) {
	s, ok := scalarText(v)
	if _, isBool := v.(bool); !ok || isBool {
		return "", fmt.Errorf("key must be a string or number, not %T", v)
	}
	if s == "" || len(s) > MaxKeyLen {
		return "", fmt.Errorf("key must be 1-%d characters, got %d", MaxKeyLen, len(s))
	}
	if i := strings.IndexFunc(s, unicode.IsSpace); i >= 0 {
		return "", fmt.Errorf("key %q contains whitespace", s)
	}
	return s, nil
}

func positiveInt(v any) (int64, error) {
	var n int64
	switch v := v.(type) {
	case int:
		n = int64(v)
	case int64:
		n = v
	case float64:
		if v != math.Trunc(v) || v > math.MaxInt64 {
			return 0, fmt.Errorf("expire_ms must be a whole number, not %v", v)
		}
		n = int64(v)
	default:
		return 0, fmt.Errorf("expire_ms must be a number, not %T", v)
	}
	if n <= 0 {
		return 0, fmt.Errorf("expire_ms must be more than 0, not %d", n)
	}
	return n, nil
}

package pgvalue

import (
	"encoding/json"
	"strings"
	"testing"
)

var jsonSeeds = []string{
	`{"color": "red", "size": 3, "tags": ["a", "b"], "note": "e5c2\u00e9\n", "n": null, "t": true, "f": false}`,
	`[]`, `{}`, ` 1 `, `-0.5e+10`, `0`, `01`, `-`, `1e+`, `12.50E-3`, `1 `, `1.`, `.5`, `1e`, `-`, `"\ud800"`, `"\x"`, "\"\x01\"", "\"\xff\"",
	`{"a":1,}`, `[1,]`, `{"a" 1}`, `{1:2}`, `tru`, `nul`, `"abc`, `[1 2]`, ``, ` `, `{"a":[{"b":{}}]}`, "\t[\r\n]\n",
}

func TestValidJSONDepth(t *testing.T) {
	for _, depth := range []int{maxDepth, maxDepth + 1} {
		doc := strings.Repeat("[", depth) + strings.Repeat("]", depth)
		if got, want := validJSON([]byte(doc)), json.Valid([]byte(doc)); got != want {
			t.Fatalf("%d nested arrays: %v, encoding/json %v", depth, got, want)
		}
		doc = strings.Repeat(`{"a":`, depth) + "1" + strings.Repeat("}", depth)
		if got, want := validJSON([]byte(doc)), json.Valid([]byte(doc)); got != want {
			t.Fatalf("%d nested objects: %v, encoding/json %v", depth, got, want)
		}
	}
}

// validJSON says what encoding/json.Valid says, and isNumber, which
// shares its reading of numbers, whether that is one number alone.
func FuzzValidJSON(f *testing.F) {
	for _, s := range jsonSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		valid := json.Valid(b)
		if got := validJSON(b); got != valid {
			t.Fatalf("validJSON(%q) = %v, encoding/json %v", b, got, valid)
		}
		number := valid && len(b) > 0 && (b[0] == '-' || b[0] >= '0' && b[0] <= '9') && b[len(b)-1] > ' '
		if got := isNumber(b); got != number {
			t.Fatalf("isNumber(%q) = %v, want %v", b, got, number)
		}
	})
}

func BenchmarkValidJSON(b *testing.B) {
	doc := []byte(jsonSeeds[0])
	b.Run("validJSON", func(b *testing.B) {
		for range b.N {
			validJSON(doc)
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		for range b.N {
			json.Valid(doc)
		}
	})
}

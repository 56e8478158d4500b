package expression

import (
	"strings"
	"testing"
)

func input(t *testing.T) *Input {
	t.Helper()
	rec, err := DecodeObject([]byte(`{"id": 9007199254740993, "name": "Ada <b>", "active": true, "score": 1.5, "tags": ["a"], "balance": "19.90"}`))
	if err != nil {
		t.Fatal(err)
	}
	return &Input{Action: "update", Record: rec, Changes: map[string]any{"name": "Old"},
		Metadata: map[string]any{"table_name": "users", "table_schema": "public"}}
}

func TestFilter(t *testing.T) {
	in := input(t)
	for src, want := range map[string]bool{
		`record.active == true`:                  true,
		`action == "insert"`:                     false,
		`changes.name == "Old" && record.id > 5`: true,
		`metadata.table_name in ["users"]`:       true,
	} {
		f, err := CompileFilter(src)
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		if got, err := f.Match(in); err != nil || got != want {
			t.Errorf("%s = %v, %v", src, got, err)
		}
	}
	f, _ := CompileFilter(`record.name`)
	if _, err := f.Match(in); err == nil {
		t.Error("a non-boolean filter result was accepted")
	}
	for _, src := range []string{`recrd.active`, `record.active ==`, `1 + "a"`, `action + 1`} {
		_, err := CompileFilter(src)
		if err == nil || strings.Contains(err.Error(), "\n") {
			t.Errorf("CompileFilter(%q) = %v, want a one-line error", src, err)
		}
	}
}

func TestTransform(t *testing.T) {
	in := input(t)
	cases := map[string]string{
		`record.name`:                          `Ada <b>`,
		`record.id`:                            `9007199254740993`,
		`record.score`:                         `1.5`,
		`record.active`:                        `true`,
		`{"n": record.name, "t": record.tags}`: `{"n":"Ada <b>","t":["a"]}`,
		`nil`:                                  `null`,
		`record.balance`:                       `19.90`,
		`[1, 2]`:                               `[1,2]`,
	}
	for src, want := range cases {
		tr, err := CompileTransform(src)
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		if got, err := tr.Value(in); err != nil || string(got) != want {
			t.Errorf("%s = %s, %v; want %s", src, got, err, want)
		}
	}
}

func TestRouting(t *testing.T) {
	in := input(t)
	ok := map[string]Route{
		`"my_app:users:" + string(record.id)`:               {Key: "my_app:users:9007199254740993"},
		`record.id`:                                         {Key: "9007199254740993"},
		`{"key": "k:" + record.balance}`:                    {Key: "k:19.90"},
		`{"key": "k", "action": "del"}`:                     {Key: "k", Action: "del"},
		`{"key": "k", "action": "set", "expire_ms": 60000}`: {Key: "k", Action: "set", ExpireMS: 60000},
	}
	for src, want := range ok {
		r, err := CompileRouting(src)
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		if got, err := r.Route(in); err != nil || got != want {
			t.Errorf("%s = %+v, %v; want %+v", src, got, err, want)
		}
	}
	bad := map[string]string{
		`"has space"`:                      "whitespace",
		`""`:                               "1-512 characters",
		`repeat("x", 513)`:                 "1-512 characters",
		`true`:                             "string or number",
		`{"key": "k", "ttl": 5}`:           `unknown field "ttl"`,
		`{"key": "k", "action": "upsert"}`: `action must be "set" or "del"`,
		`{"key": "k", "expire_ms": 0}`:     "more than 0",
		`{"action": "del"}`:                "no key",
		`record.tags`:                      "string or number",
	}
	for src, want := range bad {
		r, err := CompileRouting(src)
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		if _, err := r.Route(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want %q", src, err, want)
		}
	}
}

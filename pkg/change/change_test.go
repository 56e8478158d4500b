package change

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	sluicev1 "github.com/sluicehq/sluice/proto/sluice/v1"
)

func TestAppendMessage(t *testing.T) {
	ev := &sluicev1.ChangeEvent{
		IdempotencyKey:    IdempotencyKey(23456789, 0),
		Action:            sluicev1.Action_ACTION_INSERT,
		Database:          "app",
		Schema:            "public",
		Table:             "users",
		PkColumns:         []string{"id"},
		PkValues:          []string{"42"},
		Record:            []byte(`{"id":42,"name":"Ann"}`),
		CommitLsn:         23456789,
		CommitTimestampUs: 1795636800123456, // 2026-11-25T20:00:00.123456Z
	}
	c := Consumer{ID: "5f0c1a2e-0000-5000-8000-000000000000", Name: "cache-eu", Annotations: []byte(`{"team":"web"}`)}
	ev.Host = "db.internal"
	got := string(AppendMessage(nil, ev, c, NewDatabase("", nil)))
	want := `{"action":"insert","changes":null,"metadata":{"commit_idx":0,"commit_lsn":23456789,"commit_timestamp":"2026-11-25T20:00:00.123456Z",` +
		`"consumer":{"annotations":{"team":"web"},"id":"5f0c1a2e-0000-5000-8000-000000000000","name":"cache-eu"},` +
		`"database":{"annotations":{},"database":"app","hostname":"db.internal","id":"` + uuid5(databaseNamespace, "app") + `","name":"app"},` +
		`"database_name":"app","enrichment":null,"idempotency_key":"MjM0NTY3ODk6MA==",` +
		`"record_pks":["42"],"table_name":"users","table_schema":"public","transaction_annotations":null},"record":{"id":42,"name":"Ann"}}`
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}

	ev.Action = sluicev1.Action_ACTION_UPDATE
	ev.Changes = []byte(`{}`)
	ev.CommitIdx = 3
	ev.CommitTimestampUs = 1795636800000000
	var m struct {
		Changes  map[string]any `json:"changes"`
		Action   string
		Metadata struct {
			CommitTimestamp string `json:"commit_timestamp"`
			CommitIdx       int    `json:"commit_idx"`
		}
	}
	if err := json.Unmarshal(AppendMessage(nil, ev, c, NewDatabase("", nil)), &m); err != nil {
		t.Fatal(err)
	}
	if m.Changes == nil || m.Action != "update" || m.Metadata.CommitIdx != 3 || m.Metadata.CommitTimestamp != "2026-11-25T20:00:00.000000Z" {
		t.Errorf("update message = %+v", m)
	}
}

func TestIdempotencyKey(t *testing.T) {
	if got := IdempotencyKey(23456789, 12); got != "MjM0NTY3ODk6MTI=" { // base64("23456789:12")
		t.Errorf("IdempotencyKey = %s", got)
	}
}

func TestVersionOrder(t *testing.T) {
	pos := []struct {
		lsn uint64
		idx uint32
	}{{0, 0}, {0, 1}, {0, 0xffffffff}, {1, 0}, {0xff, 7}, {0x100, 0}, {1 << 40, 3}, {^uint64(0), ^uint32(0)}}
	prev := ""
	for _, p := range pos {
		v := string(AppendVersion(nil, p.lsn, p.idx))
		if len(v) != VersionLen || v <= prev {
			t.Fatalf("version(%x,%x) = %q, not after %q", p.lsn, p.idx, v, prev)
		}
		prev = v
	}
}

func TestNewConsumer(t *testing.T) {
	a, b := NewConsumer("cache-eu", nil), NewConsumer("cache-us", nil)
	if a.ID == b.ID || a.ID != NewConsumer("cache-eu", nil).ID || a.Name != "cache-eu" || string(a.Annotations) != "{}" {
		t.Errorf("ids: %v %v", a, b)
	}
	if len(a.ID) != 36 || a.ID[14] != '5' || !strings.ContainsAny(a.ID[19:20], "89ab") {
		t.Errorf("not a version 5 UUID: %s", a.ID)
	}
}

func TestAppendString(t *testing.T) {
	cases := map[string]string{
		"plain":       `"plain"`,
		`q"b\`:        `"q\"b\\"`,
		"a/b":         `"a/b"`,
		"\n\t\r\b\f":  `"\n\t\r\b\f"`,
		"\x00\x1f":    `"\u0000\u001F"`,
		"é€😀\u2028":   "\"é€😀\u2028\"",
		"bad\xffutf8": "\"bad\ufffdutf8\"",
		"<script>&":   `"<script>&"`,
	}
	for in, want := range cases {
		if got := string(AppendString(nil, in)); got != want {
			t.Errorf("AppendString(%q) = %s, want %s", in, got, want)
		}
	}
}

func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "a\"b", "\x00", "é", "\xff\xfe", "\u2028"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := AppendString(nil, s)
		var back string
		if err := json.Unmarshal(out, &back); err != nil {
			t.Fatalf("AppendString(%q) = %s: invalid JSON: %v", s, out, err)
		}
		if utf8.ValidString(s) && back != s {
			t.Fatalf("round trip of %q gave %q", s, back)
		}
	})
}

func TestBatch(t *testing.T) {
	var batch []byte
	var err error
	for i := range uint32(3) {
		if batch, err = AppendEvent(batch, &sluicev1.ChangeEvent{CommitLsn: 7, CommitIdx: i, Table: "t"}); err != nil {
			t.Fatal(err)
		}
	}
	evs, err := Events(batch)
	if err != nil || len(evs) != 3 || evs[2].CommitIdx != 2 || evs[0].Table != "t" {
		t.Fatalf("events = %v, %v", evs, err)
	}
	if _, err := Events([]byte{0x0a, 0x05, 1}); err == nil {
		t.Fatal("a truncated batch decoded")
	}
	if n := CountEvents(batch); n != 3 {
		t.Fatalf("CountEvents = %d", n)
	}
	if n := CountEvents([]byte{0x0a, 0x05, 1}); n != -1 {
		t.Fatalf("CountEvents of a truncated batch = %d", n)
	}
}

// AppendTimestamp writes what time's layout writes, at every edge of its
// fields and beyond the years of four digits.
func FuzzAppendTimestamp(f *testing.F) {
	for _, us := range []int64{0, 1, -1, 999_999, 1_000_000, 1_764_792_000_123_456, 253_402_300_799_999_999, 253_402_300_800_000_000,
		-62_135_596_800_000_000, -62_135_596_800_000_001, 951_782_400_000_000, math.MaxInt64, math.MinInt64} {
		f.Add(us)
	}
	f.Fuzz(func(t *testing.T, us int64) {
		want := time.UnixMicro(us).UTC().Format("2006-01-02T15:04:05.000000Z")
		if got := string(AppendTimestamp([]byte("x"), us)); got != "x"+want {
			t.Fatalf("%d: %s, want %s", us, got, want)
		}
	})
}

// A message renders the same whatever was rendered before it with the same
// Database: each step below changes one thing the last rendering depended
// on (nothing, the database, the host, the consumer, the configured name,
// the configured annotations), and its message is what a fresh Database
// renders.
func TestAppendMessageAfterOthers(t *testing.T) {
	evs := []*sluicev1.ChangeEvent{
		{Action: sluicev1.Action_ACTION_INSERT, Database: "a", Host: "h1", Table: "t", PkValues: []string{"1"}, Record: []byte(`{"id":1}`)},
		{Action: sluicev1.Action_ACTION_INSERT, Database: "b", Host: "h1", Table: "t", PkValues: []string{"2"}, Record: []byte(`{"id":2}`)},
		{Action: sluicev1.Action_ACTION_INSERT, Database: "b", Host: "h2", Table: "t", PkValues: []string{"3"}, Record: []byte(`{"id":3}`)},
	}
	consumers := []Consumer{NewConsumer("one", nil), NewConsumer("two", []byte(`{"team":"x"}`))}
	shared := NewDatabase("", []byte(`{"env":"test"}`))
	for i, step := range []struct {
		ev, consumer      int
		name, annotations string
	}{
		{0, 0, "", `{"env":"test"}`},
		{0, 0, "", `{"env":"test"}`},
		{1, 0, "", `{"env":"test"}`},
		{2, 0, "", `{"env":"test"}`},
		{2, 1, "", `{"env":"test"}`},
		{2, 1, "renamed", `{"env":"test"}`},
		{2, 1, "renamed", `{"env":"prod"}`},
	} {
		shared.Name, shared.Annotations = step.name, []byte(step.annotations)
		ev, c := evs[step.ev], consumers[step.consumer]
		want := string(AppendMessage(nil, ev, c, NewDatabase(step.name, []byte(step.annotations))))
		if got := string(AppendMessage(nil, ev, c, shared)); got != want {
			t.Fatalf("step %d:\n%s\nwant\n%s", i, got, want)
		}
	}
}

package change

import (
	"bytes"
	"math"
	"testing"

	"google.golang.org/protobuf/proto"

	sluicev1 "github.com/sluicehq/sluice/proto/sluice/v1"
)

// seedEvents cover every field, repeated fields with empty elements,
// extreme numbers, strings that repeat from one event to the next, and
// events of every length of length.
var seedEvents = []*sluicev1.ChangeEvent{
	{IdempotencyKey: "MjIxMTk3MDQ6MA==", Action: sluicev1.Action_ACTION_UPDATE, Database: "app", Schema: "public", Table: "users",
		PkColumns: []string{"id", "tenant"}, PkValues: []string{"7", ""}, Record: []byte(`{"id":7,"name":"Grâce"}`), Changes: []byte(`{}`),
		OldPkValues: []string{"6", "x"}, CommitLsn: math.MaxUint64, CommitIdx: math.MaxUint32, CommitTimestampUs: -1,
		BackfillId: "b1", UnchangedToastColumns: []string{"doc"}, BackfillSink: "cache", Host: "db", TransactionAnnotations: `{"a":1}`},
	{Action: sluicev1.Action_ACTION_DELETE, Database: "app", Schema: "public", Table: "users", PkColumns: []string{"id", "tenant"},
		PkValues: []string{"8", "y"}, CommitLsn: 1, CommitTimestampUs: math.MinInt64, Host: "db"},
	{Action: sluicev1.Action(-3), Table: "t"},
	{},
	// Records whose lengths take two and three bytes to say.
	{Table: "t", Record: bytes.Repeat([]byte("r"), 200)},
	{Table: "t", Record: bytes.Repeat([]byte("r"), 20000)},
}

// seedBatch is the generated code's encoding of the seed events.
func seedBatch(t testing.TB) []byte {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(&sluicev1.ChangeBatch{Events: seedEvents})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The hand-written encoding is the generated code's, byte for byte; a
// string that is not UTF-8 is refused, and leaves the batch as it was.
func TestAppendEventEncodesAsProtobuf(t *testing.T) {
	var batch []byte
	for _, ev := range seedEvents {
		var err error
		if batch, err = AppendEvent(batch, ev); err != nil {
			t.Fatal(err)
		}
	}
	if want := seedBatch(t); !bytes.Equal(batch, want) {
		t.Fatalf("batch\n%x\nwant\n%x", batch, want)
	}
	for _, bad := range []*sluicev1.ChangeEvent{{Table: "\xff"}, {PkValues: []string{"ok", "\xc3"}}, {TransactionAnnotations: "\xed\xa0\x80"}} {
		if _, err := proto.Marshal(bad); err == nil {
			t.Fatalf("protobuf encodes %v", bad)
		}
		got, err := AppendEvent(batch, bad)
		if err == nil || !bytes.Equal(got, batch) {
			t.Fatalf("%v: %v, batch changed: %v", bad, err, !bytes.Equal(got, batch))
		}
	}
}

// Events decodes whatever the generated code decodes, to the same events,
// and refuses what it refuses; what it decodes encodes back as the
// generated code encodes it.
func FuzzEvents(f *testing.F) {
	f.Add(seedBatch(f))
	f.Add([]byte{0x0a, 0x05, 1})
	f.Add([]byte{0x0a, 0x03, 0x22, 0x01, 0xff})                   // a schema that is not UTF-8
	f.Add([]byte{0x0a, 0x04, 0x10, 0x01, 0x12, 0x00})             // an action, then a field 2 of another wire type
	f.Add([]byte{0x0a, 0x06, 0x5a, 0x00, 0x42, 0x00, 0x42, 0x01}) // empty bytes, then a truncated record
	f.Add([]byte{0x08, 0x01, 0x0a, 0x02, 0x28, 0x07})             // an unknown field of the batch, an unknown of the event
	f.Fuzz(func(t *testing.T, data []byte) {
		var want sluicev1.ChangeBatch
		werr := proto.Unmarshal(data, &want)
		got, err := Events(data)
		if (err == nil) != (werr == nil) {
			t.Fatalf("Events: %v; protobuf: %v", err, werr)
		}
		if err != nil {
			return
		}
		if len(got) != len(want.Events) {
			t.Fatalf("%d events, protobuf %d", len(got), len(want.Events))
		}
		for i, ev := range want.Events {
			ev.ProtoReflect().SetUnknown(nil) // not kept
			if !proto.Equal(got[i], ev) {
				t.Fatalf("event %d: %v\nprotobuf: %v", i, got[i], ev)
			}
		}
		var batch []byte
		for _, ev := range got {
			if batch, err = AppendEvent(batch, ev); err != nil {
				t.Fatal(err)
			}
		}
		enc, err := proto.MarshalOptions{Deterministic: true}.Marshal(&sluicev1.ChangeBatch{Events: want.Events})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(batch, enc) {
			t.Fatalf("encoded\n%x\nprotobuf\n%x", batch, enc)
		}
	})
}

package deadletter

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/sluicehq/sluice/pkg/testenv"
	"github.com/sluicehq/sluice/pkg/topology"
)

func TestBox(t *testing.T) {
	ctx := context.Background()
	srv := testenv.NewNATS(t)
	js := srv.JetStream(t)
	box, err := Open(ctx, js, topology.Topology{Stream: "S", Replicas: 1, MaxAge: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for i, sink := range []string{"a", "b", "a"} {
		if err := box.Put(ctx, Letter{Sink: sink, Key: "k" + sink, Error: "WRONGTYPE", Attempts: 3, StreamSeq: uint64(10 + i), Data: []byte{byte(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	// Another process's box, on the existing stream.
	box, err = Open(ctx, srv.JetStream(t), topology.Topology{Stream: "S", Replicas: 1, MaxAge: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	letters, err := box.List(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if len(letters) != 2 || letters[0].Key != "ka" || letters[0].Attempts != 3 || letters[0].StreamSeq != 10 || letters[1].StreamSeq != 12 ||
		letters[1].Data[0] != 2 || letters[0].Seq != 1 || letters[1].Seq != 3 || letters[0].Error != "WRONGTYPE" || letters[0].Time.IsZero() {
		t.Fatalf("letters of a: %+v", letters)
	}
	if err := box.Delete(ctx, letters[0]); err != nil {
		t.Fatal(err)
	}
	if letters, _ = box.List(ctx, "a"); len(letters) != 1 || letters[0].Seq != 3 {
		t.Fatalf("after delete: %+v", letters)
	}
	if letters, _ = box.List(ctx, "none"); len(letters) != 0 {
		t.Fatalf("letters of an unknown sink: %+v", letters)
	}
}

// A letter larger than a message may be (the default 1 MiB) is kept in
// fragments, read back whole, and deleted with them.
func TestLargeLetter(t *testing.T) {
	ctx := context.Background()
	js := testenv.NewNATS(t).JetStream(t)
	box, err := Open(ctx, js, topology.Topology{Stream: "S", Replicas: 1, MaxAge: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("0123456789"), 300_000) // 3 MB
	if err := box.Put(ctx, Letter{Sink: "a", Key: "k", Error: "WRONGTYPE", Attempts: 2, Data: data}); err != nil {
		t.Fatal(err)
	}
	letters, err := box.List(ctx, "a")
	if err != nil || len(letters) != 1 || !bytes.Equal(letters[0].Data, data) || letters[0].Key != "k" {
		t.Fatalf("letters: %d, %v", len(letters), err)
	}
	if err := box.Delete(ctx, letters[0]); err != nil {
		t.Fatal(err)
	}
	info, err := box.stream.Info(ctx)
	if err != nil || info.State.Msgs != 0 {
		t.Fatalf("after delete the stream holds %d messages (%v)", info.State.Msgs, err)
	}
}

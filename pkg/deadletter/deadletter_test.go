package deadletter

import (
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
	if err := box.Delete(ctx, letters[0].Seq); err != nil {
		t.Fatal(err)
	}
	if letters, _ = box.List(ctx, "a"); len(letters) != 1 || letters[0].Seq != 3 {
		t.Fatalf("after delete: %+v", letters)
	}
	if letters, _ = box.List(ctx, "none"); len(letters) != 0 {
		t.Fatalf("letters of an unknown sink: %+v", letters)
	}
}

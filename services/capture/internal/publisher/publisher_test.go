package publisher

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/sluicehq/sluice/pkg/testenv"
	sluicev1 "github.com/sluicehq/sluice/proto/sluice/v1"
)

func setup(t *testing.T, maxMsgs int64) jetstream.JetStream {
	t.Helper()
	srv := testenv.NewNATS(t)
	nc, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	_, err = js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "S", Subjects: []string{"S.changes.*"}, MaxMsgs: maxMsgs, Discard: jetstream.DiscardNew})
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func event(lsn uint64, idx uint32) []byte {
	b, _ := proto.Marshal(&sluicev1.ChangeEvent{CommitLsn: lsn, CommitIdx: idx})
	return b
}

func waitFlushed(t *testing.T, p *Publisher, want uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for p.Flushed() != want {
		if time.Now().After(deadline) {
			t.Fatalf("flushed = %d, want %d", p.Flushed(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPublishAndResume(t *testing.T) {
	ctx := context.Background()
	js := setup(t, -1)
	p, pos, err := Open(ctx, js, "S", 2)
	if err != nil {
		t.Fatal(err)
	}
	if pos.Valid {
		t.Fatalf("empty stream gave position %+v", pos)
	}
	for i := range uint32(3) {
		if err := p.Publish(ctx, "S.changes.1", "id-"+string(rune('a'+i)), event(10, i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Commit(ctx, 100); err != nil {
		t.Fatal(err)
	}
	waitFlushed(t, p, 100)
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}

	p2, pos, err := Open(ctx, js, "S", 2)
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close(ctx)
	if pos != (Position{LSN: 10, Idx: 2, Valid: true}) || !pos.Covers(10, 2) || !pos.Covers(9, 7) || pos.Covers(10, 3) || pos.Covers(11, 0) {
		t.Fatalf("position after 3 events: %+v", pos)
	}
	// The chain continues after the stream's last sequence.
	if err := p2.Publish(ctx, "S.changes.0", "id-d", event(11, 0)); err != nil {
		t.Fatal(err)
	}
	p2.Commit(ctx, 200)
	waitFlushed(t, p2, 200)
}

// A failed publish fails every later one, and the flushed position never
// passes it.
func TestFailureStopsTheChain(t *testing.T) {
	ctx := context.Background()
	js := setup(t, 5) // the sixth message is refused
	p, _, err := Open(ctx, js, "S", 100)
	if err != nil {
		t.Fatal(err)
	}
	var pubErr error
	for i := uint64(1); i <= 8 && pubErr == nil; i++ {
		if pubErr = p.Publish(ctx, "S.changes.0", "m"+string(rune('0'+i)), event(i, 0)); pubErr == nil {
			pubErr = p.Commit(ctx, i*10)
		}
		time.Sleep(10 * time.Millisecond) // let acks arrive, so failure is seen
	}
	err = p.Close(ctx)
	if err == nil || !strings.Contains(err.Error(), "maximum messages") {
		t.Fatalf("Close = %v", err)
	}
	if got := p.Flushed(); got != 50 {
		t.Fatalf("flushed = %d, want 50 (the fifth event's)", got)
	}
}

// Someone else's message in between breaks the expected sequence: the next
// publish fails rather than leave a gap unnoticed.
func TestExpectedSequence(t *testing.T) {
	ctx := context.Background()
	js := setup(t, -1)
	p, _, err := Open(ctx, js, "S", 10)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "S.changes.0", []byte("intruder")); err != nil {
		t.Fatal(err)
	}
	p.Publish(ctx, "S.changes.0", "x", event(1, 0))
	if err := p.Close(ctx); err == nil || !strings.Contains(err.Error(), "wrong last sequence") {
		t.Fatalf("Close = %v", err)
	}
}

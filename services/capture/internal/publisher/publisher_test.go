package publisher

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	dto "github.com/prometheus/client_model/go"

	"github.com/sluicehq/sluice/pkg/change"
	"github.com/sluicehq/sluice/pkg/fragment"
	"github.com/sluicehq/sluice/pkg/testenv"
	sluicev1 "github.com/sluicehq/sluice/proto/sluice/v1"
)

func setup(t testing.TB, maxMsgs int64) jetstream.JetStream {
	t.Helper()
	return stream(t, testenv.NewNATS(t).JetStream(t), maxMsgs)
}

// setupFar is setup with the server 50 ms away each way: what is
// published stays in flight for 100 ms, however slowly the test runs.
func setupFar(t *testing.T, maxMsgs int64) jetstream.JetStream {
	t.Helper()
	srv := testenv.NewNATS(t)
	port := testenv.Distant(t, strings.TrimPrefix(srv.URL(), "nats://"), 50*time.Millisecond)
	nc, err := nats.Connect("nats://127.0.0.1:" + strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return stream(t, js, maxMsgs)
}

// stream makes the stream S of the tests.
func stream(t testing.TB, js jetstream.JetStream, maxMsgs int64) jetstream.JetStream {
	t.Helper()
	_, err := js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "S", Subjects: []string{"S.changes.*", "S.fragments.*"}, MaxMsgs: maxMsgs, Discard: jetstream.DiscardNew})
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func event(lsn uint64, idx uint32) *sluicev1.ChangeEvent {
	return &sluicev1.ChangeEvent{CommitLsn: lsn, CommitIdx: idx}
}

func subject(p int) string { return "S.changes." + strconv.Itoa(p) }

func options(partitions, maxInFlight int) Options {
	return Options{Stream: "S", Partitions: partitions, MaxInFlight: maxInFlight, Subject: subject,
		FragmentSubject: func(p int) string { return "S.fragments." + strconv.Itoa(p) }}
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
	p, resume, err := Open(ctx, js, options(2, 2))
	if err != nil {
		t.Fatal(err)
	}
	if len(resume) != 0 {
		t.Fatalf("empty stream gave positions %+v", resume)
	}
	for i := range uint32(3) {
		if err := p.Add(ctx, int(i%2), event(10, i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Commit(ctx, 100); err != nil {
		t.Fatal(err)
	}
	// The commit waits for the batches before it.
	time.Sleep(50 * time.Millisecond)
	if p.Flushed() != 0 || !p.Pending() {
		t.Fatalf("flushed %d before the batches were published", p.Flushed())
	}
	if n, err := p.Flush(ctx); err != nil || n != 3 {
		t.Fatalf("Flush = %d, %v", n, err)
	}
	waitFlushed(t, p, 100)
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}

	p2, resume, err := Open(ctx, js, options(2, 2))
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close(ctx)
	// Partition 0 got events 0 and 2, partition 1 event 1.
	if !resume.Covers(0, 10, 2, ".") || resume.Covers(0, 10, 3, ".") || !resume.Covers(1, 10, 1, ".") || resume.Covers(1, 10, 2, ".") || resume.Covers(2, 1, 0, ".") {
		t.Fatalf("positions after 3 events: %+v", resume)
	}
	// The chain continues after the stream's last sequence.
	if err := p2.Add(ctx, 0, event(11, 0)); err != nil {
		t.Fatal(err)
	}
	p2.Commit(ctx, 200)
	p2.Flush(ctx)
	waitFlushed(t, p2, 200)
}

// A failed publish fails every later one, and the flushed position never
// passes it.
func TestFailureStopsTheChain(t *testing.T) {
	ctx := context.Background()
	js := setup(t, 5) // the sixth message is refused
	p, _, err := Open(ctx, js, options(1, 100))
	if err != nil {
		t.Fatal(err)
	}
	var pubErr error
	for i := uint64(1); i <= 8 && pubErr == nil; i++ {
		if pubErr = p.Add(ctx, 0, event(i, 0)); pubErr == nil {
			pubErr = p.Commit(ctx, i*10)
		}
		if pubErr == nil {
			_, pubErr = p.Flush(ctx) // one message per event
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
	p, _, err := Open(ctx, js, options(4, 10))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "S.changes.0", []byte("intruder")); err != nil {
		t.Fatal(err)
	}
	p.Add(ctx, 0, event(1, 0))
	if err := p.Close(ctx); err == nil || !strings.Contains(err.Error(), "wrong last sequence") {
		t.Fatalf("Close = %v", err)
	}
}

// A partition's batch goes out when full, before any Flush.
func TestFullBatch(t *testing.T) {
	ctx := context.Background()
	js := setup(t, -1)
	p, _, err := Open(ctx, js, options(4, 10))
	if err != nil {
		t.Fatal(err)
	}
	for i := range uint32(maxBatchEvents + 1) {
		if err := p.Add(ctx, 3, event(5, i)); err != nil {
			t.Fatal(err)
		}
	}
	p.Commit(ctx, 99)
	st, _ := js.Stream(ctx, "S")
	deadline := time.Now().Add(5 * time.Second)
	for st.CachedInfo().State.Msgs != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("stream holds %d messages, want the one full batch", st.CachedInfo().State.Msgs)
		}
		time.Sleep(10 * time.Millisecond)
		st.Info(ctx)
	}
	if p.Flushed() != 0 {
		t.Fatal("the commit passed an event still in a batch")
	}
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if p.Flushed() != 99 {
		t.Fatalf("flushed %d after Close", p.Flushed())
	}
}

// A crash while a partition's older events still wait in its batch, after
// a fuller partition's newer events went out: on restart, the waiting
// events are not taken for published.
func TestResumeIsPerPartition(t *testing.T) {
	ctx := context.Background()
	js := setup(t, -1)
	p, _, err := Open(ctx, js, options(2, 10))
	if err != nil {
		t.Fatal(err)
	}
	p.Add(ctx, 0, event(10, 0)) // waits in partition 0's batch
	for i := range uint32(maxBatchEvents) {
		p.Add(ctx, 1, event(10, 1+i)) // fills partition 1's: published
	}
	st, _ := js.Stream(ctx, "S")
	deadline := time.Now().Add(5 * time.Second)
	for st.CachedInfo().State.Msgs != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the full batch was not published")
		}
		time.Sleep(10 * time.Millisecond)
		st.Info(ctx)
	}
	// The process dies here, without Flush.
	_, resume, err := Open(ctx, js, options(2, 10))
	if err != nil {
		t.Fatal(err)
	}
	if resume.Covers(0, 10, 0, ".") {
		t.Fatal("an event that never left its batch counts as published")
	}
	if !resume.Covers(1, 10, maxBatchEvents, ".") || resume.Covers(1, 11, 0, ".") {
		t.Fatalf("partition 1 resumes at %+v", resume[1])
	}
}

// Every message fits the server's max_payload (1 MiB, the default): a
// batch is published before an event would overflow it, and an event too
// large for a batch of its own travels in fragments, in order with its
// partition's other events, also across a restart.
func TestLargeEvents(t *testing.T) {
	ctx := context.Background()
	js := setup(t, -1)
	p, _, err := Open(ctx, js, options(1, 4))
	if err != nil {
		t.Fatal(err)
	}
	sizes := []int{40 << 10, 40 << 10, 900 << 10, 10, 3 << 20, 40 << 10, 20 << 20}
	for i, n := range sizes {
		ev := event(7, uint32(i))
		ev.Record = bytes.Repeat([]byte{'a' + byte(i)}, n)
		if err := p.Add(ctx, 0, ev); err != nil {
			t.Fatal(err)
		}
	}
	p.Commit(ctx, 8)
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if p.Flushed() != 8 {
		t.Fatalf("flushed %d", p.Flushed())
	}

	st, _ := js.Stream(ctx, "S")
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	limit := int(js.Conn().MaxPayload())
	next := 0
	for next < len(sizes) {
		m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatalf("after %d events: %v", next, err)
		}
		if n := len(m.Data()); n > limit || strings.Contains(m.Subject(), "changes") && n > maxBatchBytes {
			t.Fatalf("message on %s holds %d bytes", m.Subject(), n)
		}
		if strings.Contains(m.Subject(), "fragments") {
			continue
		}
		data, err := fragment.Payload(ctx, st, m.Headers(), m.Data())
		if err != nil {
			t.Fatal(err)
		}
		evs, err := change.Events(data)
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range evs {
			if int(ev.CommitIdx) != next || len(ev.Record) != sizes[next] || ev.Record[0] != 'a'+byte(next) {
				t.Fatalf("event %d of %d bytes, want event %d of %d", ev.CommitIdx, len(ev.Record), next, sizes[next])
			}
			next++
		}
	}
	// The last message names fragments: a restart reads them to resume.
	_, resume, err := Open(ctx, js, options(1, 4))
	if err != nil {
		t.Fatal(err)
	}
	if !resume.Covers(0, 7, uint32(len(sizes)-1), ".") || resume.Covers(0, 8, 0, ".") {
		t.Fatalf("resumes at %+v", resume[0])
	}
}

// The copies of a TRUNCATE of several tables share a position: after a
// restart, those of the tables after the last one in the stream are not
// taken for published.
func TestResumeWithinATruncate(t *testing.T) {
	ctx := context.Background()
	js := setup(t, -1)
	p, _, err := Open(ctx, js, options(1, 2))
	if err != nil {
		t.Fatal(err)
	}
	truncate := func(table string) *sluicev1.ChangeEvent {
		return &sluicev1.ChangeEvent{Action: sluicev1.Action_ACTION_TRUNCATE, Schema: "public", Table: table, CommitLsn: 10, CommitIdx: 4}
	}
	for _, table := range []string{"a", "b"} {
		if err := p.Add(ctx, 0, truncate(table)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// The process died before table c's copy was published.
	_, resume, err := Open(ctx, js, options(1, 2))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		table string
		want  bool
	}{{"public.a", true}, {"public.b", true}, {"public.c", false}} {
		if got := resume.Covers(0, 10, 4, c.table); got != c.want {
			t.Errorf("%s: covered %v, want %v", c.table, got, c.want)
		}
	}
	if resume.Covers(0, 10, 5, "public.d") || !resume.Covers(0, 10, 3, "public.x") {
		t.Error("positions around the truncate")
	}
}

// The copies of a TRUNCATE of several tables share a position: published
// in batches of their own, they must not be taken for resends of each
// other (JetStream drops a message whose id it saw), or the later tables'
// truncates are lost without an error.
func TestTruncateCopiesAreNotResends(t *testing.T) {
	ctx := context.Background()
	js := setup(t, -1)
	p, _, err := Open(ctx, js, options(1, 2))
	if err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{"a", "b"} {
		ev := &sluicev1.ChangeEvent{Action: sluicev1.Action_ACTION_TRUNCATE, Schema: "public", Table: table, CommitLsn: 10, CommitIdx: 4}
		if err := p.Add(ctx, 0, ev); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, "S")
	if err != nil {
		t.Fatal(err)
	}
	if info, err := st.Info(ctx); err != nil || info.State.Msgs != 2 {
		t.Fatalf("the stream holds %d messages, want 2 (%v)", info.State.Msgs, err)
	}
}

// Two publishers on one stream, as a paused former leader and its successor
// are: the rival's message takes the sequence the other's first publish
// expected, so that one fails, but its second and third expect exactly the
// sequences that follow, and are stored without the first: orphans, which
// the next Open (a restart) must delete before it reads the positions, or
// it would take the first message's events for published.
func TestOrphansDeleted(t *testing.T) {
	ctx := context.Background()
	js := setupFar(t, -1) // the three messages below are in flight at once
	rival, _, err := Open(ctx, js, options(4, 10))
	if err != nil {
		t.Fatal(err)
	}
	p, _, err := Open(ctx, js, options(4, 10))
	if err != nil {
		t.Fatal(err)
	}
	rival.Add(ctx, 0, event(5, 0))
	rival.Commit(ctx, 50)
	rival.Flush(ctx)
	waitFlushed(t, rival, 50)
	for i := range 3 {
		p.Add(ctx, 1+i, event(1, uint32(i)))
		p.Flush(ctx) // one message each, all in flight at once
	}
	if err := p.Close(ctx); err == nil {
		t.Fatal("the broken chain published without an error")
	}
	st, err := js.Stream(ctx, "S")
	if err != nil {
		t.Fatal(err)
	}
	msgs := func() uint64 {
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Msgs
	}
	if n := msgs(); n != 3 {
		t.Fatalf("the stream holds %d messages, want the rival's and two orphans", n)
	}
	again, resume, err := Open(ctx, js, options(4, 10))
	if err != nil {
		t.Fatal(err)
	}
	if n := msgs(); n != 1 {
		t.Fatalf("after Open the stream holds %d messages, want only the rival's", n)
	}
	if resume.Covers(2, 1, 1, ".") || resume.Covers(3, 1, 2, ".") || !resume.Covers(0, 5, 0, ".") {
		t.Fatalf("positions %+v count the orphans, or miss the rival's", resume)
	}
	// The restarted publisher goes on after the deleted ones.
	again.Add(ctx, 1, event(1, 0))
	again.Commit(ctx, 60)
	again.Flush(ctx)
	waitFlushed(t, again, 60)
	if err := again.Close(ctx); err != nil {
		t.Fatal(err)
	}
	rival.Close(ctx)
}

// Every event published counts in the commit-to-stream histogram, from
// its own commit: with the writer's commit-to-Redis, it splits a change's
// way at the stream.
func TestCommitToStreamObserved(t *testing.T) {
	ctx := context.Background()
	js := setup(t, -1)
	p, _, err := Open(ctx, js, options(2, 10))
	if err != nil {
		t.Fatal(err)
	}
	count, sum := histogram(t)
	committed := time.Now().Add(-2 * time.Second)
	for i := range uint32(3) {
		ev := event(5, i)
		ev.CommitTimestampUs = committed.UnixMicro()
		if err := p.Add(ctx, int(i%2), ev); err != nil {
			t.Fatal(err)
		}
	}
	p.Commit(ctx, 6)
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	n, s := histogram(t)
	if n-count != 3 || s-sum < 6 || s-sum > 6+3*time.Since(committed).Seconds() {
		t.Fatalf("histogram gained %d samples summing to %.1fs, want 3 of 2s or more each", n-count, s-sum)
	}
}

func histogram(t *testing.T) (count uint64, sum float64) {
	t.Helper()
	var m dto.Metric
	if err := commitToStream.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
}

// BenchmarkAdd publishes b.N events of about 270 bytes, as a catch-up
// does: over 16 partitions, every batch filled. Its allocations are
// capture's own and the embedded server's.
func BenchmarkAdd(b *testing.B) {
	ctx := context.Background()
	p, _, err := Open(ctx, setup(b, -1), options(16, 64))
	if err != nil {
		b.Fatal(err)
	}
	record := []byte(`{"id":123456,"account_id":23456,"status":"updated","amount":1234.56,"updated_at":"2026-12-07T22:04:00.123456+00:00","attrs":{"sku":"0123456789abcdef","qty":7}}`)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		ev := event(uint64(i/100+1), uint32(i%100))
		ev.Schema, ev.Table, ev.Record, ev.PkValues = "public", "bench_rows", record, []string{strconv.Itoa(i)}
		if err := p.Add(ctx, i%16, ev); err != nil {
			b.Fatal(err)
		}
	}
	p.Commit(ctx, uint64(b.N/100+2))
	if err := p.Close(ctx); err != nil {
		b.Fatal(err)
	}
}

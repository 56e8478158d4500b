package rediswriter

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sluicehq/sluice/pkg/change"
	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/fragment"
	"github.com/sluicehq/sluice/pkg/testenv"
	"github.com/sluicehq/sluice/pkg/topology"
	sluicev1 "github.com/sluicehq/sluice/proto/sluice/v1"
	"github.com/sluicehq/sluice/services/redis-writer/internal/store"
)

// renewedLease ran out once and holds again: the writer slept through it.
type renewedLease struct{}

func (renewedLease) Lease() (time.Time, uint64) { return time.Now().Add(time.Minute), 1 }

// queuedMsg is a received change that waits in the queue.
type queuedMsg struct {
	jetstream.Msg
	naks int
}

func (m *queuedMsg) Subject() string { return "sluice.changes.3" }
func (m *queuedMsg) Data() []byte    { return nil }
func (m *queuedMsg) Nak() error      { m.naks++; return nil }

// A lease that ran out while changes waited hands them back, even when it
// holds again by the time the loop looks: others may have taken the
// partitions meanwhile. The loop then has nothing to apply.
func TestWorkAfterALapsedLease(t *testing.T) {
	sink := config.Sink{Name: "s", BatchSize: 100}
	topo := topology.New(config.NATS{Partitions: 8})
	s := &Service{sink: &sink, log: zap.NewNop(), topo: topo}
	held := &holding{msgs: map[jetstream.Msg]struct{}{}}
	msgs := []*queuedMsg{{}, {}}
	l := &loop{Service: s, group: renewedLease{}, held: held, msgs: make(chan delivery),
		cons:  newConsumers(nil, nil, topo, sink, nil, time.Second, s.log, &s.warn),
		lanes: []*lane{{a: &applier{Service: s, holding: held, fencedOut: map[int]bool{}}}}}
	for _, m := range msgs {
		held.add(m)
		l.queue = append(l.queue, m)
	}

	l.work(context.Background())

	if len(l.queue) != 0 {
		t.Errorf("%d changes still queued", len(l.queue))
	}
	for i, m := range msgs {
		if m.naks != 1 {
			t.Errorf("change %d handed back %d times, want once", i, m.naks)
		}
	}
	if l.lapses.Load() != 1 {
		t.Errorf("lapses seen = %d, want 1", l.lapses.Load())
	}
}

// streamMsg is a message of the change stream, as a partition consumer
// delivers it.
type streamMsg struct {
	jetstream.Msg
	subject string
	data    []byte
	header  nats.Header
	acks    int
}

func (m *streamMsg) Subject() string      { return m.subject }
func (m *streamMsg) Data() []byte         { return m.data }
func (m *streamMsg) Headers() nats.Header { return m.header }
func (m *streamMsg) Ack() error           { m.acks++; return nil }

// heldLease holds, and never ran out.
type heldLease struct{}

func (heldLease) Lease() (time.Time, uint64) { return time.Now().Add(time.Minute), 0 }

// service is the writer of sink "s" of the table public.users, with
// batches of one change, and a store of its Redis.
func service(t *testing.T, log *zap.Logger) (*Service, *store.Store) {
	t.Helper()
	rd := testenv.NewRedis(t)
	cfg := &config.Config{
		Postgres: config.Postgres{URL: "postgres://localhost/unused", Tables: []string{"public.users"}},
		Sinks: []config.Sink{{Name: "s", BatchSize: 1,
			Destination: config.Destination{Type: "redis_string", Host: "127.0.0.1", Port: rd.Port}}},
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, "s", log)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(context.Background(), s.sink.Destination)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return s, st
}

// Lanes apply batches of different partitions at once, never two of one
// partition: a partition's changes are written in order, one batch after
// the other, and each message is acknowledged once.
func TestLanesTakeDisjointPartitions(t *testing.T) {
	ctx := context.Background()
	s, st := service(t, zap.NewNop())
	held := &holding{msgs: map[jetstream.Msg]struct{}{}}
	l := &loop{Service: s, st: st, group: heldLease{}, held: held, done: make(chan *lane, lanes),
		cons: newConsumers(nil, st, s.topo, *s.sink, nil, time.Second, s.log, &s.warn)}
	m := newSinkMetrics("s")
	for range lanes {
		render, err := s.renderer()
		if err != nil {
			t.Fatal(err)
		}
		l.lanes = append(l.lanes, &lane{a: &applier{Service: s, store: st, m: m, holding: held, render: render, fencedOut: map[int]bool{}}})
	}

	msg := func(id, lsn int) *streamMsg {
		pk := []string{strconv.Itoa(id)}
		ev := &sluicev1.ChangeEvent{Action: sluicev1.Action_ACTION_UPDATE, Schema: "public", Table: "users", PkColumns: []string{"id"}, PkValues: pk,
			Record: []byte(`{"id":` + pk[0] + `,"lsn":` + strconv.Itoa(lsn) + `}`), CommitLsn: uint64(lsn)}
		data, err := change.AppendEvent(nil, ev)
		if err != nil {
			t.Fatal(err)
		}
		return &streamMsg{subject: s.topo.Subject(s.topo.Partition("public", "users", pk)), data: data}
	}
	// Two rows of one partition, one of another.
	p := partition(msg(1, 0))
	other := 2
	for partition(msg(other, 0)) == p {
		other++
	}
	a1, a2, b := msg(1, 10), msg(1, 20), msg(other, 30)
	for _, m := range []*streamMsg{a1, a2, b} {
		held.add(m)
		l.queue = append(l.queue, m)
	}

	l.work(ctx) // a1, on the first lane
	l.work(ctx) // not a2: its partition is in flight; b, on the second
	q := partition(b)
	if !l.lanes[0].busy[p] || !l.lanes[1].busy[q] || len(l.lanes[1].busy) != 1 || len(l.queue) != 1 || l.queue[0] != a2 {
		t.Fatalf("lanes hold %v and %v, queue %d messages: want partition %d, then %d, and a2 queued", l.lanes[0].busy, l.lanes[1].busy, len(l.queue), p, q)
	}
	l.await()
	l.work(ctx) // a2, now that a1 is written
	if l.lanes[0].busy == nil && l.lanes[1].busy == nil {
		t.Fatal("a2 did not start once its partition was free")
	}
	// While a2 is in flight, nothing else of its partition may start.
	l.queue = append(l.queue, msg(1, 5))
	held.add(l.queue[0])
	l.work(ctx)
	if !l.stalled || len(l.queue) != 1 {
		t.Fatalf("a change of a partition in flight started on another lane (stalled %v, %d queued)", l.stalled, len(l.queue))
	}
	l.await()
	l.work(ctx)
	l.await()

	for _, m := range []*streamMsg{a1, a2, b} {
		if m.acks != 1 {
			t.Errorf("message of %s acknowledged %d times, want once", m.subject, m.acks)
		}
	}
	for id, want := range map[int]string{1: `"lsn":20`, other: `"lsn":30`} {
		if v := st.Client().Get(ctx, "sequin:users:"+strconv.Itoa(id)).Val(); !strings.Contains(v, want) {
			t.Errorf("row %d's key holds %s, want its change with %s", id, v, want)
		}
	}
}

// A message in fragments is a batch of its own: met after others, it is
// passed over, and so is everything after it of its partition, which
// would otherwise be written before it.
func TestBatchPassesOverAFragmentsPartition(t *testing.T) {
	l := &loop{Service: &Service{sink: &config.Sink{BatchSize: 100}}, lanes: []*lane{{}}}
	msg := func(p int, fragments bool) *streamMsg {
		m := &streamMsg{subject: "sluice.changes." + strconv.Itoa(p)}
		if fragments {
			m.header = nats.Header{fragment.Header: []string{"3"}}
		}
		return m
	}
	a, frag, b, c := msg(1, false), msg(2, true), msg(2, false), msg(3, false)
	l.queue = []jetstream.Msg{a, frag, b, c}
	batch, partitions := l.batch()
	if len(batch) != 2 || batch[0] != a || batch[1] != c || !partitions[1] || !partitions[3] || partitions[2] {
		t.Fatalf("batch %v of partitions %v, want a and c", batch, partitions)
	}
	if len(l.queue) != 2 || l.queue[0] != frag || l.queue[1] != b {
		t.Fatalf("queue %v, want the fragments, then b", l.queue)
	}
	// Alone at the head of the queue, the fragments are a batch of their own.
	if batch, _ = l.batch(); len(batch) != 1 || batch[0] != frag {
		t.Fatalf("batch %v, want the fragments alone", batch)
	}
}

// A row's old key, deleted once its primary key changed, is the row's own
// partition's otherwise: the writer's commands say which, for the script
// to break that partition's transactions (see the store's touches).
func TestOldKeyNamesItsPartition(t *testing.T) {
	s, _ := service(t, zap.NewNop())
	r, err := s.renderer()
	if err != nil {
		t.Fatal(err)
	}
	old := []string{"4"}
	cmds, err := r.Append(nil, &sluicev1.ChangeEvent{Action: sluicev1.Action_ACTION_UPDATE, Schema: "public", Table: "users",
		PkColumns: []string{"id"}, PkValues: []string{"40"}, OldPkValues: old, Record: []byte(`{"id":40}`)})
	if err != nil {
		t.Fatal(err)
	}
	if len(cmds) != 2 || !cmds[0].Shared || cmds[0].Home != s.topo.Partition("public", "users", old) {
		t.Fatalf("the old key's command %+v, want it shared, of partition %d", cmds[0], s.topo.Partition("public", "users", old))
	}
}

// A Redis check that shutdown cuts short is no failure to warn about; one
// that fails while the writer runs is.
func TestRedisCheckCutShortByShutdown(t *testing.T) {
	core, logs := observer.New(zap.WarnLevel)
	s, st := service(t, zap.New(core))
	l := &loop{Service: s, st: st}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	l.checkRedis(ctx)
	if logs.Len() != 0 {
		t.Fatalf("warned of a check cut short by shutdown: %v", logs.All()[0].ContextMap())
	}
	st.Close()
	l.checkRedis(context.Background())
	if logs.FilterMessageSnippet("check whether redis lost its data").Len() != 1 {
		t.Fatalf("a failed check was not reported: %d warnings", logs.Len())
	}
}

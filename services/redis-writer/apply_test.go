package rediswriter

import (
	"context"
	"encoding/json"
	"strconv"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/sluicehq/sluice/pkg/change"
	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/fragment"
	"github.com/sluicehq/sluice/pkg/testenv"
	sluicev1 "github.com/sluicehq/sluice/proto/sluice/v1"
	"github.com/sluicehq/sluice/services/redis-writer/internal/store"
)

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

// The next batch is decoded and rendered while Redis applies the one
// before; each message gets its own changes, even when the queue the
// next batch came from changed in place meanwhile, and a message that
// needs more than itself to be read is left to be read in turn.
func TestReadAhead(t *testing.T) {
	ctx := context.Background()
	rd := testenv.NewRedis(t)
	cfg := &config.Config{
		Postgres: config.Postgres{URL: "postgres://localhost/unused", Tables: []string{"public.users"}},
		Sinks:    []config.Sink{{Name: "s", Destination: config.Destination{Type: "redis_string", Host: "127.0.0.1", Port: rd.Port}}},
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, "s", zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(ctx, s.sink.Destination)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	held := &holding{msgs: map[jetstream.Msg]struct{}{}}
	a := &applier{Service: s, store: st, m: newSinkMetrics("s"), holding: held, fencedOut: map[int]bool{}}

	msg := func(id int) *streamMsg {
		pk := []string{strconv.Itoa(id)}
		ev := &sluicev1.ChangeEvent{Action: sluicev1.Action_ACTION_READ, Schema: "public", Table: "users", PkColumns: []string{"id"}, PkValues: pk,
			Record: []byte(`{"id":` + pk[0] + `}`), CommitLsn: 100}
		data, err := change.AppendEvent(nil, ev)
		if err != nil {
			t.Fatal(err)
		}
		return &streamMsg{subject: s.topo.Subject(s.topo.Partition("public", "users", pk)), data: data}
	}
	first := []jetstream.Msg{msg(1), msg(2)}
	queue := []jetstream.Msg{msg(3), msg(4), msg(5)}
	// A message in fragments is read from the stream, which only read
	// does.
	queue[2].(*streamMsg).header = nats.Header{fragment.Header: []string{"7"}}

	if err := a.apply(ctx, first, queue); err != nil {
		t.Fatal(err)
	}
	if a.ahead == nil {
		t.Fatal("nothing read ahead")
	}
	for i, items := range a.ahead.items[:2] {
		if len(items) != 1 || len(items[0].cmds) != 1 || items[0].cmds[0].Key != "sequin:users:"+strconv.Itoa(3+i) {
			t.Errorf("message %d read ahead as %+v", i, items)
		}
	}
	if a.ahead.items[2] != nil {
		t.Errorf("a message in fragments was read ahead: %+v", a.ahead.items[2])
	}

	// The loop's queue changes in place: the first message is handed
	// back (its partition given up, say), the others move up.
	copy(queue, queue[1:])
	if err := a.apply(ctx, queue[:1], nil); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[int]bool{1: true, 2: true, 3: false, 4: true} {
		v, err := rd.Client().Get(ctx, "sequin:users:"+strconv.Itoa(id)).Bytes()
		var m struct{ Record struct{ ID int } }
		switch {
		case !want && err == nil:
			t.Errorf("key of row %d, whose message was handed back, holds %s", id, v)
		case want && (err != nil || json.Unmarshal(v, &m) != nil || m.Record.ID != id):
			t.Errorf("key of row %d holds %s (%v)", id, v, err)
		}
	}
	for i, m := range append(first, queue[0]) {
		if n := m.(*streamMsg).acks; n != 1 {
			t.Errorf("message %d acknowledged %d times, want once", i, n)
		}
	}
}

package rediswriter

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/topology"
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
		cons: newConsumers(nil, nil, topo, sink, nil, time.Second, s.log, &s.warn),
		a:    &applier{Service: s, holding: held, fencedOut: map[int]bool{}}}
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
	if l.lapses != 1 {
		t.Errorf("lapses seen = %d, want 1", l.lapses)
	}
}

// Package backlog reads from JetStream what each sink has yet to apply:
// the messages of each partition its writers have not acknowledged, the
// age of the oldest, its dead letters and its live writers. It reads the
// stream's own records, so the answer does not depend on which writers are
// alive; capture exports it as metrics and `sluice status` prints it.
package backlog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluicehq/sluice/pkg/deadletter"
	"github.com/sluicehq/sluice/pkg/topology"
)

// Sink is where one sink stands.
type Sink struct {
	Name       string      `json:"name"`
	Partitions []Partition `json:"partitions"`
	// DeadLetters waiting in the dead-letter stream.
	DeadLetters uint64 `json:"dead_letters"`
	// Writers are the live members of the sink's writer group.
	Writers []string `json:"writers"`
	// Consuming maps each live writer to the partitions it consumed at its
	// last refresh of its membership (a few seconds old at most).
	Consuming map[string][]int `json:"consuming"`
}

// Partition is one partition of a sink.
type Partition struct {
	Partition int `json:"partition"`
	// Consumer is false until a writer or capture created the partition's
	// durable consumer.
	Consumer bool `json:"consumer"`
	// Pending counts stream messages (each holds one or more changes, of
	// every table of the partition) not yet acknowledged by the sink:
	// waiting, or delivered and in flight.
	Pending uint64 `json:"pending_messages"`
	// Oldest is when the oldest of them was published; zero when none.
	Oldest time.Time `json:"oldest_unapplied,omitzero"`
	// Delivered and AckFloor are the stream sequences of the last message
	// delivered and of the last of those acknowledged in order.
	Delivered uint64 `json:"delivered_seq"`
	AckFloor  uint64 `json:"ack_floor_seq"`
}

// Pending sums the sink's pending messages.
func (s Sink) Pending() uint64 {
	var n uint64
	for _, p := range s.Partitions {
		n += p.Pending
	}
	return n
}

// Oldest is the oldest unapplied message of any partition; zero when none.
func (s Sink) Oldest() time.Time {
	var t time.Time
	for _, p := range s.Partitions {
		if !p.Oldest.IsZero() && (t.IsZero() || p.Oldest.Before(t)) {
			t = p.Oldest
		}
	}
	return t
}

// Applied says whether the sink acknowledged every message of the stream
// up to sequence seq.
func (s Sink) Applied(seq uint64) bool {
	for _, p := range s.Partitions {
		if !p.Consumer || p.Pending > 0 && p.AckFloor < seq {
			return false
		}
	}
	return true
}

// Read reads where each of sinks stands in the stream st.
func Read(ctx context.Context, js jetstream.JetStream, st jetstream.Stream, topo topology.Topology, sinks []string) ([]Sink, error) {
	letters, err := deadLetters(ctx, js, topo)
	if err != nil {
		return nil, err
	}
	out := make([]Sink, 0, len(sinks))
	for _, name := range sinks {
		s := Sink{Name: name, DeadLetters: letters[topo.Stream+".dlq."+name]}
		for p := range topo.Partitions {
			part, err := partition(ctx, st, topo, name, p)
			if err != nil {
				return nil, err
			}
			s.Partitions = append(s.Partitions, part)
		}
		if s.Writers, s.Consuming, err = writers(ctx, js, topo, name); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

func partition(ctx context.Context, st jetstream.Stream, topo topology.Topology, sink string, p int) (Partition, error) {
	part := Partition{Partition: p}
	c, err := st.Consumer(ctx, topology.ConsumerName(sink, p))
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return part, nil
	}
	if err != nil {
		return part, fmt.Errorf("read consumer %s: %w", topology.ConsumerName(sink, p), err)
	}
	ci := c.CachedInfo()
	part.Consumer = true
	part.Pending = ci.NumPending + uint64(ci.NumAckPending)
	part.Delivered, part.AckFloor = ci.Delivered.Stream, ci.AckFloor.Stream
	if part.Pending == 0 {
		return part, nil
	}
	// The oldest unapplied message is the partition's first after the
	// acknowledged floor.
	m, err := st.GetMsg(ctx, ci.AckFloor.Stream+1, jetstream.WithGetMsgSubject(topo.Subject(p)))
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		// Acknowledged meanwhile.
	case err != nil:
		return part, fmt.Errorf("read the oldest message of partition %d: %w", p, err)
	default:
		part.Oldest = m.Time
	}
	return part, nil
}

// deadLetters counts the letters waiting per dead-letter subject.
func deadLetters(ctx context.Context, js jetstream.JetStream, topo topology.Topology) (map[string]uint64, error) {
	dlq, err := js.Stream(ctx, deadletter.StreamName(topo))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil // no letter yet
	}
	if err != nil {
		return nil, fmt.Errorf("read stream %s: %w", deadletter.StreamName(topo), err)
	}
	info, err := dlq.Info(ctx, jetstream.WithSubjectFilter(topo.Stream+".dlq.*"))
	if err != nil {
		return nil, fmt.Errorf("read stream %s: %w", deadletter.StreamName(topo), err)
	}
	return info.State.Subjects, nil
}

// writers lists the live members of a sink's group, sorted, and what each
// says it consumes.
func writers(ctx context.Context, js jetstream.JetStream, topo topology.Topology, sink string) ([]string, map[string][]int, error) {
	kv, err := js.KeyValue(ctx, topo.MembersBucket(sink))
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil, nil // no writer ever
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read the writers of sink %s: %w", sink, err)
	}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("read the writers of sink %s: %w", sink, err)
	}
	defer w.Stop()
	var members []string
	consuming := map[string][]int{}
	for {
		select {
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("read the writers of sink %s: %w", sink, ctx.Err())
		case e := <-w.Updates():
			if e == nil { // all read
				slices.Sort(members)
				return members, consuming, nil
			}
			if e.Operation() != jetstream.KeyValuePut {
				continue
			}
			members = append(members, e.Key())
			var m topology.Member
			if json.Unmarshal(e.Value(), &m) == nil && m.Consuming != nil {
				consuming[e.Key()] = m.Consuming
			}
		}
	}
}

// Package deadletter keeps the changes a sink could not apply: a stream per
// configuration, a subject per sink, the original event as the payload and
// why it failed in the headers. Writers put letters; `sluice dlq` lists,
// replays and drops them. A letter too large for one message keeps its
// payload in fragments (package fragment) on the sink's fragment subject.
package deadletter

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluicehq/sluice/pkg/fragment"
	"github.com/sluicehq/sluice/pkg/topology"
)

// Headers of a letter.
const (
	HeaderSink      = "Sluice-Sink"
	HeaderKey       = "Sluice-Key"
	HeaderError     = "Sluice-Error"
	HeaderAttempts  = "Sluice-Attempts"
	HeaderStreamSeq = "Sluice-Stream-Seq"
)

// Letter is one change a sink gave up on.
type Letter struct {
	Seq       uint64 // in the dead-letter stream
	Time      time.Time
	Sink      string
	Key       string // the Redis key, when known
	Error     string
	Attempts  int
	StreamSeq uint64 // in the change stream
	Data      []byte // the ChangeEvent
	fragments []uint64
}

// Box is the dead-letter stream.
type Box struct {
	js     jetstream.JetStream
	stream jetstream.Stream
	topo   topology.Topology
	room   int // the largest payload one message carries
}

// StreamName is the dead-letter stream of a change stream.
func StreamName(t topology.Topology) string { return t.Stream + "_DLQ" }

func subject(t topology.Topology, sink string) string { return t.Stream + ".dlq." + sink }

func fragmentSubject(t topology.Topology, sink string) string {
	return t.Stream + ".dlqfragments." + sink
}

// Open creates the dead-letter stream when missing.
func Open(ctx context.Context, js jetstream.JetStream, t topology.Topology) (*Box, error) {
	st, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        StreamName(t),
		Description: "Sluice changes that sinks could not apply",
		Subjects:    []string{t.Stream + ".dlq.*", t.Stream + ".dlqfragments.*"},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardNew,
		MaxAge:      t.MaxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    t.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("create dead-letter stream %s: %w", StreamName(t), err)
	}
	return &Box{js: js, stream: st, topo: t, room: fragment.Room(js.Conn().MaxPayload())}, nil
}

// Put stores a letter and waits for JetStream to confirm it.
func (b *Box) Put(ctx context.Context, l Letter) error {
	msg := &nats.Msg{Subject: subject(b.topo, l.Sink), Data: l.Data, Header: nats.Header{}}
	msg.Header.Set(HeaderSink, l.Sink)
	msg.Header.Set(HeaderKey, l.Key)
	msg.Header.Set(HeaderError, l.Error)
	msg.Header.Set(HeaderAttempts, strconv.Itoa(l.Attempts))
	msg.Header.Set(HeaderStreamSeq, strconv.FormatUint(l.StreamSeq, 10))
	if _, err := fragment.Publish(ctx, b.js, msg, fragmentSubject(b.topo, l.Sink), b.room); err != nil {
		return fmt.Errorf("dead-letter a change of sink %s: %w", l.Sink, err)
	}
	return nil
}

// List returns a sink's letters, oldest first.
func (b *Box) List(ctx context.Context, sink string) ([]Letter, error) {
	subj := subject(b.topo, sink)
	info, err := b.stream.Info(ctx, jetstream.WithSubjectFilter(subj))
	if err != nil {
		return nil, fmt.Errorf("read dead-letter stream: %w", err)
	}
	want := int(info.State.Subjects[subj])
	if want == 0 {
		return nil, nil
	}
	cons, err := b.stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subj}})
	if err != nil {
		return nil, fmt.Errorf("read dead-letter stream: %w", err)
	}
	letters := make([]Letter, 0, want)
	for len(letters) < want {
		batch, err := cons.Fetch(want-len(letters), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return nil, fmt.Errorf("read dead-letter stream: %w", err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			l, err := b.letter(ctx, m)
			if err != nil {
				return nil, err
			}
			letters = append(letters, l)
		}
		if n == 0 { // deleted meanwhile
			break
		}
	}
	return letters, nil
}

func (b *Box) letter(ctx context.Context, m jetstream.Msg) (Letter, error) {
	h := m.Headers()
	l := Letter{Sink: h.Get(HeaderSink), Key: h.Get(HeaderKey), Error: h.Get(HeaderError)}
	l.Attempts, _ = strconv.Atoi(h.Get(HeaderAttempts))
	l.StreamSeq, _ = strconv.ParseUint(h.Get(HeaderStreamSeq), 10, 64)
	if md, err := m.Metadata(); err == nil {
		l.Seq, l.Time = md.Sequence.Stream, md.Timestamp
	}
	var err error
	if l.fragments, err = fragment.Seqs(h); err != nil {
		return l, fmt.Errorf("dead letter %d: %w", l.Seq, err)
	}
	// A letter whose fragments are gone keeps no payload; it can still be
	// listed and dropped.
	if l.Data, err = fragment.Payload(ctx, b.stream, h, m.Data()); err != nil && !errors.Is(err, fragment.ErrMissing) {
		return l, fmt.Errorf("read dead letter %d: %w", l.Seq, err)
	}
	return l, nil
}

// Delete removes a letter, with its fragments.
func (b *Box) Delete(ctx context.Context, l Letter) error {
	for _, seq := range append(l.fragments, l.Seq) {
		if err := b.stream.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return fmt.Errorf("delete dead letter %d: %w", l.Seq, err)
		}
	}
	return nil
}

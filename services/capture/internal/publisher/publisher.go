// Package publisher publishes change events to the JetStream stream
// asynchronously and tracks how far the WAL is safely stored.
//
// Ordering and gaps: every message carries the stream sequence it expects to
// follow (Nats-Expected-Last-Sequence). If one publish fails, every later one
// fails too, so the stream never holds an event whose predecessor is missing,
// and a restart can resume right after the stream's last event.
package publisher

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	sluicev1 "github.com/sluicehq/sluice/proto/sluice/v1"
)

// Position is the last event the stream holds.
type Position struct {
	LSN uint64
	Idx uint32
	// Valid is false when the stream holds no event to compare with.
	Valid bool
}

// Covers reports whether the event at (lsn, idx) is at or before p, that is
// already in the stream.
func (p Position) Covers(lsn uint64, idx uint32) bool {
	return p.Valid && (lsn < p.LSN || lsn == p.LSN && idx <= p.Idx)
}

type item struct {
	fut    jetstream.PubAckFuture // nil for a WAL position marker
	lsn    uint64
	sent   time.Time
	notify []chan struct{} // closed once the marker is passed
}

// Publisher is one session's publisher. It is not safe for concurrent use,
// except Flushed.
type Publisher struct {
	js      jetstream.JetStream
	items   chan item
	lastSeq uint64
	flushed atomic.Uint64
	failed  chan struct{}
	errOnce sync.Once
	err     error
	done    chan struct{}
}

// Open reads the stream's last event and starts a publisher that keeps at
// most maxInFlight messages unacknowledged.
func Open(ctx context.Context, js jetstream.JetStream, stream string, maxInFlight int) (*Publisher, Position, error) {
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, Position{}, fmt.Errorf("open stream %s: %w", stream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return nil, Position{}, fmt.Errorf("read stream %s: %w", stream, err)
	}
	var pos Position
	if last := info.State.LastSeq; last > 0 {
		msg, err := st.GetMsg(ctx, last)
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound): // expired or purged: nothing to compare with
		case err != nil:
			return nil, Position{}, fmt.Errorf("read last event of stream %s: %w", stream, err)
		default:
			var ev sluicev1.ChangeEvent
			if err := proto.Unmarshal(msg.Data, &ev); err != nil {
				return nil, Position{}, fmt.Errorf("decode last event of stream %s (seq %d): %w", stream, last, err)
			}
			pos = Position{LSN: ev.CommitLsn, Idx: ev.CommitIdx, Valid: true}
		}
	}
	p := &Publisher{
		js:      js,
		items:   make(chan item, maxInFlight),
		lastSeq: info.State.LastSeq,
		failed:  make(chan struct{}),
		done:    make(chan struct{}),
	}
	go p.track()
	return p, pos, nil
}

// Publish sends one event without waiting for its acknowledgement. It
// blocks while maxInFlight events are unacknowledged, and returns the first
// failure of any earlier publish.
func (p *Publisher) Publish(ctx context.Context, subject, msgID string, data []byte) error {
	select {
	case <-p.failed:
		return p.err
	default:
	}
	msg := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
	fut, err := p.js.PublishMsgAsync(msg, jetstream.WithMsgID(msgID), jetstream.WithExpectLastSequence(p.lastSeq))
	if err != nil {
		return fmt.Errorf("publish change %s (%d bytes) to %s: %w", msgID, len(data), subject, err)
	}
	p.lastSeq++
	inFlight.Inc()
	return p.enqueue(ctx, item{fut: fut, sent: time.Now()})
}

// Commit marks lsn as safely delivered once every event published before
// the call is acknowledged; then it closes the notify channels. After a
// failure they are never closed.
func (p *Publisher) Commit(ctx context.Context, lsn uint64, notify ...chan struct{}) error {
	return p.enqueue(ctx, item{lsn: lsn, notify: notify})
}

func (p *Publisher) enqueue(ctx context.Context, it item) error {
	select {
	case p.items <- it:
		return nil
	case <-p.failed:
		return p.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Flushed is the WAL position up to which every event is in the stream.
func (p *Publisher) Flushed() uint64 { return p.flushed.Load() }

// Close waits for the acknowledgements of everything published, or for ctx,
// and returns the first failure.
func (p *Publisher) Close(ctx context.Context) error {
	close(p.items)
	select {
	case <-p.done:
	case <-ctx.Done():
		return fmt.Errorf("wait for publish acknowledgements: %w", ctx.Err())
	}
	select {
	case <-p.failed:
		return p.err
	default:
		return nil
	}
}

// track resolves acknowledgements in publish order. After a failure it only
// drains, so that Flushed never passes an event that is not stored.
func (p *Publisher) track() {
	defer close(p.done)
	for it := range p.items {
		if it.fut == nil {
			if !p.ok() {
				continue
			}
			if it.lsn > p.flushed.Load() {
				p.flushed.Store(it.lsn)
				confirmed.Set(float64(it.lsn))
			}
			for _, c := range it.notify {
				close(c)
			}
			continue
		}
		select {
		case <-it.fut.Ok():
			published.Inc()
			publishSeconds.Observe(time.Since(it.sent).Seconds())
		case err := <-it.fut.Err():
			p.fail(fmt.Errorf("publish change %s: %w", it.fut.Msg().Header.Get(jetstream.MsgIDHeader), err))
		}
		inFlight.Dec()
	}
}

func (p *Publisher) ok() bool {
	select {
	case <-p.failed:
		return false
	default:
		return true
	}
}

func (p *Publisher) fail(err error) {
	p.errOnce.Do(func() {
		p.err = err
		close(p.failed)
	})
}

// Package publisher publishes change events to the JetStream stream and
// tracks how far the WAL is safely stored.
//
// Events are gathered per partition into batches (one stream message each)
// and published asynchronously when a batch is full or the session calls
// Flush. A WAL position given to Commit is confirmed only once everything
// added before it is acknowledged.
//
// Ordering and gaps: every message carries the stream sequence it expects to
// follow (Nats-Expected-Last-Sequence), so a failed publish fails the ones
// after it, and the stream holds no event whose predecessor is missing.
// Except by coincidence: when another publisher (a paused former leader
// that woke up) stores a message between two of ours, the first of ours
// fails but the second may expect exactly the sequence the other's took,
// and is stored without its predecessor: an orphan, whose events a restart
// would take for published. Every message's id names its session and its
// number in it, so Open finds the orphans (see repair) and deletes them
// before it reads where each partition ends.
//
// Size: no message is larger than the server's max_payload allows. An
// event too large for a batch of its own travels as fragments (package
// fragment) on its partition's fragment subject, followed by the message
// that names them on the partition's subject, in order with the others.
package publisher

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluicehq/sluice/pkg/change"
	"github.com/sluicehq/sluice/pkg/fragment"
	sluicev1 "github.com/sluicehq/sluice/proto/sluice/v1"
)

const (
	// A batch is published once it holds this many events or bytes: enough
	// to spread a message's costs, little enough that what a writer holds
	// (16 partitions × topology.MaxAckPending messages) stays small. An
	// event that does not fit a batch of this size alone is fragmented.
	maxBatchEvents = 256
	maxBatchBytes  = 64 << 10
	// unit is the share of the in-flight budget one token stands for: a
	// message takes a token per unit of its size, at least one.
	unit = 64 << 10
)

// Position is the last event of a partition in the stream.
type Position struct {
	LSN uint64
	Idx uint32
	// Table is the event's schema.table: the copies of a TRUNCATE of
	// several tables share one position, in the order of its tables.
	Table string
	// Valid is false when the stream holds no event to compare with.
	Valid  bool
	passed bool // Resume.Covers saw Table's event at this position
}

// Covers reports whether the event at (lsn, idx) is at or before p.
func (p Position) Covers(lsn uint64, idx uint32) bool {
	return p.Valid && (lsn < p.LSN || lsn == p.LSN && idx <= p.Idx)
}

// Resume is where each partition's events in the stream end. A partition's
// events in the stream are always a prefix of its events (a failed publish
// fails every later one), so after a restart an event is in the stream
// exactly when its partition's position covers it. The stream's last
// message alone would not tell: batches of other partitions, with older
// events, may have been waiting when capture stopped.
type Resume map[int]Position

// Covers reports whether the event at (lsn, idx) of table, in partition,
// is already in the stream. It must be given each partition's events in
// order: of the events that share the last position (a TRUNCATE of
// several tables), those up to its table's are in the stream, not the
// ones after it.
func (r Resume) Covers(partition int, lsn uint64, idx uint32, table string) bool {
	p := r[partition]
	if !p.Valid || lsn != p.LSN || idx != p.Idx {
		return p.Covers(lsn, idx)
	}
	if p.passed {
		return false
	}
	if table == p.Table {
		p.passed = true
		r[partition] = p
	}
	return true
}

// Positions reads where each partition's events end in the stream.
func Positions(ctx context.Context, st jetstream.Stream, o Options) (Resume, error) {
	resume := Resume{}
	for p := range o.Partitions {
		subject := o.Subject(p)
		msg, err := st.GetLastMsgForSubject(ctx, subject)
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound): // none yet, or expired
			continue
		case err == nil && msg.Sequence <= o.After: // an earlier source's
			continue
		case err != nil:
			return nil, fmt.Errorf("read the last message of %s: %w", subject, err)
		}
		data, err := fragment.Payload(ctx, st, msg.Header, msg.Data)
		if err != nil {
			return nil, fmt.Errorf("read the last message of %s (seq %d): %w", subject, msg.Sequence, err)
		}
		evs, err := change.Events(data)
		if err != nil || len(evs) == 0 {
			return nil, fmt.Errorf("read the last message of %s (seq %d): %v", subject, msg.Sequence, err)
		}
		ev := evs[len(evs)-1]
		resume[p] = Position{LSN: ev.CommitLsn, Idx: ev.CommitIdx, Table: ev.Schema + "." + ev.Table, Valid: true}
	}
	return resume, nil
}

// Last is the highest commit position of the events in the stream; false
// when there is none.
func (r Resume) Last() (lsn uint64, ok bool) {
	for _, p := range r {
		if p.Valid && p.LSN >= lsn {
			lsn, ok = p.LSN, true
		}
	}
	return lsn, ok
}

type item struct {
	fut    jetstream.PubAckFuture // nil for a WAL position marker
	name   string                 // of the message, for errors
	tokens int                    // of the in-flight budget, returned once resolved
	lsn    uint64
	sent   time.Time
	// commits are the commit times of its events (Unix µs), one each.
	commits []int64
	notify  []chan struct{} // closed once the marker is passed
}

// batch is a partition's events not yet published.
type batch struct {
	partition int
	first     string // the position of its first event
	data      []byte
	commits   []int64 // its events' commit times (Unix µs), one each
	size      int     // the capacity a new batch starts with
}

// eventKey is an event's position, to name a batch in errors. A TRUNCATE's
// copies of several tables share one: the table tells them apart.
func eventKey(ev *sluicev1.ChangeEvent) string {
	k := change.IdempotencyKey(ev.CommitLsn, ev.CommitIdx)
	if ev.Action == sluicev1.Action_ACTION_TRUNCATE {
		k += "/" + ev.Schema + "." + ev.Table
	}
	return k
}

// Options configure a publisher.
type Options struct {
	Stream     string
	Partitions int
	// Subject names a partition's subject; FragmentSubject the subject of
	// its fragments, which no consumer reads.
	Subject, FragmentSubject func(partition int) string
	// MaxInFlight bounds the messages published and not yet acknowledged,
	// and, in units of 64 KiB, their size.
	MaxInFlight int
	// After is the last stream sequence of an earlier source (see package
	// lineage): messages up to it say nothing of what was published from
	// this one.
	After uint64
}

// Publisher is one session's publisher. It is not safe for concurrent use,
// except Flushed.
type Publisher struct {
	js       jetstream.JetStream
	opts     Options
	maxBatch int // bytes, within the server's max_payload
	fragment int // the size of a large event's fragments
	items    chan item
	tokens   chan struct{}
	lastSeq  uint64 // the stream's, once everything sent is stored
	session  string // the prefix of this session's message ids
	number   uint64 // of the next message, in its id
	batches  map[int]*batch
	markers  []item // commits waiting for the batches before them
	flushed  atomic.Uint64
	failed   chan struct{}
	errOnce  sync.Once
	err      error
	done     chan struct{}
}

// Open reads where each partition's events end in the stream and starts a
// publisher.
func Open(ctx context.Context, js jetstream.JetStream, o Options) (*Publisher, Resume, error) {
	st, err := js.Stream(ctx, o.Stream)
	if err != nil {
		return nil, nil, fmt.Errorf("open stream %s: %w", o.Stream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("read stream %s: %w", o.Stream, err)
	}
	if err := repair(ctx, st, info.State, o); err != nil {
		return nil, nil, err
	}
	resume, err := Positions(ctx, st, o)
	if err != nil {
		return nil, nil, err
	}
	var nonce [9]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, nil, fmt.Errorf("draw a publisher session id: %w", err)
	}
	maxPayload := js.Conn().MaxPayload()
	p := &Publisher{
		js:       js,
		opts:     o,
		maxBatch: min(maxBatchBytes, fragment.Room(maxPayload)),
		fragment: fragment.Size(maxPayload),
		items:    make(chan item, o.MaxInFlight),
		tokens:   make(chan struct{}, o.MaxInFlight),
		lastSeq:  info.State.LastSeq,
		session:  base64.RawURLEncoding.EncodeToString(nonce[:]),
		batches:  map[int]*batch{},
		failed:   make(chan struct{}),
		done:     make(chan struct{}),
	}
	go p.track()
	return p, resume, nil
}

// Add puts ev into its partition's batch, publishing the batch first when
// ev would not fit, and after when it is full. An event too large for a
// batch of its own is published at once, in fragments. Add returns the
// first failure of any earlier publish.
func (p *Publisher) Add(ctx context.Context, partition int, ev *sluicev1.ChangeEvent) error {
	if err := p.Err(); err != nil {
		return err
	}
	b := p.batches[partition]
	if b == nil {
		b = &batch{partition: partition}
		p.batches[partition] = b
	}
	if b.data == nil {
		// Sized like the partition's last batch, so that a stream of full
		// batches does not grow each one from nothing (a copy of it at
		// every doubling), nor a trickle of small ones hold 64 KiB each.
		b.data = make([]byte, 0, b.size)
	}
	// Encoded in place, then measured: sizing it first would walk every
	// field twice.
	at := len(b.data)
	var err error
	if b.data, err = change.AppendEvent(b.data, ev); err != nil {
		return err
	}
	if len(b.commits) > 0 && len(b.data) > p.maxBatch {
		// It does not fit: the batch goes without it, and it starts the next.
		encoded := b.data[at:]
		b.data = b.data[:at]
		if err := p.publish(ctx, b); err != nil {
			return err
		}
		b.data = append(make([]byte, 0, max(b.size, len(encoded))), encoded...)
	}
	if len(b.commits) == 0 {
		b.first = eventKey(ev)
		b.commits = make([]int64, 0, min(maxBatchEvents, b.size/128+1))
	}
	b.commits = append(b.commits, ev.CommitTimestampUs)
	switch {
	case len(b.data) > p.maxBatch:
		return p.publishFragments(ctx, b)
	case len(b.commits) >= maxBatchEvents || len(b.data) >= p.maxBatch:
		return p.publish(ctx, b)
	}
	return nil
}

// Pending reports whether events or commits wait for Flush.
func (p *Publisher) Pending() bool { return len(p.markers) > 0 || p.buffered() }

func (p *Publisher) buffered() bool {
	for _, b := range p.batches {
		if len(b.commits) > 0 {
			return true
		}
	}
	return false
}

// Flush publishes every batch, then queues the commits that waited for
// them. It returns how many events it published.
func (p *Publisher) Flush(ctx context.Context) (int, error) {
	n := 0
	for _, b := range p.batches {
		if len(b.commits) > 0 {
			n += len(b.commits)
			if err := p.publish(ctx, b); err != nil {
				return n, err
			}
		}
	}
	for len(p.markers) > 0 {
		if err := p.enqueue(ctx, p.markers[0]); err != nil {
			return n, err
		}
		p.markers = p.markers[1:]
	}
	return n, nil
}

func (p *Publisher) publish(ctx context.Context, b *batch) error {
	// The message keeps the batch's buffer: the NATS client may resend it.
	msg := &nats.Msg{Subject: p.opts.Subject(b.partition), Data: b.data, Header: nats.Header{}}
	commits := b.commits
	b.size = min(len(b.data)+len(b.data)/8, p.maxBatch+p.maxBatch/8)
	b.data, b.commits = nil, nil
	return p.send(ctx, msg, commits, b.name())
}

// name is how errors refer to b's message: its partition and first event.
func (b *batch) name() string { return strconv.Itoa(b.partition) + ":" + b.first }

// publishFragments publishes the one event of b as fragments, then the
// message that names them.
func (p *Publisher) publishFragments(ctx context.Context, b *batch) error {
	parts := fragment.Split(b.data, p.fragment)
	seqs := make([]uint64, len(parts))
	for i, part := range parts {
		seqs[i] = p.lastSeq + 1 // the expected last sequence makes it so
		if err := p.send(ctx, &nats.Msg{Subject: p.opts.FragmentSubject(b.partition), Data: part, Header: nats.Header{}}, nil, b.name()+" fragment "+strconv.Itoa(i)); err != nil {
			return err
		}
	}
	msg := &nats.Msg{Subject: p.opts.Subject(b.partition), Header: nats.Header{}}
	fragment.SetHeader(msg.Header, seqs)
	name, commits := b.name(), b.commits
	b.data, b.commits = nil, nil
	return p.send(ctx, msg, commits, name)
}

// send publishes msg, which holds events committed at commits (none for
// a fragment), as the stream's next message once the in-flight budget has
// room for it; name says which in errors.
func (p *Publisher) send(ctx context.Context, msg *nats.Msg, commits []int64, name string) error {
	tokens := min(max(1, len(msg.Data)/unit), p.opts.MaxInFlight)
	for range tokens {
		select {
		case p.tokens <- struct{}{}:
		case <-p.failed:
			return p.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	fut, err := p.js.PublishMsgAsync(msg, jetstream.WithMsgID(messageID(p.session, p.number)),
		jetstream.WithExpectLastSequence(p.lastSeq))
	if err != nil {
		for range tokens {
			<-p.tokens
		}
		err = fmt.Errorf("publish %d changes (%d bytes) to %s: %w", len(commits), len(msg.Data), msg.Subject, err)
		p.fail(err)
		return err
	}
	p.lastSeq++
	p.number++
	inFlight.Add(float64(len(commits)))
	return p.enqueue(ctx, item{fut: fut, name: name, tokens: tokens, sent: time.Now(), commits: commits})
}

// Commit marks lsn as safely delivered once every event added before the
// call is acknowledged; then it closes the notify channels. After a
// failure they are never closed. While events wait in batches, the commit
// waits for the Flush that publishes them.
func (p *Publisher) Commit(ctx context.Context, lsn uint64, notify ...chan struct{}) error {
	it := item{lsn: lsn, notify: notify}
	if p.Pending() {
		p.markers = append(p.markers, it)
		return nil
	}
	return p.enqueue(ctx, it)
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

// Err is the first failure of a publish, or nil.
func (p *Publisher) Err() error {
	select {
	case <-p.failed:
		return p.err
	default:
		return nil
	}
}

// Flushed is the WAL position up to which every event is in the stream.
func (p *Publisher) Flushed() uint64 { return p.flushed.Load() }

// Close publishes what waits, waits for the acknowledgements of everything
// published, or for ctx, and returns the first failure.
func (p *Publisher) Close(ctx context.Context) error {
	_, ferr := p.Flush(ctx)
	close(p.items)
	select {
	case <-p.done:
	case <-ctx.Done():
		return fmt.Errorf("wait for publish acknowledgements: %w", ctx.Err())
	}
	if err := p.Err(); err != nil {
		return err
	}
	return ferr
}

// track resolves acknowledgements in publish order. After a failure it only
// drains, so that Flushed never passes an event that is not stored.
func (p *Publisher) track() {
	defer close(p.done)
	for it := range p.items {
		if it.fut == nil {
			if p.Err() != nil {
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
			now := time.Now()
			published.Add(float64(len(it.commits)))
			publishSeconds.Observe(now.Sub(it.sent).Seconds())
			for _, c := range it.commits {
				commitToStream.Observe(now.Sub(time.UnixMicro(c)).Seconds())
			}
		case err := <-it.fut.Err():
			p.fail(fmt.Errorf("publish to %s (message %s): %w", it.fut.Msg().Subject, it.name, err))
		}
		inFlight.Sub(float64(len(it.commits)))
		for range it.tokens {
			<-p.tokens
		}
	}
}

func (p *Publisher) fail(err error) {
	p.errOnce.Do(func() {
		p.err = err
		close(p.failed)
	})
}

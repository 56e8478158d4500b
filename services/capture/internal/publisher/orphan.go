package publisher

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// messageID names message number n of a publisher session.
func messageID(session string, n uint64) string {
	return session + ":" + strconv.FormatUint(n, 10)
}

// link is where a stored message stands in its session's chain.
type link struct {
	session string
	number  uint64
	prev    uint64 // the stream sequence it expected to follow
}

// linkOf reads a stored message's link; false for a message of another
// kind (or of a version that did not number them).
func linkOf(h nats.Header) (link, bool) {
	id := h.Get(jetstream.MsgIDHeader)
	i := strings.LastIndexByte(id, ':')
	if i < 0 {
		return link{}, false
	}
	n, err := strconv.ParseUint(id[i+1:], 10, 64)
	if err != nil {
		return link{}, false
	}
	prev, err := strconv.ParseUint(h.Get(jetstream.ExpectedLastSeqHeader), 10, 64)
	if err != nil {
		return link{}, false
	}
	return link{session: id[:i], number: n, prev: prev}, true
}

// maxScanWindows bounds how far back repair reads, in sessions' windows
// of MaxInFlight+1 messages.
const maxScanWindows = 8

// repair deletes the orphans at the end of the stream: messages stored
// although the one before them in their session was not (see the package
// doc). A session stops publishing once it learns of a failure, and it
// has at most MaxInFlight messages unacknowledged: its orphans are among
// its last MaxInFlight+1 stored messages. So repair reads back from the
// stream's end until it has read that many of every session it met, or
// reached the first message of a session, whose Open repaired everything
// before it. A message is sound when it is its session's first, or the
// message it expected to follow is its session's previous one and sound;
// one whose predecessor lies before what was read is taken as sound.
func repair(ctx context.Context, st jetstream.Stream, state jetstream.StreamState, o Options) error {
	window := uint64(o.MaxInFlight + 1)
	from := max(state.FirstSeq, o.After+1, 1)
	if state.LastSeq >= maxScanWindows*window && state.LastSeq-maxScanWindows*window+1 > from {
		from = state.LastSeq - maxScanWindows*window + 1
	}
	if state.LastSeq < from {
		return nil
	}
	headers, err := headersOf(ctx, st, from, state.LastSeq)
	if err != nil {
		return err
	}
	links := map[uint64]link{} // by stream sequence
	read := map[string]uint64{}
	lowest := state.LastSeq + 1
	for seq := state.LastSeq; seq >= from; seq-- {
		lowest = seq
		h, ok := headers[seq]
		if !ok {
			continue // deleted: a predecessor here is missing
		}
		l, ok := linkOf(h)
		if !ok {
			break // written before messages were numbered
		}
		links[seq] = l
		read[l.session]++
		if l.number == 0 {
			break
		}
		done := true
		for _, n := range read {
			done = done && n >= window
		}
		if done {
			break
		}
	}
	sound := map[uint64]bool{}
	var check func(seq uint64) bool
	check = func(seq uint64) bool {
		if v, ok := sound[seq]; ok {
			return v
		}
		l := links[seq]
		v := true
		switch prev, ok := links[l.prev]; {
		case l.number == 0:
		case ok:
			v = prev.session == l.session && prev.number == l.number-1 && check(l.prev)
		default:
			// Not read: before the window (sound), or read and gone
			// (deleted: an orphan's successor).
			v = l.prev < lowest
		}
		sound[seq] = v
		return v
	}
	for seq := range links {
		if check(seq) {
			continue
		}
		if err := st.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return fmt.Errorf("delete orphaned stream message %d: %w", seq, err)
		}
		orphans.Inc()
	}
	return nil
}

// headersOf reads the headers of the stream's messages from..to, without
// their payloads (a message may be as large as max_payload): one ordered
// consumer, not a request per message. A sequence missing from the result
// was deleted.
func headersOf(ctx context.Context, st jetstream.Stream, from, to uint64) (map[uint64]nats.Header, error) {
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: from, HeadersOnly: true,
		InactiveThreshold: 30 * time.Second}) // the server drops it soon after
	if err != nil {
		return nil, fmt.Errorf("read the stream's last messages: %w", err)
	}
	headers := map[uint64]nats.Header{}
	for {
		batch, err := cons.Fetch(int(min(to-from+1, 512)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return nil, fmt.Errorf("read the stream's last messages: %w", err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			md, err := m.Metadata()
			if err != nil {
				return nil, fmt.Errorf("read the stream's last messages: %w", err)
			}
			if md.Sequence.Stream > to {
				return headers, nil
			}
			headers[md.Sequence.Stream] = m.Headers()
			if md.Sequence.Stream == to || md.NumPending == 0 {
				return headers, nil
			}
		}
		if err := batch.Error(); err != nil {
			return nil, fmt.Errorf("read the stream's last messages: %w", err)
		}
		if n == 0 {
			return headers, nil // the rest was deleted
		}
	}
}

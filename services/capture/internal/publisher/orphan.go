package publisher

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

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
func linkOf(m *jetstream.RawStreamMsg) (link, bool) {
	id := m.Header.Get(jetstream.MsgIDHeader)
	i := strings.LastIndexByte(id, ':')
	if i < 0 {
		return link{}, false
	}
	n, err := strconv.ParseUint(id[i+1:], 10, 64)
	if err != nil {
		return link{}, false
	}
	prev, err := strconv.ParseUint(m.Header.Get(jetstream.ExpectedLastSeqHeader), 10, 64)
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
	links := map[uint64]link{} // by stream sequence
	read := map[string]uint64{}
	lowest := state.LastSeq + 1
	for seq := state.LastSeq; seq >= max(state.FirstSeq, o.After+1, 1) && uint64(len(links)) < maxScanWindows*window; seq-- {
		m, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			lowest = seq // deleted: a predecessor here is missing
			continue
		}
		if err != nil {
			return fmt.Errorf("read stream message %d: %w", seq, err)
		}
		lowest = seq
		l, ok := linkOf(m)
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

// Package fragment carries payloads larger than one NATS message may hold
// (the server's max_payload, 1 MiB by default) through a JetStream stream.
//
// The payload is cut into fragments, each stored as a message of its own on
// a subject that no consumer reads; then one small message, with an empty
// body and a header naming the fragments' stream sequences, stands for the
// whole payload where it belongs: on its own subject, in order with the
// messages around it. A reader joins the fragments by reading them back
// from the stream. Fragments are stored on subjects whose next-to-last
// token ends in "fragments" ("S.fragments.3", "S.dlqfragments.cache"),
// and a reader takes nothing else for one.
//
// In a stream with limits, fragments go when the stream's limits remove
// them, like the messages around them; where messages are deleted one by
// one (dead letters), their fragments are deleted with them.
package fragment

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Header lists, comma-separated and in order, the stream sequences of the
// fragments whose bodies, joined, are a message's payload.
const Header = "Sluice-Fragments"

// headroom is what a message's subject and headers may take of the
// server's max_payload.
const headroom = 8 << 10

// maxFragment bounds a fragment, however large the server allows
// messages to be: what a publisher holds unacknowledged stays small.
const maxFragment = 1 << 20

// Room is the largest body a message may have on a server whose
// max_payload is maxPayload, leaving room for its headers.
func Room(maxPayload int64) int {
	return int(max(maxPayload-headroom, 1<<10))
}

// Size is the size of the fragments on a server whose max_payload is
// maxPayload.
func Size(maxPayload int64) int { return min(Room(maxPayload), maxFragment) }

// Split cuts data into pieces of at most size bytes, sharing its memory.
func Split(data []byte, size int) [][]byte {
	parts := make([][]byte, 0, (len(data)+size-1)/size)
	for len(data) > size {
		parts = append(parts, data[:size:size])
		data = data[size:]
	}
	return append(parts, data)
}

// SetHeader makes h name the fragments at seqs.
func SetHeader(h nats.Header, seqs []uint64) {
	var b strings.Builder
	for i, s := range seqs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatUint(s, 10))
	}
	h.Set(Header, b.String())
}

// Seqs returns the sequences of the fragments h names, or nil when it
// names none.
func Seqs(h nats.Header) ([]uint64, error) {
	v := h.Get(Header)
	if v == "" {
		return nil, nil
	}
	fields := strings.Split(v, ",")
	seqs := make([]uint64, len(fields))
	for i, f := range fields {
		s, err := strconv.ParseUint(f, 10, 64)
		if err != nil || s == 0 {
			return nil, fmt.Errorf("header %s: %q is not a stream sequence", Header, f)
		}
		seqs[i] = s
	}
	return seqs, nil
}

// Getter reads a stream's message by sequence; a jetstream.Stream is one.
type Getter interface {
	GetMsg(ctx context.Context, seq uint64, opts ...jetstream.GetMsgOpt) (*jetstream.RawStreamMsg, error)
}

// ErrMissing is the error of a payload whose fragment the stream no longer
// holds (its limits removed it, or someone deleted it): it can never be
// read again.
var ErrMissing = errors.New("fragment is gone from the stream")

// Payload returns the payload of a message with headers h and body data:
// data itself, or the bodies of the fragments h names, joined.
func Payload(ctx context.Context, g Getter, h nats.Header, data []byte) ([]byte, error) {
	seqs, err := Seqs(h)
	if err != nil || seqs == nil {
		return data, err
	}
	var out []byte
	for i, seq := range seqs {
		m, err := g.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil, fmt.Errorf("fragment %d of %d (stream sequence %d): %w", i+1, len(seqs), seq, ErrMissing)
		}
		if err != nil {
			return nil, fmt.Errorf("read fragment %d of %d (stream sequence %d): %w", i+1, len(seqs), seq, err)
		}
		if !isFragment(m.Subject) {
			return nil, fmt.Errorf("stream sequence %d, on %s, is not a fragment: %w", seq, m.Subject, ErrMissing)
		}
		if out == nil {
			out = make([]byte, 0, len(m.Data)*len(seqs))
		}
		out = append(out, m.Data...)
	}
	return out, nil
}

// isFragment reports whether subject is one that fragments are stored on.
func isFragment(subject string) bool {
	i := strings.LastIndexByte(subject, '.')
	return i > 0 && strings.HasSuffix(subject[:i], "fragments")
}

// Publish publishes msg, and waits for the stream to store it. When its
// body is larger than room, it publishes the body's fragments on
// fragmentSubject first, then msg with an empty body naming them; it
// returns the sequences of those fragments, so that they can be deleted
// with the message.
func Publish(ctx context.Context, js jetstream.JetStream, msg *nats.Msg, fragmentSubject string, room int) (fragments []uint64, err error) {
	if len(msg.Data) > room {
		for _, part := range Split(msg.Data, min(room, maxFragment)) {
			ack, err := js.Publish(ctx, fragmentSubject, part)
			if err != nil {
				return fragments, fmt.Errorf("publish a fragment of %d bytes: %w", len(part), err)
			}
			fragments = append(fragments, ack.Sequence)
		}
		if msg.Header == nil {
			msg.Header = nats.Header{}
		}
		SetHeader(msg.Header, fragments)
		msg.Data = nil
	}
	_, err = js.PublishMsg(ctx, msg)
	return fragments, err
}

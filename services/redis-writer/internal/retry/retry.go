// Package retry parks the changes that failed on their own (a WRONGTYPE on
// their key, an expression that fails on their row), so that their next
// attempts do not hold back the partition they came from.
//
// A parked change is a reference, not a copy: the change stream's sequence
// of the message that holds it and its index there, with the attempts made
// so far and when the next may start. The references wait in the retry
// stream (topology.RetryStream), a work queue that every writer of the sink
// pulls from. After each failed attempt the writer parks the change anew,
// with one more attempt counted, and settles the old reference; after the
// sink's max_deliver attempts, the change is dead-lettered instead.
//
// Per-key order does not suffer: every write is versioned, so a parked
// change that is older than what its key holds by the time it is retried
// is skipped.
package retry

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Headers of a reference.
const (
	HeaderStreamSeq = "Sluice-Stream-Seq"
	HeaderIndex     = "Sluice-Index"
	HeaderAttempts  = "Sluice-Attempts"
	HeaderNotBefore = "Sluice-Not-Before"
	HeaderKey       = "Sluice-Key"
	HeaderError     = "Sluice-Error"
)

// Ref is a parked change.
type Ref struct {
	StreamSeq uint64 // of its message in the change stream
	Index     int    // of the change in its message
	Attempts  int    // made so far
	NotBefore time.Time
	Key       string // the Redis key, for operators
	Error     string // of the last attempt
}

// Park publishes ref on subject and waits for the stream to store it. A
// reference parked twice (a message redelivered before it was settled) is
// stored once.
func Park(ctx context.Context, js jetstream.JetStream, subject string, ref Ref) error {
	msg := &nats.Msg{Subject: subject, Header: nats.Header{}}
	msg.Header.Set(HeaderStreamSeq, strconv.FormatUint(ref.StreamSeq, 10))
	msg.Header.Set(HeaderIndex, strconv.Itoa(ref.Index))
	msg.Header.Set(HeaderAttempts, strconv.Itoa(ref.Attempts))
	msg.Header.Set(HeaderNotBefore, strconv.FormatInt(ref.NotBefore.UnixMilli(), 10))
	msg.Header.Set(HeaderKey, ref.Key)
	msg.Header.Set(HeaderError, ref.Error)
	id := fmt.Sprintf("%d:%d:%d", ref.StreamSeq, ref.Index, ref.Attempts)
	if _, err := js.PublishMsg(ctx, msg, jetstream.WithMsgID(id)); err != nil {
		return fmt.Errorf("park a change of stream sequence %d for another attempt: %w", ref.StreamSeq, err)
	}
	return nil
}

// Parse reads the reference a message of the retry stream carries.
func Parse(h nats.Header) (Ref, error) {
	var ref Ref
	var err error
	if ref.StreamSeq, err = strconv.ParseUint(h.Get(HeaderStreamSeq), 10, 64); err != nil {
		return ref, fmt.Errorf("retry reference: %s: %w", HeaderStreamSeq, err)
	}
	if ref.Index, err = strconv.Atoi(h.Get(HeaderIndex)); err != nil {
		return ref, fmt.Errorf("retry reference: %s: %w", HeaderIndex, err)
	}
	if ref.Attempts, err = strconv.Atoi(h.Get(HeaderAttempts)); err != nil {
		return ref, fmt.Errorf("retry reference: %s: %w", HeaderAttempts, err)
	}
	ms, err := strconv.ParseInt(h.Get(HeaderNotBefore), 10, 64)
	if err != nil {
		return ref, fmt.Errorf("retry reference: %s: %w", HeaderNotBefore, err)
	}
	ref.NotBefore = time.UnixMilli(ms)
	ref.Key, ref.Error = h.Get(HeaderKey), h.Get(HeaderError)
	return ref, nil
}

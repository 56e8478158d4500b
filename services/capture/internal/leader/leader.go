// Package leader elects the one capture process that streams from the
// slot; the others stand by and take over when it dies or hangs.
//
// The lease is a key in a NATS key-value bucket whose entries live ttl
// after their last write: the leader creates the key, then renews it every
// third of ttl, each renewal checked against the revision it last wrote,
// so that a process that lost the key (paused past ttl while another took
// over) finds out at its next renewal and never renews someone else's.
// It also holds the lease only until its last successful renewal was sent
// plus ttl less a margin, by its own clock: a process that wakes from a
// pause longer than that knows it lost the lease before it asks NATS.
package leader

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluicehq/sluice/pkg/topology"
)

// ErrLost means another process may hold the lease now.
var ErrLost = errors.New("lost the capture lease")

const key = topology.CaptureLeaderKey

// Lease is one process's claim to lead.
type Lease struct {
	kv    jetstream.KeyValue
	id    string
	ttl   time.Duration
	rev   uint64
	until atomic.Int64 // unix nanoseconds; 0: not held
}

// NewID returns an id for this process in the lease that tells an operator
// where it runs (host and pid), with a random suffix: processes that share
// both, such as containers of one pod, each run as pid 1, must not take
// each other's lease for their own (see release).
func NewID() string {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

// Open opens (creating when missing) the lease bucket for process id.
func Open(ctx context.Context, js jetstream.JetStream, bucket, id string, ttl time.Duration, replicas int) (*Lease, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      bucket,
		Description: "Sluice: which capture process streams",
		TTL:         ttl,
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("open the capture lease %s: %w", bucket, err)
	}
	return &Lease{kv: kv, id: id, ttl: ttl}, nil
}

// Acquire waits until this process holds the lease, or ctx ends. waiting
// is called with the holder's id each time a try finds it held.
func (l *Lease) Acquire(ctx context.Context, waiting func(holder string)) error {
	for {
		sent := time.Now()
		rev, err := l.kv.Create(ctx, key, []byte(l.id))
		if err == nil {
			l.rev = rev
			l.hold(sent)
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && ctx.Err() == nil {
			waiting("(unknown: " + err.Error() + ")")
		} else if e, gerr := l.kv.Get(ctx, key); gerr == nil {
			waiting(string(e.Value()))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(l.ttl / 6):
		}
	}
}

// Hold renews the lease every third of ttl until ctx ends (then it
// releases it, so that a standby takes over at once) or a renewal fails
// (then it returns ErrLost).
func (l *Lease) Hold(ctx context.Context) error {
	t := time.NewTicker(l.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			l.release()
			return nil
		case <-t.C:
		}
		if !l.Valid() {
			l.until.Store(0)
			return ErrLost
		}
		sent := time.Now()
		rctx, cancel := context.WithTimeout(ctx, l.ttl/3)
		rev, err := l.kv.Update(rctx, key, []byte(l.id), l.rev)
		cancel()
		switch {
		case err == nil:
			l.rev = rev
			l.hold(sent)
		case errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyNotFound):
			// Another process wrote the key, or it expired: it is not ours.
			l.until.Store(0)
			return fmt.Errorf("%w: %v", ErrLost, err)
		}
		// Other failures (NATS unreachable) are retried while the lease
		// is still valid by our clock.
	}
}

// hold records a renewal sent at sent: the lease holds until the key can
// have expired, less a tenth of ttl for clocks and delays.
func (l *Lease) hold(sent time.Time) {
	l.until.Store(sent.Add(l.ttl - l.ttl/10).UnixNano())
}

// Valid reports whether this process surely holds the lease now.
func (l *Lease) Valid() bool {
	u := l.until.Load()
	return u != 0 && time.Now().UnixNano() < u
}

func (l *Lease) release() {
	if l.until.Swap(0) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if l.kv.Delete(ctx, key, jetstream.LastRevision(l.rev)) == nil {
		return
	}
	// A renewal cut short by the shutdown may have been applied all the
	// same, with a revision this process never heard of: the key holding
	// this process's id is still its own.
	if e, err := l.kv.Get(ctx, key); err == nil && string(e.Value()) == l.id {
		_ = l.kv.Delete(ctx, key, jetstream.LastRevision(e.Revision()))
	}
}

// Holder returns the id of the process holding the lease; "" when none.
func (l *Lease) Holder(ctx context.Context) (string, error) {
	e, err := l.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read the capture lease: %w", err)
	}
	return string(e.Value()), nil
}

package leader

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sluicehq/sluice/pkg/testenv"
)

func TestOneLeader(t *testing.T) {
	ctx := context.Background()
	js := testenv.NewNATS(t).JetStream(t)
	const ttl = time.Second
	a, err := Open(ctx, js, "L", "a", ttl, 1)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Open(ctx, js, "L", "b", ttl, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Acquire(ctx, func(string) {}); err != nil || !a.Valid() {
		t.Fatalf("a: %v", err)
	}
	hctx, stop := context.WithCancel(ctx)
	held := make(chan error, 1)
	go func() { held <- a.Hold(hctx) }()

	// b stands by while a renews, well past ttl.
	bctx, cancel := context.WithTimeout(ctx, 3*ttl)
	var seen string
	err = b.Acquire(bctx, func(h string) { seen = h })
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || seen != "a" {
		t.Fatalf("b acquired while a held the lease: %v (saw %q)", err, seen)
	}
	if h, _ := b.Holder(ctx); h != "a" {
		t.Fatalf("holder %q", h)
	}

	// a stops: it releases the lease (no waiting out its ttl), and b
	// takes over.
	stop()
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	if h, err := b.Holder(ctx); err != nil || h != "" {
		t.Fatalf("after a's release the lease is held by %q (%v)", h, err)
	}
	if err := b.Acquire(ctx, func(string) {}); err != nil {
		t.Fatal(err)
	}

	// b pauses (no renewals) past ttl: a takes over; b finds out by its
	// own clock, and its renewal is refused.
	if err := a.Acquire(ctx, func(string) {}); err != nil {
		t.Fatal(err)
	}
	if b.Valid() {
		t.Fatal("b's lease still valid after a took over")
	}
	b.until.Store(time.Now().Add(time.Hour).UnixNano()) // a clock that did not see the pause
	if err := b.Hold(ctx); !errors.Is(err, ErrLost) {
		t.Fatalf("b's renewal of a's lease: %v", err)
	}
	if h, _ := a.Holder(ctx); h != "a" {
		t.Fatalf("holder after b's refused renewal: %q", h)
	}
}

// A renewal applied without its answer (cut short by the shutdown) leaves
// the lease at a revision its holder never heard of: it is released all
// the same, and a standby takes over at once.
func TestReleaseAfterAnUnansweredRenewal(t *testing.T) {
	ctx := context.Background()
	js := testenv.NewNATS(t).JetStream(t)
	a, err := Open(ctx, js, "L", "a", time.Minute, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Acquire(ctx, func(string) {}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.kv.Update(ctx, key, []byte("a"), a.rev); err != nil { // the renewal whose answer a did not get
		t.Fatal(err)
	}
	hctx, stop := context.WithCancel(ctx)
	stop()
	if err := a.Hold(hctx); err != nil {
		t.Fatal(err)
	}
	if h, err := a.Holder(ctx); err != nil || h != "" {
		t.Fatalf("after a's release the lease is held by %q (%v)", h, err)
	}
}

// Two processes on one host with one pid (containers of a pod, each pid
// 1): the one whose key expired while it was paused must not, as it stops,
// delete the key the other created since, taking it for its own.
func TestReleaseLeavesTheLeaseOfATwin(t *testing.T) {
	ctx := context.Background()
	js := testenv.NewNATS(t).JetStream(t)
	a, err := Open(ctx, js, "L", NewID(), time.Minute, 1)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Open(ctx, js, "L", NewID(), time.Minute, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Acquire(ctx, func(string) {}); err != nil {
		t.Fatal(err)
	}
	// a's key expires while a is paused, and b takes the lease.
	if err := a.kv.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	if err := b.Acquire(ctx, func(string) {}); err != nil {
		t.Fatal(err)
	}
	hctx, stop := context.WithCancel(ctx)
	stop()
	if err := a.Hold(hctx); err != nil {
		t.Fatal(err)
	}
	if h, err := b.Holder(ctx); err != nil || h != b.id {
		t.Fatalf("after a stopped the lease is held by %q (%v), not b (%s)", h, err, b.id)
	}
}

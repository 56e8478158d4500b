package group

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/sluicehq/sluice/pkg/testenv"
)

// view is a member's latest view of the group.
type view struct {
	mu      sync.Mutex
	members []string
}

func (v *view) set(m []string) { v.mu.Lock(); v.members = m; v.mu.Unlock() }
func (v *view) get() []string  { v.mu.Lock(); defer v.mu.Unlock(); return v.members }

func TestMembership(t *testing.T) {
	js := testenv.NewNATS(t).JetStream(t)
	ctx := context.Background()
	const ttl = 3 * time.Second

	start := func(id string) (*view, context.CancelFunc, chan struct{}) {
		g, err := Join(ctx, js, "S_writers_x", id, ttl, 1, zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		v := &view{}
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { g.Run(rctx, always, v.set); close(done) }()
		return v, cancel, done
	}
	wait := func(v *view, want ...string) { t.Helper(); waitView(t, v, 3*ttl, want...) }
	a, stopA, _ := start("a")
	wait(a, "a")
	b, stopB, doneB := start("b")
	wait(a, "a", "b")
	wait(b, "a", "b")

	// A member that leaves is gone at once.
	stopB()
	<-doneB
	wait(a, "a")

	// A member that stops refreshing (a crash, a pause) expires after the TTL.
	kv, _ := js.KeyValue(ctx, "S_writers_x")
	kv.Put(ctx, "ghost", nil)
	wait(a, "a", "ghost")
	began := time.Now()
	wait(a, "a")
	if d := time.Since(began); d > ttl+2*time.Second {
		t.Fatalf("dead member removed after %s", d)
	}
	stopA()
}

// A NATS restart loses the membership bucket (it lives in memory): the
// members create it again, see a writer that joins after the restart, and
// see it leave.
func TestMembershipSurvivesNATSRestart(t *testing.T) {
	srv := testenv.NewNATS(t)
	js := srv.JetStream(t)
	ctx := context.Background()
	const ttl = 3 * time.Second
	join := func(id string) (*view, context.CancelFunc) {
		g, err := Join(ctx, js, "S_writers_x", id, ttl, 1, zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		v := &view{}
		rctx, cancel := context.WithCancel(ctx)
		go g.Run(rctx, always, v.set)
		return v, cancel
	}
	wait := func(v *view, want ...string) { t.Helper(); waitView(t, v, 5*ttl, want...) }
	a, stopA := join("a")
	b, stopB := join("b")
	wait(a, "a", "b")
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	var c *view
	var stopC context.CancelFunc
	deadline := time.Now().Add(5 * ttl)
	for c == nil {
		g, err := Join(ctx, js, "S_writers_x", "c", ttl, 1, zap.NewNop())
		if err != nil {
			if time.Now().After(deadline) {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
			continue
		}
		c = &view{}
		var rctx context.Context
		rctx, stopC = context.WithCancel(ctx)
		go g.Run(rctx, always, c.set)
	}
	wait(a, "a", "b", "c")
	wait(b, "a", "b", "c")
	stopC()
	wait(a, "a", "b")
	stopB()
	wait(a, "a")
	stopA()
}

func always() bool { return true }

// waitView waits until v shows want, for at most timeout.
func waitView(t *testing.T, v *view, timeout time.Duration, want ...string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !slices.Equal(v.get(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("view %v, want %v", v.get(), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A member whose work is stuck stops refreshing its membership: the others
// see it leave after the TTL, and see it again once it goes on.
func TestStuckMemberLetsGo(t *testing.T) {
	js := testenv.NewNATS(t).JetStream(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const ttl = 2 * time.Second
	var stuck atomic.Bool
	views := map[string]*view{}
	for _, id := range []string{"a", "b"} {
		g, err := Join(ctx, js, "S_writers_x", id, ttl, 1, zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		alive := always
		if id == "b" {
			alive = func() bool { return !stuck.Load() }
		}
		views[id] = &view{}
		go g.Run(ctx, alive, views[id].set)
	}
	wait := func(v *view, want ...string) { t.Helper(); waitView(t, v, 5*ttl, want...) }
	wait(views["a"], "a", "b")
	stuck.Store(true)
	wait(views["a"], "a")
	stuck.Store(false)
	wait(views["a"], "a", "b")
}

package backfill

import (
	"context"
	"testing"
	"time"

	"github.com/sluicehq/sluice/pkg/testenv"
	"github.com/sluicehq/sluice/pkg/topology"
)

func TestStore(t *testing.T) {
	ctx := context.Background()
	js := testenv.NewNATS(t).JetStream(t)
	s, err := Open(ctx, js, topology.Topology{Stream: "S", Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	changed, err := s.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a, err := s.Create(ctx, "cache", "public.users", "id < 10")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	case <-time.After(5 * time.Second):
		t.Fatal("no change seen")
	}
	b, _ := s.Create(ctx, "cache", "public.orders", "")
	j, rev, err := s.Get(ctx, a.ID)
	if err != nil || j.State != Pending || j.Where != "id < 10" {
		t.Fatalf("get: %+v %v", j, err)
	}
	j.State, j.Cursor, j.Done, j.Total, j.Rate = Running, []string{"7"}, 7, 100, 10
	if _, err := s.Update(ctx, j, rev); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(ctx, j, rev); err != ErrChanged {
		t.Fatalf("stale update: %v", err)
	}
	if eta := j.ETA(); eta != 9300*time.Millisecond {
		t.Fatalf("eta = %v", eta)
	}
	cancelled, err := s.Cancel(ctx, "cache", "public.users")
	if err != nil || len(cancelled) != 1 || cancelled[0].ID != a.ID {
		t.Fatalf("cancel: %+v %v", cancelled, err)
	}
	jobs, err := s.List(ctx)
	if err != nil || len(jobs) != 2 || jobs[0].ID != a.ID || jobs[0].State != Cancelled || jobs[0].Done != 7 || jobs[1].ID != b.ID {
		t.Fatalf("list: %+v %v", jobs, err)
	}
	if seen, err := s.Seen(ctx, "cache"); seen || err != nil {
		t.Fatalf("first Seen = %v, %v", seen, err)
	}
	if seen, err := s.Seen(ctx, "cache"); !seen || err != nil {
		t.Fatalf("second Seen = %v, %v", seen, err)
	}
}

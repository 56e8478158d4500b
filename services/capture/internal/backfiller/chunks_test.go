package backfiller

import (
	"testing"

	"github.com/sluicehq/sluice/services/capture/internal/pgoutput"
)

func mark(s string) *pgoutput.LogicalMessage {
	return &pgoutput.LogicalMessage{Transactional: true, Prefix: "sluice.backfill", Content: []byte(s)}
}

func TestTracker(t *testing.T) {
	chunks := NewChunks()
	tr := NewTracker(chunks)
	chunks.add(&Chunk{ID: "c1", Table: "public.users"})

	tr.Mark(mark(lowMark("c1", "public.users")))
	tr.Changed("public.users", []string{"7"})
	tr.Changed("public.orders", []string{"8"})
	tr.Changed("public.users", []string{"a", "b"})
	ch, skip := tr.Mark(mark(highMark("c1")))
	if ch == nil || ch.ID != "c1" {
		t.Fatalf("chunk = %+v", ch)
	}
	for _, c := range []struct {
		pk   []string
		want bool
	}{{[]string{"7"}, true}, {[]string{"8"}, false}, {[]string{"a", "b"}, true}, {[]string{"ab"}, false}} {
		if skip(c.pk) != c.want {
			t.Errorf("skip(%v) = %v", c.pk, !c.want)
		}
	}
	// The window is closed: later changes do not count.
	if len(tr.open) != 0 {
		t.Fatalf("windows left open: %v", tr.open)
	}

	// A high watermark without its low one (a replay after a restart), or of
	// an unknown chunk, publishes nothing.
	if ch, _ := tr.Mark(mark(highMark("c1"))); ch != nil {
		t.Fatal("high without low published")
	}
	tr.Mark(mark(lowMark("c2", "public.users")))
	if ch, _ := tr.Mark(mark(highMark("c2"))); ch != nil {
		t.Fatal("unregistered chunk published")
	}

	// A TRUNCATE voids the open chunks of its table.
	chunks.add(&Chunk{ID: "c3", Table: "public.users"})
	tr.Mark(mark(lowMark("c3", "public.users")))
	tr.Truncated("public.users")
	if _, skip := tr.Mark(mark(highMark("c3"))); !skip([]string{"1"}) {
		t.Fatal("a truncated chunk's rows were kept")
	}
}

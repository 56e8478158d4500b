package capture

import (
	"testing"

	"github.com/sluicehq/sluice/pkg/lineage"
	"github.com/sluicehq/sluice/services/capture/internal/source"
)

func TestJudge(t *testing.T) {
	rec := lineage.Source{SystemID: "7300000000000000001"}
	healthy := source.Identity{SystemID: rec.SystemID, WALPos: 5000, SlotExists: true}
	for _, c := range []struct {
		name     string
		id       source.Identity
		recorded bool
		last     uint64
		has      bool
		want     string
	}{
		{"first start", source.Identity{SystemID: "1", WALPos: 10}, false, 0, false, ""},
		{"an earlier release's stream, slot kept", healthy, false, 4000, true, ""},
		{"streaming on", healthy, true, 4000, true, ""},
		{"the stream's changes expired", healthy, true, 0, false, ""},
		{"slot dropped", source.Identity{SystemID: rec.SystemID, WALPos: 5000}, true, 4000, true, slotLost},
		{"slot dropped, stream empty", source.Identity{SystemID: rec.SystemID, WALPos: 5000}, true, 0, false, slotLost},
		{"an earlier release's stream, slot dropped", source.Identity{SystemID: "1", WALPos: 5000}, false, 4000, true, slotLost},
		{"slot invalidated", source.Identity{SystemID: rec.SystemID, WALPos: 5000, SlotExists: true, SlotLost: true}, true, 4000, true, slotInvalidated},
		{"another cluster", source.Identity{SystemID: "7300000000000000002", WALPos: 5000, SlotExists: true}, true, 4000, true, databaseReplaced},
		{"restored from a snapshot, slot and all", source.Identity{SystemID: rec.SystemID, WALPos: 3000, SlotExists: true}, true, 4000, true, databaseBehind},
		// pg_basebackup copies no slot: behind, not merely slot lost.
		{"restored from a base backup", source.Identity{SystemID: rec.SystemID, WALPos: 3000}, true, 4000, true, databaseBehind},
		{"restored, slot invalidated", source.Identity{SystemID: rec.SystemID, WALPos: 3000, SlotExists: true, SlotLost: true}, true, 4000, true, databaseBehind},
	} {
		r := judge(c.id, rec, c.recorded, c.last, c.has, "sluice")
		switch {
		case c.want == "" && r != nil:
			t.Errorf("%s: refused: %v", c.name, r)
		case c.want != "" && (r == nil || r.reason != c.want):
			t.Errorf("%s: %v, want %s", c.name, r, c.want)
		}
	}
}

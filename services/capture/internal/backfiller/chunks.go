// Package backfiller runs backfills: it copies the current rows of a table
// into the stream as READ events for one sink, while live changes keep
// flowing, without a READ ever landing after a newer change of its row.
//
// It follows DBLog's watermarks. For each chunk the worker writes a low
// watermark into the WAL, reads the chunk, registers it and writes a high
// watermark. The replication session, reading the WAL in order, notes the
// keys of the table's changes between the two watermarks; at the high one
// it publishes the chunk's other rows as READ events positioned at the high
// watermark's transaction. A row changed between the watermarks is left
// out: its change, in the stream already, is as new or newer. Rows the
// chunk read are older than every change after the high watermark, and
// versions in Redis order them accordingly.
package backfiller

import (
	"strings"
	"sync"

	"github.com/sluicehq/sluice/services/capture/internal/event"
	"github.com/sluicehq/sluice/services/capture/internal/pgoutput"
)

// Chunk is a chunk read and waiting for its high watermark.
type Chunk struct {
	ID    string
	Job   string // the backfill's id
	Sink  string
	Table string // schema.table
	Rel   *event.Relation
	Rows  []pgoutput.Tuple
	// Missing are the keys a backfill by key found no row for: their
	// keys are deleted from the sink.
	Missing [][]string
	// Acked is closed once the chunk's READ events are in the stream.
	Acked chan struct{}
}

// Chunks are the chunks waiting for their high watermark, shared by the
// worker, which adds them, and the sessions, which publish them.
type Chunks struct {
	mu sync.Mutex
	m  map[string]*Chunk
}

// NewChunks returns an empty registry.
func NewChunks() *Chunks { return &Chunks{m: map[string]*Chunk{}} }

func (c *Chunks) add(ch *Chunk) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[ch.ID] = ch
}

func (c *Chunks) get(id string) *Chunk {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[id]
}

func (c *Chunks) remove(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, id)
}

// Watermark payloads: "low <chunk> <schema.table>" and "high <chunk>".
func lowMark(id, table string) string { return "low " + id + " " + table }
func highMark(id string) string       { return "high " + id }

// Tracker follows the watermarks of one replication session, in WAL order.
// It is not safe for concurrent use.
type Tracker struct {
	chunks *Chunks
	open   map[string]*window // chunk id → its window
}

// window is the span between a chunk's watermarks.
type window struct {
	table     string
	changed   map[string]bool // keys of the table changed in the window
	truncated bool
}

// NewTracker returns a tracker of one session.
func NewTracker(chunks *Chunks) *Tracker {
	return &Tracker{chunks: chunks, open: map[string]*window{}}
}

// Mark handles a watermark message. At a high watermark it returns the
// chunk to publish and the keys to leave out (all, after a TRUNCATE); nil
// when the chunk is unknown (a watermark replayed after a restart: its
// chunk is read again).
func (t *Tracker) Mark(m *pgoutput.LogicalMessage) (*Chunk, func(pk []string) bool) {
	f := strings.Fields(string(m.Content))
	switch {
	case len(f) == 3 && f[0] == "low":
		t.open[f[1]] = &window{table: f[2], changed: map[string]bool{}}
	case len(f) == 2 && f[0] == "high":
		w, ok := t.open[f[1]]
		delete(t.open, f[1])
		ch := t.chunks.get(f[1])
		if !ok || ch == nil {
			return nil, nil
		}
		return ch, func(pk []string) bool { return w.truncated || w.changed[Key(pk)] }
	}
	return nil, nil
}

// Truncated notes a TRUNCATE of table: the open chunks of it are void.
func (t *Tracker) Truncated(table string) {
	for _, w := range t.open {
		if w.table == table {
			w.truncated = true
		}
	}
}

// Changed notes a change of the row with key pk of table.
func (t *Tracker) Changed(table string, pk []string) {
	if len(t.open) == 0 {
		return
	}
	k := Key(pk)
	for _, w := range t.open {
		if w.table == table {
			w.changed[k] = true
		}
	}
}

// Key joins a row's key values.
func Key(pk []string) string { return strings.Join(pk, "\x00") }

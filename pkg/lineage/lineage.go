// Package lineage records which Postgres database and slot a stream's
// changes come from, so that capture never continues silently from a
// lost slot or from another database: a slot re-created at the current
// position would skip every change made meanwhile, and a restored
// database's lower positions would make every later change look older
// than what the caches hold.
//
// Capture records the source when it first streams, checks it at every
// start, and refuses to stream on a mismatch until an operator asks for a
// resync (`sluice resync`), which the record also carries.
package lineage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluicehq/sluice/pkg/topology"
)

// Source is where a stream's changes come from.
type Source struct {
	// SystemID is the Postgres cluster's system identifier: a restored or
	// replaced cluster whose data directory was made anew has another.
	SystemID string `json:"system_id"`
	Database string `json:"database"`
	Slot     string `json:"slot"`
	// FromSeq is the last stream sequence before this source: positions in
	// the stream up to it belong to an earlier source, and tell nothing
	// about what of this one was published.
	FromSeq uint64 `json:"from_seq,omitempty"`
	// Stream is when the stream FromSeq counts in was created: a stream
	// made anew (deleted, say, to change its partitions) starts over.
	Stream time.Time `json:"stream,omitzero"`
	Since  time.Time `json:"since"`
}

// After is the stream sequence after which the source's changes start, in
// the stream created at created.
func (s Source) After(created time.Time) uint64 {
	if !s.Stream.Equal(created) {
		return 0
	}
	return s.FromSeq
}

// Resync is an operator's request that capture start over from a new
// slot and backfill every sink.
type Resync struct {
	Requested time.Time `json:"requested"`
	// Done is set by capture once the slot is made and the backfills are
	// created; Backfills are their job ids.
	Done      time.Time `json:"done,omitzero"`
	Backfills []string  `json:"backfills,omitempty"`
	Error     string    `json:"error,omitempty"`
}

// Store is the stream's lineage bucket.
type Store struct {
	kv jetstream.KeyValue
}

// BucketName is the lineage bucket of a stream.
func BucketName(t topology.Topology) string { return t.Stream + "_source" }

// Open creates the bucket when missing.
func Open(ctx context.Context, js jetstream.JetStream, t topology.Topology) (*Store, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      BucketName(t),
		Description: "Sluice: the Postgres source of the stream",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    t.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("open the source record %s: %w", BucketName(t), err)
	}
	return &Store{kv: kv}, nil
}

const (
	sourceKey = "source"
	resyncKey = "resync"
)

// Source returns the recorded source; false when none is recorded yet.
func (s *Store) Source(ctx context.Context) (Source, bool, error) {
	var src Source
	ok, err := s.get(ctx, sourceKey, &src)
	return src, ok, err
}

// SetSource records src.
func (s *Store) SetSource(ctx context.Context, src Source) error {
	return s.put(ctx, sourceKey, src)
}

// Resync returns the last resync request; false when there is none.
func (s *Store) Resync(ctx context.Context) (Resync, bool, error) {
	var r Resync
	ok, err := s.get(ctx, resyncKey, &r)
	return r, ok, err
}

// SetResync stores a resync request or its outcome.
func (s *Store) SetResync(ctx context.Context, r Resync) error {
	return s.put(ctx, resyncKey, r)
}

func (s *Store) get(ctx context.Context, key string, v any) (bool, error) {
	e, err := s.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s of %s: %w", key, s.kv.Bucket(), err)
	}
	if err := json.Unmarshal(e.Value(), v); err != nil {
		return false, fmt.Errorf("read %s of %s: %w", key, s.kv.Bucket(), err)
	}
	return true, nil
}

func (s *Store) put(ctx context.Context, key string, v any) error {
	b, _ := json.Marshal(v)
	if _, err := s.kv.Put(ctx, key, b); err != nil {
		return fmt.Errorf("write %s of %s: %w", key, s.kv.Bucket(), err)
	}
	return nil
}

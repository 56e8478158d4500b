// Package backfill keeps the backfill jobs in a NATS key-value bucket:
// `sluice backfill` creates and cancels them, capture runs them and records
// its progress (the cursor is durable, so a backfill survives a crash), and
// `sluice status` reads them.
package backfill

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/sluicehq/sluice/pkg/topology"
)

// State of a job.
type State string

// States. Pending and Running are active; the others are final.
const (
	Pending   State = "pending"
	Running   State = "running"
	Done      State = "done"
	Cancelled State = "cancelled"
	Failed    State = "failed"
)

// Active reports whether a job in state s still has work to do.
func (s State) Active() bool { return s == Pending || s == Running }

// Job is one backfill of one table into one sink.
type Job struct {
	ID    string `json:"id"`
	Sink  string `json:"sink"`
	Table string `json:"table"` // schema.table
	Where string `json:"where,omitempty"`
	// Keys, when set, are the rows to read (each its primary-key values,
	// as text, in column order) instead of the whole table: a row that is
	// gone is deleted from the sink. `sluice dlq replay` asks for these.
	Keys  [][]string `json:"keys,omitempty"`
	State State      `json:"state"`
	// Cursor holds the primary-key values (text) of the last row sent;
	// the next chunk starts after it. Empty: from the start.
	Cursor  []string  `json:"cursor,omitempty"`
	Done    int64     `json:"done"`  // rows read so far
	Total   int64     `json:"total"` // estimated rows in all, at the start
	Rate    float64   `json:"rate"`  // rows per second, recently
	Error   string    `json:"error,omitempty"`
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
}

// ETA estimates the time left, or 0 when unknown.
func (j *Job) ETA() time.Duration {
	if j.Rate <= 0 || j.Total <= j.Done {
		return 0
	}
	return time.Duration(float64(j.Total-j.Done) / j.Rate * float64(time.Second))
}

// Store is the bucket of jobs.
type Store struct {
	kv jetstream.KeyValue
}

// BucketName is the jobs' bucket of a stream.
func BucketName(t topology.Topology) string { return t.Stream + "_backfills" }

// Open creates the bucket when missing.
func Open(ctx context.Context, js jetstream.JetStream, t topology.Topology) (*Store, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      BucketName(t),
		Description: "Sluice backfill jobs",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    t.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("open backfill jobs %s: %w", BucketName(t), err)
	}
	return &Store{kv: kv}, nil
}

// jobKey namespaces jobs away from the other keys of the bucket.
func jobKey(id string) string { return "job." + id }

// Create stores a new pending job and returns it.
func (s *Store) Create(ctx context.Context, sink, table, where string) (Job, error) {
	now := time.Now().UTC()
	j := Job{ID: strings.ToLower(nuid.Next()), Sink: sink, Table: table, Where: where, State: Pending, Created: now, Updated: now}
	b, _ := json.Marshal(j)
	if _, err := s.kv.Create(ctx, jobKey(j.ID), b); err != nil {
		return Job{}, fmt.Errorf("create backfill: %w", err)
	}
	return j, nil
}

// CreateKeys stores a new pending job that reads the rows of table with
// the given primary keys into sink, and deletes the keys of those gone.
func (s *Store) CreateKeys(ctx context.Context, sink, table string, keys [][]string) (Job, error) {
	now := time.Now().UTC()
	j := Job{ID: strings.ToLower(nuid.Next()), Sink: sink, Table: table, Keys: keys, State: Pending, Created: now, Updated: now, Total: int64(len(keys))}
	b, _ := json.Marshal(j)
	if _, err := s.kv.Create(ctx, jobKey(j.ID), b); err != nil {
		return Job{}, fmt.Errorf("create backfill: %w", err)
	}
	return j, nil
}

// Get returns a job and its revision, for Update.
func (s *Store) Get(ctx context.Context, id string) (Job, uint64, error) {
	e, err := s.kv.Get(ctx, jobKey(id))
	if err != nil {
		return Job{}, 0, fmt.Errorf("read backfill %s: %w", id, err)
	}
	var j Job
	if err := json.Unmarshal(e.Value(), &j); err != nil {
		return Job{}, 0, fmt.Errorf("read backfill %s: %w", id, err)
	}
	return j, e.Revision(), nil
}

// ErrChanged is returned by Update when the job changed since it was read.
var ErrChanged = errors.New("backfill changed meanwhile")

// Update stores j if it is still at revision rev, and returns the new one.
func (s *Store) Update(ctx context.Context, j Job, rev uint64) (uint64, error) {
	j.Updated = time.Now().UTC()
	b, _ := json.Marshal(j)
	rev, err := s.kv.Update(ctx, jobKey(j.ID), b, rev)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return 0, ErrChanged
	}
	if err != nil {
		return 0, fmt.Errorf("save backfill %s: %w", j.ID, err)
	}
	return rev, nil
}

// List returns every job, oldest first.
func (s *Store) List(ctx context.Context) ([]Job, error) {
	lister, err := s.kv.ListKeysFiltered(ctx, jobKey("*"))
	if err != nil {
		return nil, fmt.Errorf("list backfills: %w", err)
	}
	var jobs []Job
	for k := range lister.Keys() {
		j, _, err := s.Get(ctx, strings.TrimPrefix(k, "job."))
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		jobs = append(jobs, j)
	}
	slices.SortFunc(jobs, func(a, b Job) int { return a.Created.Compare(b.Created) })
	return jobs, nil
}

// Cancel marks the active jobs of sink and table cancelled, and returns
// them. Capture stops a running one before its next chunk.
func (s *Store) Cancel(ctx context.Context, sink, table string) ([]Job, error) {
	jobs, err := s.List(ctx)
	if err != nil {
		return nil, err
	}
	var cancelled []Job
	for _, j := range jobs {
		if j.Sink != sink || j.Table != table || !j.State.Active() {
			continue
		}
		for {
			cur, rev, err := s.Get(ctx, j.ID)
			if err != nil {
				return nil, err
			}
			if !cur.State.Active() {
				break
			}
			cur.State = Cancelled
			if _, err = s.Update(ctx, cur, rev); errors.Is(err, ErrChanged) {
				continue // capture saved progress meanwhile: read again
			} else if err != nil {
				return nil, err
			}
			cancelled = append(cancelled, cur)
			break
		}
	}
	return cancelled, nil
}

// Seen records that the initial backfill of sink was created, and reports
// whether it already was.
func (s *Store) Seen(ctx context.Context, sink string) (bool, error) {
	_, err := s.kv.Create(ctx, "seen."+sink, []byte(time.Now().UTC().Format(time.RFC3339)))
	if errors.Is(err, jetstream.ErrKeyExists) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("record sink %s as seen: %w", sink, err)
	}
	return false, nil
}

// Watch signals on the returned channel whenever a job changes, until ctx
// is done.
func (s *Store) Watch(ctx context.Context) (<-chan struct{}, error) {
	w, err := s.kv.Watch(ctx, jobKey("*"), jetstream.UpdatesOnly())
	if err != nil {
		return nil, fmt.Errorf("watch backfills: %w", err)
	}
	ch := make(chan struct{}, 1)
	go func() {
		defer w.Stop()
		for range w.Updates() {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}()
	return ch, nil
}

// Marker is what the writers of a sink know of its Redis: the marker it
// holds (a key written once, gone when Redis loses its data) and its
// replication id (which changes when it restarts or a replica takes over),
// and how many times they found it reset.
type Marker struct {
	Value         string    `json:"value"`
	ReplicationID string    `json:"replication_id,omitempty"`
	Resets        int       `json:"resets"`
	LastReset     time.Time `json:"last_reset,omitzero"`
}

func markerKey(sink string) string { return "marker." + sink }

// Marker returns a sink's marker record and its revision; revision 0 when
// there is none yet.
func (s *Store) Marker(ctx context.Context, sink string) (Marker, uint64, error) {
	var m Marker
	e, err := s.kv.Get(ctx, markerKey(sink))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return m, 0, nil
	}
	if err != nil {
		return m, 0, fmt.Errorf("read the redis marker of sink %s: %w", sink, err)
	}
	if err := json.Unmarshal(e.Value(), &m); err != nil {
		return m, 0, fmt.Errorf("read the redis marker of sink %s: %w", sink, err)
	}
	return m, e.Revision(), nil
}

// PutMarker stores a sink's marker record if it is still at revision rev
// (0: there was none); ErrChanged when another writer stored one first.
func (s *Store) PutMarker(ctx context.Context, sink string, m Marker, rev uint64) error {
	b, _ := json.Marshal(m)
	var err error
	if rev == 0 {
		_, err = s.kv.Create(ctx, markerKey(sink), b)
	} else {
		_, err = s.kv.Update(ctx, markerKey(sink), b, rev)
	}
	if errors.Is(err, jetstream.ErrKeyExists) {
		return ErrChanged
	}
	if err != nil {
		return fmt.Errorf("store the redis marker of sink %s: %w", sink, err)
	}
	return nil
}

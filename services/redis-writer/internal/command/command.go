// Package command turns change events into the Redis commands of a Redis
// String sink: SET of the value for insert, update and read, DEL for delete,
// under the key "<prefix>:<table>:<pk>", after the sink's filter, transform
// and routing expressions when it has them.
package command

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/sluicehq/sluice/pkg/change"
	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/expression"
	sluicev1 "github.com/sluicehq/sluice/proto/sluice/v1"
)

// Command is one versioned write of one key, or a truncate.
type Command struct {
	Del bool
	// Truncate deletes every key starting with Key that is older than
	// Version (a TRUNCATE of the table).
	Truncate bool
	Key      string
	Value    []byte
	// Version orders the writes of a key (change.AppendVersion); a write
	// older than what the key holds is skipped.
	Version string
	// ExpireMS is the key's PX; 0: no expiry.
	ExpireMS int64
	// VersionExpireMS is the PX of the key's version record; 0: none.
	VersionExpireMS int64
	// Message marks a value that is Sequin's message JSON of the change,
	// which carries its version: it needs no version record.
	Message bool
	// Partition is the stream partition the change came from, whose fence
	// guards the write; -1: none.
	Partition int
	// Insert marks the write of a row its change inserted, or a backfill
	// read: its key is likely absent (a backfill most often fills an empty
	// cache), which makes it cheaper to read with its record.
	Insert bool
	// Retried marks a change tried again after it failed on its own: while
	// Redis may evict keys, it is written only over a known version.
	Retried bool
	// Shared marks a key that changes of other partitions may write too
	// (any key a routing expression names, a row's old key once its
	// primary key changed): the script writes it, ordering the versions
	// whichever writer comes first.
	Shared bool
	// Home is the partition whose changes write a Shared key otherwise (a
	// row's old key: its row's partition), whose transactions the script's
	// write must break; AllPartitions: any (a truncated table's keys); -1:
	// none (routing, which writes every key by the script).
	Home int
}

// AllPartitions is the Home of a key that any partition may write.
const AllPartitions = -2

// Renderer builds the commands of one sink.
type Renderer struct {
	prefix   string
	consumer change.Consumer
	database *change.Database
	// what the expressions see of the annotations configured
	consumerAnnotations, databaseAnnotations map[string]any
	expireMS                                 int64
	tombstoneMS                              int64
	truncate                                 bool
	deletes                                  bool // the sink applies deletes
	filter                                   *expression.Filter
	transform                                *expression.Transform
	routing                                  *expression.Routing
	partition                                func(schema, table string, pk []string) int
}

// NewRenderer returns the renderer of a sink, compiling its expressions.
// partition is the stream partition of a row's changes (see
// topology.Topology.Partition), for the Home of its old key once its
// primary key changed.
func NewRenderer(s *config.Sink, pg config.Postgres, partition func(schema, table string, pk []string) int) (*Renderer, error) {
	consumer, err := annotations(s.Annotations)
	if err != nil {
		return nil, fmt.Errorf("annotations: %w", err)
	}
	database, err := annotations(pg.Annotations)
	if err != nil {
		return nil, fmt.Errorf("postgres.annotations: %w", err)
	}
	r := &Renderer{
		prefix:      s.Destination.KeyPrefix,
		consumer:    change.NewConsumer(s.Name, consumer),
		database:    change.NewDatabase(pg.Name, database),
		tombstoneMS: s.TombstoneTTL.Milliseconds(),
		truncate:    s.OnTruncate == "delete",
		deletes:     slices.Contains(s.Actions, "delete"),
		partition:   partition,
	}
	if s.Destination.ExpireMS != nil {
		r.expireMS = *s.Destination.ExpireMS // 0 means no expiry: Redis refuses PX 0
	}
	r.consumerAnnotations, _ = expression.DecodeObject(r.consumer.Annotations)
	r.databaseAnnotations, _ = expression.DecodeObject(r.database.Annotations)
	if s.Filter != "" {
		if r.filter, err = expression.CompileFilter(s.Filter); err != nil {
			return nil, err
		}
	}
	if s.Transform != "" {
		if r.transform, err = expression.CompileTransform(s.Transform); err != nil {
			return nil, err
		}
	}
	if s.Routing != "" {
		if r.routing, err = expression.CompileRouting(s.Routing); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// Append appends the commands of ev: none when the filter rejects an
// insert or a read; one; or, for an UPDATE that changed the key, a DEL of
// the old key and a SET of the new one. An error is an expression that
// failed on ev.
//
// A row leaves the cache when it is deleted or when an update makes it
// stop matching the filter (a DEL, unless actions leave out delete): the
// filter is not asked about a delete, whose record under REPLICA IDENTITY
// DEFAULT holds only the key.
func (r *Renderer) Append(cmds []Command, ev *sluicev1.ChangeEvent) ([]Command, error) {
	if ev.Action == sluicev1.Action_ACTION_TRUNCATE {
		if !r.truncate {
			return cmds, nil
		}
		version := string(change.AppendVersion(nil, ev.CommitLsn, ev.CommitIdx))
		return append(cmds, Command{Truncate: true, Key: r.prefix + ":" + ev.Table + ":", Version: version, VersionExpireMS: r.tombstoneMS, Partition: -1, Home: -1}), nil
	}
	var in *expression.Input
	if r.filter != nil || r.transform != nil || r.routing != nil {
		var err error
		if in, err = r.input(ev); err != nil {
			return cmds, err
		}
	}
	del := ev.Action == sluicev1.Action_ACTION_DELETE
	rejected := false
	if r.filter != nil && !del {
		ok, err := r.filter.Match(in)
		if err != nil {
			return cmds, err
		}
		if !ok && (ev.Action != sluicev1.Action_ACTION_UPDATE || !r.deletes) {
			return cmds, nil
		}
		rejected = !ok
	}
	version := string(change.AppendVersion(make([]byte, 0, change.VersionLen), ev.CommitLsn, ev.CommitIdx))
	c := Command{Key: r.Key(ev.Table, ev.PkValues), Del: del || rejected, Version: version, ExpireMS: r.expireMS, Partition: -1, Home: -1,
		Insert: ev.Action == sluicev1.Action_ACTION_INSERT || ev.Action == sluicev1.Action_ACTION_READ, Shared: r.routing != nil}
	if r.routing != nil {
		rt, err := r.routing.Route(in)
		if err != nil && del {
			return cmds, fmt.Errorf("%w (a delete's record holds its key columns only, unless the table has REPLICA IDENTITY FULL)", err)
		}
		if err != nil {
			return cmds, err
		}
		c.Key = rt.Key
		switch {
		case rejected:
		case rt.Action == "del":
			c.Del = true
		case rt.Action == "set":
			c.Del = false
		}
		if rt.ExpireMS > 0 {
			c.ExpireMS = rt.ExpireMS
		}
	}
	if len(ev.OldPkValues) > 0 {
		old := r.Key(ev.Table, ev.OldPkValues)
		if r.routing != nil {
			oin, err := r.oldInput(in, ev)
			if err != nil {
				return cmds, err
			}
			rt, err := r.routing.Route(oin)
			if err != nil {
				return cmds, err
			}
			old = rt.Key
		}
		// The old key goes, unless routing gives the row the same key
		// again: the one write below then holds the new row. Without
		// routing, the old key is its row's, whose partition writes it
		// otherwise.
		if old != c.Key {
			home := -1
			if r.routing == nil && r.partition != nil {
				home = r.partition(ev.Schema, ev.Table, ev.OldPkValues)
			}
			cmds = append(cmds, Command{Del: true, Key: old, Version: version, VersionExpireMS: r.tombstoneMS, Partition: -1, Shared: true, Home: home})
		}
	}
	if c.Del {
		c.ExpireMS, c.VersionExpireMS = 0, r.tombstoneMS
		return append(cmds, c), nil
	}
	if r.transform != nil {
		v, err := r.transform.Value(in)
		if err != nil {
			return cmds, err
		}
		c.Value = v
	} else {
		c.Value, c.Message = change.AppendMessage(nil, ev, r.consumer, r.database), true
	}
	if c.ExpireMS > 0 {
		// The version outlives the value, so a late older change cannot
		// bring an expired key back with stale data.
		c.VersionExpireMS = max(c.ExpireMS, r.tombstoneMS)
	}
	return append(cmds, c), nil
}

// Key is the default key: "<prefix>:<table>:<pk1>:<pk2>…".
func (r *Renderer) Key(table string, pk []string) string {
	var b strings.Builder
	b.Grow(len(r.prefix) + len(table) + 2 + 8*len(pk))
	b.WriteString(r.prefix)
	b.WriteByte(':')
	b.WriteString(table)
	for _, v := range pk {
		b.WriteByte(':')
		b.WriteString(v)
	}
	return b.String()
}

// input is what the sink's expressions see of ev.
func (r *Renderer) input(ev *sluicev1.ChangeEvent) (*expression.Input, error) {
	rec, err := expression.DecodeObject(ev.Record)
	if err != nil {
		return nil, err
	}
	changes, err := expression.DecodeObject(ev.Changes)
	if err != nil {
		return nil, err
	}
	pks := make([]any, len(ev.PkValues))
	for i, v := range ev.PkValues {
		pks[i] = v
	}
	annotations, err := expression.Decode(change.AppendAnnotations(nil, ev.TransactionAnnotations))
	if err != nil {
		return nil, err
	}
	name, id := r.database.NameAndID(ev.Database)
	return &expression.Input{
		Action:  change.Action(ev.Action),
		Record:  rec,
		Changes: changes,
		Metadata: map[string]any{
			"table_schema":            ev.Schema,
			"table_name":              ev.Table,
			"commit_timestamp":        string(change.AppendTimestamp(nil, ev.CommitTimestampUs)),
			"commit_lsn":              int64(ev.CommitLsn),
			"commit_idx":              int64(ev.CommitIdx),
			"database_name":           name,
			"database":                map[string]any{"annotations": r.databaseAnnotations, "database": ev.Database, "hostname": ev.Host, "id": id, "name": name},
			"enrichment":              nil,
			"transaction_annotations": annotations,
			"idempotency_key":         ev.IdempotencyKey,
			"record_pks":              pks,
			"consumer":                map[string]any{"annotations": r.consumerAnnotations, "id": r.consumer.ID, "name": r.consumer.Name},
		},
	}, nil
}

// annotations encodes configured annotations as a JSON object.
func annotations(m map[string]any) ([]byte, error) {
	if m == nil {
		return nil, nil
	}
	return json.Marshal(m)
}

// oldInput approximates the row before an UPDATE that moved its key, to
// route the DEL of its old key: the record with the old values of changed
// columns (known under REPLICA IDENTITY FULL) and the old key values.
func (r *Renderer) oldInput(in *expression.Input, ev *sluicev1.ChangeEvent) (*expression.Input, error) {
	old := make(map[string]any, len(in.Record))
	for k, v := range in.Record {
		old[k] = v
	}
	for k, v := range in.Changes {
		old[k] = v
	}
	for i, col := range ev.PkColumns {
		text := ev.OldPkValues[i]
		old[col] = text
		if _, isNum := in.Record[col].(int64); isNum { // keep the column's type
			if m, err := expression.DecodeObject([]byte(`{"v":` + text + `}`)); err == nil {
				old[col] = m["v"]
			}
		}
	}
	o := *in
	o.Record = old
	return &o, nil
}

// Package event turns decoded pgoutput row changes into ChangeEvents: the
// rendered record and changes, the primary key, and the event's position.
package event

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"

	"github.com/sluicehq/sluice/pkg/change"
	sluicev1 "github.com/sluicehq/sluice/proto/sluice/v1"
	"github.com/sluicehq/sluice/services/capture/internal/pgoutput"
	"github.com/sluicehq/sluice/services/capture/internal/pgvalue"
)

// Origin is where the changes come from: the database and its server.
type Origin struct {
	Database string
	Host     string
}

// Tx is the transaction a change belongs to.
//
// A Tx is also how a backfill chunk's rows are numbered: they take the
// commit position of the transaction of its high watermark.
type Tx struct {
	Origin
	CommitLSN  uint64
	CommitTime int64 // microseconds since the Unix epoch
	// Annotations are the transaction annotations in force (see the
	// decoder), given to each change built.
	Annotations string
	nextIdx     uint32
}

// NewTx starts a transaction.
func NewTx(o Origin, b *pgoutput.Begin) *Tx {
	return &Tx{Origin: o, CommitLSN: uint64(b.FinalLSN), CommitTime: b.CommitTime.UnixMicro()}
}

// Skip counts a change that produces no event (its table is not captured,
// or it is a logical message), so that commit_idx counts as Sequin's does,
// whatever tables are captured.
func (tx *Tx) Skip() { tx.nextIdx++ }

// Next takes the next commit index.
func (tx *Tx) Next() uint32 {
	idx := tx.nextIdx
	tx.nextIdx++
	return idx
}

// Truncate builds the events of a TRUNCATE of the table at commit index
// idx (a TRUNCATE message counts once, whatever its tables): copies of
// them, one for each partition.
func (r *Relation) Truncate(tx *Tx, idx uint32, copies int) []*sluicev1.ChangeEvent {
	evs := make([]*sluicev1.ChangeEvent, copies)
	for i := range evs {
		evs[i] = &sluicev1.ChangeEvent{
			IdempotencyKey:         change.IdempotencyKey(tx.CommitLSN, idx),
			Action:                 sluicev1.Action_ACTION_TRUNCATE,
			Database:               tx.Database,
			Host:                   tx.Host,
			Schema:                 r.Schema,
			Table:                  r.Table,
			CommitLsn:              tx.CommitLSN,
			CommitIdx:              idx,
			CommitTimestampUs:      tx.CommitTime,
			TransactionAnnotations: tx.Annotations,
		}
	}
	return evs
}

// Read builds the event of a row copied by backfill id for sink. Its
// idempotency key is Sequin's for backfills: base64 of
// "<id>:<pk1>:<pk2>…".
func (r *Relation) Read(tx *Tx, row pgoutput.Tuple, id, sink string) (*sluicev1.ChangeEvent, error) {
	ev, err := r.event(tx, sluicev1.Action_ACTION_READ, row, nil)
	if err != nil {
		return nil, err
	}
	ev.IdempotencyKey = base64.StdEncoding.EncodeToString([]byte(id + ":" + strings.Join(ev.PkValues, ":")))
	ev.BackfillId, ev.BackfillSink = id, sink
	return ev, nil
}

// Relation is a captured table in the shape its latest relation message
// gave, with its primary key and how each column renders.
type Relation struct {
	Schema, Table string
	columns       []pgoutput.Column
	types         []*pgvalue.Type
	names         [][]byte // `"name":` of each column, JSON-encoded once
	pk            []int    // indexes of the primary-key columns, in column order
	pkNames       []string
}

// Gone returns the event of a row that a backfill by key found missing: a
// DELETE of its key for one sink, ordered like a READ at tx.
func (r *Relation) Gone(tx *Tx, pk []string, id, sink string) (*sluicev1.ChangeEvent, error) {
	if len(pk) != len(r.pk) {
		return nil, fmt.Errorf("table %s.%s: a key of %d values for a primary key of %d", r.Schema, r.Table, len(pk), len(r.pk))
	}
	row := make(pgoutput.Tuple, len(r.columns))
	for i := range row {
		row[i] = pgoutput.Value{Kind: pgoutput.Null}
	}
	for i, c := range r.pk {
		row[c] = pgoutput.Value{Kind: pgoutput.Text, Data: []byte(pk[i])}
	}
	ev, err := r.event(tx, sluicev1.Action_ACTION_DELETE, row, nil)
	if err != nil {
		return nil, err
	}
	ev.BackfillId, ev.BackfillSink = id, sink
	return ev, nil
}

// NewRelation pairs a relation message with the table's primary-key column
// names and the Type of each column. Every key column must be in the
// relation.
func NewRelation(rel *pgoutput.Relation, pk []string, types []*pgvalue.Type) (*Relation, error) {
	if len(types) != len(rel.Columns) {
		return nil, fmt.Errorf("table %s.%s: %d column types for %d columns", rel.Namespace, rel.Name, len(types), len(rel.Columns))
	}
	r := &Relation{Schema: rel.Namespace, Table: rel.Name, columns: slices.Clone(rel.Columns), types: slices.Clone(types)}
	for i, c := range rel.Columns {
		name := change.AppendString(nil, c.Name)
		r.names = append(r.names, append(name, ':'))
		if slices.Contains(pk, c.Name) {
			r.pk = append(r.pk, i)
			r.pkNames = append(r.pkNames, c.Name)
		}
	}
	if len(r.pk) != len(pk) {
		return nil, fmt.Errorf("table %s.%s: primary key %v is not among the replicated columns", rel.Namespace, rel.Name, pk)
	}
	return r, nil
}

// Insert builds the event of a new row.
func (r *Relation) Insert(tx *Tx, m *pgoutput.Insert) (*sluicev1.ChangeEvent, error) {
	return r.event(tx, sluicev1.Action_ACTION_INSERT, m.New, nil)
}

// Update builds the event of a changed row. Under REPLICA IDENTITY FULL the
// old row fills unchanged TOAST values and gives changes; otherwise changes
// is {}. When the key changed, the event carries the old key too.
func (r *Relation) Update(tx *Tx, m *pgoutput.Update) (*sluicev1.ChangeEvent, error) {
	var old pgoutput.Tuple
	if m.OldKind == 'O' {
		old = m.Old
	}
	ev, err := r.event(tx, sluicev1.Action_ACTION_UPDATE, m.New, old)
	if err != nil {
		return nil, err
	}
	ev.Changes = r.changes(m.New, old)
	if m.Old != nil {
		oldPK, err := r.Key(m.Old, nil)
		if err != nil {
			return nil, err
		}
		if !slices.Equal(oldPK, ev.PkValues) {
			ev.OldPkValues = oldPK
		}
	}
	return ev, nil
}

// Delete builds the event of a removed row from the old key or row.
func (r *Relation) Delete(tx *Tx, m *pgoutput.Delete) (*sluicev1.ChangeEvent, error) {
	return r.event(tx, sluicev1.Action_ACTION_DELETE, m.Old, nil)
}

func (r *Relation) event(tx *Tx, action sluicev1.Action, row, old pgoutput.Tuple) (*sluicev1.ChangeEvent, error) {
	if len(row) != len(r.columns) {
		return nil, fmt.Errorf("table %s.%s: row has %d columns, relation %d", r.Schema, r.Table, len(row), len(r.columns))
	}
	pk, err := r.Key(row, old)
	if err != nil {
		return nil, err
	}
	idx := tx.Next()
	ev := &sluicev1.ChangeEvent{
		IdempotencyKey:         change.IdempotencyKey(tx.CommitLSN, idx),
		Action:                 action,
		Database:               tx.Database,
		Host:                   tx.Host,
		Schema:                 r.Schema,
		Table:                  r.Table,
		PkColumns:              r.pkNames,
		PkValues:               pk,
		CommitLsn:              tx.CommitLSN,
		CommitIdx:              idx,
		CommitTimestampUs:      tx.CommitTime,
		TransactionAnnotations: tx.Annotations,
	}
	ev.Record, ev.UnchangedToastColumns = r.record(row, old)
	return ev, nil
}

// PrimaryKey returns the names of the primary-key columns, in column order.
func (r *Relation) PrimaryKey() []string { return r.pkNames }

// Column returns the name of the i-th column.
func (r *Relation) Column(i int) string { return r.columns[i].Name }

// Key returns the primary-key values of row, taking an unchanged TOAST key
// value from old.
func (r *Relation) Key(row, old pgoutput.Tuple) ([]string, error) {
	pk := make([]string, len(r.pk))
	for i, c := range r.pk {
		v := row[c]
		if v.Kind == pgoutput.Unchanged && old != nil {
			v = old[c]
		}
		if v.Kind != pgoutput.Text {
			return nil, fmt.Errorf("table %s.%s: primary-key column %s was not sent as text (kind %q)", r.Schema, r.Table, r.pkNames[i], v.Kind)
		}
		pk[i] = string(v.Data)
	}
	return pk, nil
}

// MissingToast returns the indexes of the columns of an update's new row
// that are unchanged TOAST values (not sent) which its old row does not
// supply either: all of them without REPLICA IDENTITY FULL.
func (r *Relation) MissingToast(m *pgoutput.Update) []int {
	var missing []int
	for i, v := range m.New {
		if v.Kind == pgoutput.Unchanged && (m.OldKind != 'O' || i >= len(m.Old) || m.Old[i].Kind == pgoutput.Unchanged) {
			missing = append(missing, i)
		}
	}
	return missing
}

// record renders row as a JSON object in column order. An unchanged TOAST
// value is taken from old when there is one, and otherwise left out and
// named in toast, never written as null.
func (r *Relation) record(row, old pgoutput.Tuple) (rec []byte, toast []string) {
	size := 2
	for i, v := range row {
		size += len(r.names[i]) + len(v.Data) + 8
	}
	rec = make([]byte, 0, size)
	rec = append(rec, '{')
	first := true
	for i, v := range row {
		if v.Kind == pgoutput.Unchanged && old != nil {
			v = old[i]
		}
		if v.Kind == pgoutput.Unchanged {
			toast = append(toast, r.columns[i].Name)
			continue
		}
		if !first {
			rec = append(rec, ',')
		}
		first = false
		rec = append(rec, r.names[i]...)
		rec = r.appendValue(rec, i, v)
	}
	return append(rec, '}'), toast
}

// changes renders the old values of the columns an UPDATE changed, or {}
// when Postgres did not send the old row.
func (r *Relation) changes(row, old pgoutput.Tuple) []byte {
	out := []byte{'{'}
	if len(old) == len(row) {
		for i, v := range row {
			o := old[i]
			if v.Kind == pgoutput.Unchanged || o.Kind == pgoutput.Unchanged || o.Kind == v.Kind && bytes.Equal(o.Data, v.Data) {
				continue
			}
			if len(out) > 1 {
				out = append(out, ',')
			}
			out = append(out, r.names[i]...)
			out = r.appendValue(out, i, o)
		}
	}
	return append(out, '}')
}

func (r *Relation) appendValue(dst []byte, col int, v pgoutput.Value) []byte {
	switch v.Kind {
	case pgoutput.Text:
		return r.types[col].Append(dst, v.Data)
	case pgoutput.Binary: // not requested; render the bytes rather than fail
		return change.AppendBytes(dst, v.Data)
	}
	return append(dst, "null"...)
}

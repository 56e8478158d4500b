// Package decoder turns the pgoutput messages of a replication session into
// ChangeEvents of the captured tables. What the messages lack it reads from
// the catalog: how user-defined column types render, the primary key under
// REPLICA IDENTITY FULL, and the values of unchanged TOAST columns.
package decoder

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	sluicev1 "github.com/sluicehq/sluice/proto/sluice/v1"
	"github.com/sluicehq/sluice/services/capture/internal/event"
	"github.com/sluicehq/sluice/services/capture/internal/pgoutput"
	"github.com/sluicehq/sluice/services/capture/internal/pgvalue"
)

// Catalog reads what the replication stream does not carry.
type Catalog interface {
	// PrimaryKey returns the primary-key columns of a table, in column order.
	PrimaryKey(ctx context.Context, schema, table string) ([]string, error)
	// Row returns the current values, in text format, of the columns cols
	// of the row whose key columns hold keyValues, and false when there is
	// no such row.
	Row(ctx context.Context, schema, table string, key, keyValues, cols []string) ([]pgoutput.Value, bool, error)
}

// Decoder decodes one replication session: relation messages are only
// valid within the session that sent them. It is not safe for concurrent
// use.
type Decoder struct {
	origin   event.Origin
	captured func(schema, table string) bool
	catalog  Catalog
	types    *pgvalue.Types
	rels     map[uint32]*event.Relation // captured relations by relation id
	tx       *event.Tx
	// annotations are the transaction annotations in force: set and
	// cleared by logical messages, forgotten at each commit, as Sequin does.
	annotations string
}

// Transaction annotations are set and cleared by logical messages of
// these prefixes (pg_logical_emit_message(true, AnnotationsSet, '<json>')).
const (
	AnnotationsSet   = "sequin:transaction_annotations.set"
	AnnotationsClear = "sequin:transaction_annotations.clear"
)

// New returns a decoder of the changes of database's tables for which
// captured is true. types may serve many sessions: a type OID keeps its
// meaning.
func New(origin event.Origin, captured func(schema, table string) bool, catalog Catalog, types *pgvalue.Types) *Decoder {
	return &Decoder{origin: origin, captured: captured, catalog: catalog, types: types, rels: map[uint32]*event.Relation{}}
}

// InTx reports whether a transaction has begun and not yet committed.
func (d *Decoder) InTx() bool { return d.tx != nil }

// Tx is the transaction being decoded, or nil.
func (d *Decoder) Tx() *event.Tx { return d.tx }

// Decode handles one message and returns the event of a row change of a
// captured table, or nil.
func (d *Decoder) Decode(ctx context.Context, m pgoutput.Message) (*sluicev1.ChangeEvent, error) {
	switch m := m.(type) {
	case *pgoutput.Begin:
		d.tx = event.NewTx(d.origin, m)
		d.tx.Annotations = d.annotations
	case *pgoutput.Commit:
		d.tx, d.annotations = nil, ""
	case *pgoutput.LogicalMessage:
		if d.tx != nil && m.Transactional {
			d.tx.Skip() // Sequin counts it
		}
		switch m.Prefix {
		case AnnotationsSet:
			d.annotations = string(m.Content)
			if !utf8.ValidString(d.annotations) {
				// JSON is UTF-8: such annotations are invalid, and the
				// writers write null for them, as for any invalid JSON.
				// The mark keeps them invalid once made encodable.
				d.annotations = "(not UTF-8) " + strings.ToValidUTF8(d.annotations, "\uFFFD")
			}
		case AnnotationsClear:
			d.annotations = ""
		default:
			return nil, nil
		}
		if d.tx != nil {
			d.tx.Annotations = d.annotations
		}
	case *pgoutput.Relation:
		return nil, d.relation(ctx, m)
	case *pgoutput.Insert:
		rel, err := d.relationOf(m.RelationID)
		if rel == nil {
			return nil, err
		}
		return rel.Insert(d.tx, m)
	case *pgoutput.Update:
		rel, err := d.relationOf(m.RelationID)
		if rel == nil {
			return nil, err
		}
		if err := d.fillToast(ctx, rel, m); err != nil {
			return nil, err
		}
		return rel.Update(d.tx, m)
	case *pgoutput.Delete:
		rel, err := d.relationOf(m.RelationID)
		if rel == nil {
			return nil, err
		}
		return rel.Delete(d.tx, m)
	}
	return nil, nil
}

// Truncate returns the events of a TRUNCATE: for each captured table,
// copies events (one per partition, see sluicev1.Action_ACTION_TRUNCATE),
// all at the message's one commit index.
func (d *Decoder) Truncate(m *pgoutput.Truncate, copies int) ([]*sluicev1.ChangeEvent, error) {
	if d.tx == nil {
		return nil, errors.New("truncate outside a transaction")
	}
	idx := d.tx.Next()
	var evs []*sluicev1.ChangeEvent
	for _, id := range m.RelationIDs {
		if rel := d.rels[id]; rel != nil {
			evs = append(evs, rel.Truncate(d.tx, idx, copies)...)
		}
	}
	return evs, nil
}

// relationOf returns the relation a row change belongs to, or nil when its
// table is not captured.
func (d *Decoder) relationOf(id uint32) (*event.Relation, error) {
	if d.tx == nil {
		return nil, errors.New("row change outside a transaction")
	}
	rel, ok := d.rels[id]
	if !ok {
		d.tx.Skip()
		return nil, nil
	}
	return rel, nil
}

// relation takes in a table's shape: sent before its first change in a
// session and after every change of its columns.
func (d *Decoder) relation(ctx context.Context, m *pgoutput.Relation) error {
	if !d.captured(m.Namespace, m.Name) {
		delete(d.rels, m.ID) // published, but not captured: its changes are skipped
		return nil
	}
	pk := identityKey(m)
	if pk == nil {
		var err error
		if pk, err = d.catalog.PrimaryKey(ctx, m.Namespace, m.Name); err != nil {
			return err
		}
	}
	oids := make([]uint32, len(m.Columns))
	for i, c := range m.Columns {
		oids[i] = c.TypeOID
	}
	types, err := d.types.Resolve(ctx, oids)
	if err != nil {
		return fmt.Errorf("table %s.%s: %w", m.Namespace, m.Name, err)
	}
	rel, err := event.NewRelation(m, pk, types)
	if err != nil {
		return err
	}
	d.rels[m.ID] = rel
	return nil
}

// identityKey returns the primary key as the relation message gives it:
// under REPLICA IDENTITY DEFAULT the replica identity is the primary key,
// and its columns are flagged. The message describes the table as it was
// when the change was written, which the catalog may no longer (a key
// column renamed since, say). Under FULL every column is flagged: nil.
func identityKey(m *pgoutput.Relation) []string {
	if m.ReplicaIdentity != 'd' {
		return nil
	}
	var pk []string
	for _, c := range m.Columns {
		if c.Key {
			pk = append(pk, c.Name)
		}
	}
	return pk
}

// fillToast puts into an update's new row the values of unchanged TOAST
// columns (which Postgres does not send) that the old row does not supply,
// reading them from the table by primary key, one query per such row.
//
// The value read is the row's current one: the same as this change's or
// newer, never older. Newer is acceptable: a later change of that column
// carries its own event, ordered after this one, so the key ends with that
// same value, only shown a little early. When the row is gone, the columns
// stay out of the record, listed as unchanged TOAST columns.
func (d *Decoder) fillToast(ctx context.Context, rel *event.Relation, m *pgoutput.Update) error {
	missing := rel.MissingToast(m)
	if len(missing) == 0 {
		return nil
	}
	var old pgoutput.Tuple
	if m.OldKind == 'O' {
		old = m.Old
	}
	key, err := rel.Key(m.New, old)
	if err != nil {
		return err
	}
	cols := make([]string, len(missing))
	for i, c := range missing {
		cols[i] = rel.Column(c)
	}
	vals, found, err := d.catalog.Row(ctx, rel.Schema, rel.Table, rel.PrimaryKey(), key, cols)
	if err != nil || !found {
		return err
	}
	for i, c := range missing {
		m.New[c] = vals[i]
	}
	return nil
}

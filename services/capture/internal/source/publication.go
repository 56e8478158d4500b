package source

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sluicehq/sluice/pkg/config"
)

// lockTimeout bounds the wait for the locks that changing the publication
// takes.
var lockTimeout = 30 * time.Second

// PublicationMarker is the comment that makes a publication Sluice's: its
// tables follow postgres.tables. A publication without it is the
// operator's, and is never altered.
const PublicationMarker = "managed by sluice: tables follow postgres.tables"

// Publication says what EnsurePublication found and did.
type Publication struct {
	// Created: the publication was missing; it is now, with the marker.
	Created bool
	// Adopted: it had no marker but was exactly what Sluice creates, and
	// got the marker.
	Adopted bool
	// Managed: it carries the marker.
	Managed bool
	// AllTables: it is FOR ALL TABLES.
	AllTables bool
	// Added and Removed are the tables added to and dropped from it.
	Added, Removed []string
	// Unconfigured are tables it publishes that postgres.tables does not
	// name, left published: capture skips their changes.
	Unconfigured []string
	// Unremoved is the statement to run by hand to drop Unconfigured from
	// a managed publication, when this role may not.
	Unremoved string
}

type publication struct {
	oid                                      uint32
	all, ins, upd, del, trunc, viaRoot, owns bool
	comment                                  string
	// published are the tables whose changes it publishes, members the
	// tables added to it one by one ([schema, name]).
	published []string
	members   [][2]string
	// shaped: it publishes schemas, or filters rows or columns (15+).
	shaped bool
}

func (p *publication) isMember(q string) bool {
	return slices.ContainsFunc(p.members, func(m [2]string) bool { return m[0]+"."+m[1] == q })
}

// EnsurePublication creates the publication for the configured tables
// when it is missing, and marks it as Sluice's. A marked one gets the
// configured tables it lacks and loses those no longer configured. An
// unmarked one is the operator's: it must publish the configured tables,
// and is adopted (marked) only when it is exactly what Sluice creates.
func (s *Source) EnsurePublication(ctx context.Context) (*Publication, error) {
	pub := s.cfg.Publication
	tx, err := s.conn.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("inspect publication %s: %w", pub, err)
	}
	defer tx.Rollback(context.Background())
	// A capture paused while it holds the lock, or a long VACUUM FULL
	// of a table, must not hold this one up without a word.
	if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", lockTimeout.Milliseconds())); err != nil {
		return nil, fmt.Errorf("inspect publication %s: %w", pub, err)
	}
	// Standby captures may start at once: one at a time reads and
	// changes the publication, each seeing what the one before did.
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext($1))", "sluice publication "+pub); err != nil {
		return nil, fmt.Errorf("lock publication %s: %w%s", pub, err, lockHint(err))
	}
	p, err := s.publication(ctx, tx)
	if err != nil {
		return nil, fmt.Errorf("inspect publication %s: %w", pub, err)
	}
	var r *Publication
	if p == nil {
		r, err = s.createPublication(ctx, tx)
	} else {
		r, err = s.checkPublication(ctx, tx, p)
	}
	if err != nil {
		return nil, fmt.Errorf("%w%s", err, lockHint(err))
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("publication %s: %w", pub, err)
	}
	return r, nil
}

// publication reads the publication, or returns nil when it is missing.
func (s *Source) publication(ctx context.Context, tx pgx.Tx) (*publication, error) {
	p := &publication{}
	err := tx.QueryRow(ctx, `SELECT oid, puballtables, pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot,
		pg_has_role(pubowner, 'USAGE'), coalesce(obj_description(oid, 'pg_publication'), ''),
		ARRAY(SELECT schemaname || '.' || tablename FROM pg_publication_tables t WHERE t.pubname = p.pubname)
		FROM pg_publication p WHERE pubname = $1`, s.cfg.Publication).Scan(&p.oid, &p.all, &p.ins, &p.upd, &p.del, &p.trunc, &p.viaRoot,
		&p.owns, &p.comment, &p.published)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	rows, err := tx.Query(ctx, `SELECT n.nspname::text, c.relname::text FROM pg_publication_rel r
		JOIN pg_class c ON c.oid = r.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE r.prpubid = $1 ORDER BY 1, 2`, p.oid)
	if err != nil {
		return nil, err
	}
	p.members, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) ([2]string, error) {
		var m [2]string
		return m, row.Scan(&m[0], &m[1])
	})
	if err != nil {
		return nil, err
	}
	if s.version >= 150000 {
		err = tx.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_publication_namespace WHERE pnpubid = $1)
			OR EXISTS (SELECT FROM pg_publication_rel WHERE prpubid = $1 AND (prqual IS NOT NULL OR prattrs IS NOT NULL))`, p.oid).Scan(&p.shaped)
	}
	return p, err
}

func (s *Source) createPublication(ctx context.Context, tx pgx.Tx) (*Publication, error) {
	pub := s.cfg.Publication
	// Partitioned tables publish their changes as the parent's.
	stmts := []string{
		fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s WITH (publish_via_partition_root = true)", pub, tableList(s.cfg.Tables)),
		markStatement(pub),
	}
	for _, sql := range stmts {
		if _, err := tx.Exec(ctx, sql); err != nil {
			return nil, fmt.Errorf("create publication %s: %w%s", pub, err, byHand(err, stmts))
		}
	}
	return &Publication{Created: true, Managed: true}, nil
}

func (s *Source) checkPublication(ctx context.Context, tx pgx.Tx, p *publication) (*Publication, error) {
	pub := s.cfg.Publication
	if !p.ins || !p.upd || !p.del {
		return nil, fmt.Errorf("publication %s does not publish every insert, update and delete (ALTER PUBLICATION %s SET (publish = 'insert, update, delete, truncate'))", pub, pub)
	}
	r := &Publication{AllTables: p.all, Managed: p.comment == PublicationMarker}
	if p.all {
		return r, nil
	}
	if !r.Managed && p.comment == "" && p.owns && s.exactly(p) {
		// Sluice's own, from before it marked its publications.
		if _, err := tx.Exec(ctx, markStatement(pub)); err != nil {
			return nil, fmt.Errorf("mark publication %s as Sluice's: %w", pub, err)
		}
		r.Managed, r.Adopted = true, true
		return r, nil
	}
	published := slices.Clone(p.published)
	for _, m := range p.members {
		if q := m[0] + "." + m[1]; !slices.Contains(published, q) {
			published = append(published, q)
		}
	}
	var missing, extra []string
	for _, q := range s.cfg.Tables {
		if !slices.Contains(published, q) {
			missing = append(missing, q)
		}
	}
	for _, q := range published {
		if !slices.Contains(s.cfg.Tables, q) {
			extra = append(extra, q)
		}
	}
	if !r.Managed {
		if len(missing) > 0 {
			names := tableList(missing)
			return nil, fmt.Errorf("publication %s does not include %s (ALTER PUBLICATION %s ADD TABLE %s)", pub, names, pub, names)
		}
		r.Unconfigured = extra
		return r, nil
	}

	// Tables published through a schema (FOR TABLES IN SCHEMA, added by
	// hand) cannot be dropped one by one: they stay.
	var drop []string
	for _, q := range extra {
		if p.isMember(q) {
			r.Removed = append(r.Removed, q)
			drop = append(drop, q)
		} else {
			r.Unconfigured = append(r.Unconfigured, q)
		}
	}
	var stmts []string
	if len(missing) > 0 {
		stmts = append(stmts, fmt.Sprintf("ALTER PUBLICATION %s ADD TABLE %s", pub, tableList(missing)))
	}
	if len(drop) > 0 {
		stmts = append(stmts, fmt.Sprintf("ALTER PUBLICATION %s DROP TABLE %s", pub, tableList(drop)))
	}
	if len(stmts) == 0 {
		return r, nil
	}
	if err := alter(ctx, tx, stmts); err != nil {
		if len(missing) == 0 && permissionDenied(err) {
			// Capture skips the changes of tables it does not capture:
			// keeping them published costs only their decoding.
			r.Unconfigured = append(r.Unconfigured, r.Removed...)
			r.Removed, r.Unremoved = nil, stmts[0]
			return r, nil
		}
		return nil, fmt.Errorf("update publication %s to postgres.tables: %w%s", pub, err, byHand(err, stmts))
	}
	r.Added = missing
	return r, nil
}

// alter runs stmts in a savepoint, so that a failure leaves tx usable.
func alter(ctx context.Context, tx pgx.Tx, stmts []string) error {
	sp, err := tx.Begin(ctx)
	if err != nil {
		return err
	}
	for _, sql := range stmts {
		if _, err := sp.Exec(ctx, sql); err != nil {
			sp.Rollback(ctx)
			return err
		}
	}
	return sp.Commit(ctx)
}

// exactly reports whether p is what createPublication makes for the
// configured tables.
func (s *Source) exactly(p *publication) bool {
	if p.all || p.shaped || !p.trunc || !p.viaRoot || len(p.members) != len(s.cfg.Tables) {
		return false
	}
	for _, q := range s.cfg.Tables {
		if !p.isMember(q) {
			return false
		}
	}
	return true
}

func markStatement(pub string) string {
	return fmt.Sprintf("COMMENT ON PUBLICATION %s IS '%s'", pub, PublicationMarker)
}

// tableList is the quoted, comma-separated list of qualified tables.
func tableList(tables []string) string {
	names := make([]string, len(tables))
	for i, q := range tables {
		names[i] = ident2(config.SplitTable(q))
	}
	return strings.Join(names, ", ")
}

func permissionDenied(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42501" // insufficient_privilege
}

// byHand tells, after a permission error, what the publication's owner
// (or a superuser) must run instead.
func byHand(err error, stmts []string) string {
	if !permissionDenied(err) {
		return ""
	}
	return "; run by hand as the owner of the publication and of the tables (or a superuser): " + strings.Join(stmts, "; ")
}

// lockHint explains a lock timeout.
func lockHint(err error) string {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "55P03" { // lock_not_available
		return ""
	}
	return fmt.Sprintf("; waited %s for a lock another session holds on the publication or on a table (a capture paused while changing the publication, a VACUUM FULL, …)", lockTimeout)
}

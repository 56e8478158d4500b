package main

import (
	"context"
	"fmt"
	"log"
	"math"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sluicehq/sluice/pkg/testenv"
)

const tableName = "public.bench_rows"

// The benchmark table: rows of about 200 bytes (to_jsonb text), with a
// jsonb column, a numeric and a timestamptz, so that every change exercises
// the value renderer.
const tableDDL = `CREATE TABLE bench_rows (
	id         bigint PRIMARY KEY,
	account_id integer NOT NULL,
	status     text NOT NULL,
	amount     numeric(12,2) NOT NULL,
	updated_at timestamptz NOT NULL DEFAULT now(),
	attrs      jsonb NOT NULL
)`

var benchTable = testenv.Table{Schema: "public", Name: "bench_rows", PK: []string{"id"}, KeyPrefix: "sequin"}

// Values are made by the server so that the generator costs one round trip
// per transaction whatever its size.
const (
	insertSQL = `INSERT INTO bench_rows (id, account_id, status, amount, attrs)
		SELECT id, (id % 100000)::int, 'created', round((random() * 10000)::numeric, 2),
			jsonb_build_object('sku', substr(md5(id::text), 1, 16), 'qty', (random() * 10)::int,
				'tags', jsonb_build_array('benchmark', 'sluice'))
		FROM unnest($1::bigint[]) AS id`
	updateSQL = `UPDATE bench_rows SET status = 'updated', amount = amount + 1, updated_at = now(),
			attrs = jsonb_set(attrs, '{qty}', to_jsonb((attrs->>'qty')::int + 1))
		WHERE id = ANY($1::bigint[])`
	deleteSQL = `DELETE FROM bench_rows WHERE id = ANY($1::bigint[])`
)

// maxTxn is the largest transaction the generator commits.
const maxTxn = 1000

// generator commits transactions of 60% inserts, 30% updates and 10%
// deletes, updating and deleting rows it inserted before.
type generator struct {
	conn *pgx.Conn
	rnd  *rand.Rand
	live []int64       // ids of existing rows
	pos  map[int64]int // id → index in live
	next int64         // the next id to insert
}

func newGenerator(ctx context.Context, url string, seed uint64) (*generator, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("connect the load generator: %w", err)
	}
	return &generator{conn: conn, rnd: rand.New(rand.NewPCG(seed, 0x5e1ce)), pos: map[int64]int{}, next: 1}, nil
}

func (g *generator) close() { g.conn.Close(context.Background()) }

// txn is one transaction's changes, applied in this order.
type txn struct{ inserts, updates, deletes []int64 }

func (t txn) size() int { return len(t.inserts) + len(t.updates) + len(t.deletes) }

// plan draws a transaction of n changes. A row is updated or deleted at
// most once per transaction; when no such row is left, the change becomes
// an insert.
func (g *generator) plan(n int) txn {
	var t txn
	touched := map[int64]bool{}
	pick := func() (int64, bool) {
		for range 4 {
			if len(g.live) == 0 {
				return 0, false
			}
			id := g.live[g.rnd.IntN(len(g.live))]
			if !touched[id] {
				touched[id] = true
				return id, true
			}
		}
		return 0, false
	}
	for range n {
		switch r := g.rnd.IntN(10); {
		case r >= 9:
			if id, ok := pick(); ok {
				t.deletes = append(t.deletes, id)
				g.remove(id)
				continue
			}
		case r >= 6:
			if id, ok := pick(); ok {
				t.updates = append(t.updates, id)
				continue
			}
		}
		id := g.next
		g.next++
		t.inserts = append(t.inserts, id)
		g.pos[id] = len(g.live)
		g.live = append(g.live, id)
	}
	return t
}

func (g *generator) remove(id int64) {
	i := g.pos[id]
	last := g.live[len(g.live)-1]
	g.live[i], g.pos[last] = last, i
	g.live = g.live[:len(g.live)-1]
	delete(g.pos, id)
}

// commit commits t in one round trip and returns the rows it changed.
func (g *generator) commit(ctx context.Context, t txn) (int, error) {
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	for _, s := range []struct {
		sql string
		ids []int64
	}{{insertSQL, t.inserts}, {updateSQL, t.updates}, {deleteSQL, t.deletes}} {
		if len(s.ids) > 0 {
			b.Queue(s.sql, s.ids)
		}
	}
	b.Queue("COMMIT")
	br := g.conn.SendBatch(ctx, b)
	changed := 0
	for range b.Len() {
		tag, err := br.Exec()
		if err != nil {
			br.Close()
			return 0, fmt.Errorf("commit a transaction of %d changes: %w", t.size(), err)
		}
		if tag.Insert() || tag.Update() || tag.Delete() {
			changed += int(tag.RowsAffected())
		}
	}
	return changed, br.Close()
}

// txnSize draws a transaction size from 1 to maxTxn, log-uniformly: many
// small transactions and some large ones, 145 changes on average.
func (g *generator) txnSize() int {
	n := int(math.Exp(g.rnd.Float64() * math.Log(maxTxn+1)))
	return min(max(n, 1), maxTxn)
}

// marker commits a row that no other change touches: when its key is in
// Redis, every change committed before it has been published.
func (g *generator) marker(ctx context.Context, id int64) (string, error) {
	if _, err := g.commit(ctx, txn{inserts: []int64{id}}); err != nil {
		return "", fmt.Errorf("marker: %w", err)
	}
	return benchTable.KeyPrefix + ":" + benchTable.Name + ":" + strconv.FormatInt(id, 10), nil
}

// backlog is a committed backlog of changes.
type backlog struct {
	Changes      int     `json:"changes"`
	Transactions int     `json:"transactions"`
	Seconds      float64 `json:"seconds"`
	WALBytes     int64   `json:"wal_bytes"`
	RowBytes     float64 `json:"row_bytes"` // average to_jsonb text of a row
	endLSN       string
	marker       string
}

// commitBacklog commits n changes, the last of them a marker row, while no
// service runs.
func commitBacklog(ctx context.Context, e *env, g *generator, n int) (backlog, error) {
	var b backlog
	var startLSN string
	if err := e.conn.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&startLSN); err != nil {
		return b, err
	}
	log.Printf("committing a backlog of %d changes", n)
	start := time.Now()
	for b.Changes < n-1 {
		changed, err := g.commit(ctx, g.plan(min(g.txnSize(), n-1-b.Changes)))
		if err != nil {
			return b, err
		}
		b.Changes += changed
		b.Transactions++
	}
	key, err := g.marker(ctx, -1)
	if err != nil {
		return b, err
	}
	b.Changes++
	b.Transactions++
	b.marker = key
	b.Seconds = round(time.Since(start).Seconds(), 2)
	err = e.conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text, pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::bigint,
		(SELECT coalesce(avg(octet_length(to_jsonb(t)::text)), 0)::float8 FROM bench_rows t)`, startLSN).Scan(&b.endLSN, &b.WALBytes, &b.RowBytes)
	if err != nil {
		return b, fmt.Errorf("measure the backlog: %w", err)
	}
	b.RowBytes = round(b.RowBytes, 1)
	log.Printf("backlog: %d changes in %d transactions, %.1f MiB of WAL, committed in %.1fs", b.Changes, b.Transactions, float64(b.WALBytes)/(1<<20), b.Seconds)
	return b, nil
}

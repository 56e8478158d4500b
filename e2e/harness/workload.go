package harness

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	jobs "github.com/sluicehq/sluice/pkg/backfill"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluicehq/sluice/pkg/change"
	"github.com/sluicehq/sluice/pkg/fragment"
	"github.com/sluicehq/sluice/pkg/testenv"
	"github.com/sluicehq/sluice/pkg/topology"
	sluicev1 "github.com/sluicehq/sluice/proto/sluice/v1"
)

// Accounts is the table most tests change.
var Accounts = testenv.Table{Schema: "public", Name: "accounts", PK: []string{"id"}, KeyPrefix: "sequin"}

// AccountsSchema creates Accounts.
const AccountsSchema = `CREATE TABLE accounts (id int PRIMARY KEY, n int NOT NULL DEFAULT 0, note text)`

// Workload commits random transactions of inserts, updates and deletes on
// ids in [0, keys), with an occasional transaction of 2,000 rows, until stop
// is closed, and returns how many row changes it committed. A failure marks
// the test failed and ends the workload: it may run in any goroutine.
func Workload(t testing.TB, url string, keys int, seed uint64, stop <-chan struct{}) int {
	changes, err := workload(url, keys, seed, 0, false, stop)
	if err != nil {
		t.Errorf("workload: %v", err)
	}
	return changes
}

// Background runs Workload in its own goroutine until the returned stop is
// called (or the test ends); stop returns the changes committed.
func Background(t testing.TB, url string, keys int, seed uint64) (stop func() int) {
	return Paced(t, url, keys, seed, 0)
}

// Paced is Background with a pause of every between transactions, for a
// long test whose final checks should not have millions of changes to read.
func Paced(t testing.TB, url string, keys int, seed uint64, every time.Duration) (stop func() int) {
	return run(t, url, keys, seed, every, false)
}

// Enduring is Background through Postgres restarts and terminated
// connections: it connects again and goes on, and counts a transaction
// whose commit went unanswered only if Postgres says it committed
// (txid_status), so that the count stays exact.
func Enduring(t testing.TB, url string, keys int, seed uint64) (stop func() int) {
	return run(t, url, keys, seed, 0, true)
}

func run(t testing.TB, url string, keys int, seed uint64, every time.Duration, enduring bool) (stop func() int) {
	quit := make(chan struct{})
	done := make(chan int, 1)
	go func() {
		changes, err := workload(url, keys, seed, every, enduring, quit)
		if err != nil {
			t.Errorf("workload: %v", err)
		}
		done <- changes
	}()
	var changes int
	var once sync.Once
	stop = func() int {
		once.Do(func() { close(quit); changes = <-done })
		return changes
	}
	t.Cleanup(func() { stop() })
	return stop
}

func workload(url string, keys int, seed uint64, every time.Duration, enduring bool, stop <-chan struct{}) (int, error) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return 0, err
	}
	defer func() {
		if conn != nil { // nil when stopped while reconnecting
			conn.Close(ctx)
		}
	}()
	rnd := rand.New(rand.NewPCG(seed, seed))
	changes := 0
	for i := 0; ; i++ {
		select {
		case <-stop:
			return changes, nil
		case <-time.After(every):
		}
		var xid int64
		n, err := transaction(ctx, conn, rnd, keys, i, enduring, &xid)
		if err == nil {
			changes += n
			continue
		}
		if !enduring {
			return changes, err
		}
		// The server went away: connect again, and learn whether the
		// transaction committed after all.
		conn.Close(ctx)
		if conn, err = reconnect(ctx, url, stop); err != nil || conn == nil {
			return changes, err
		}
		var status *string
		if xid != 0 {
			if err := conn.QueryRow(ctx, `SELECT txid_status($1)`, xid).Scan(&status); err != nil {
				return changes, err
			}
		}
		if status != nil && *status == "committed" {
			changes += n
		}
	}
}

// transaction runs the workload's i-th transaction and returns the changes
// it made; with xid, it first notes its transaction id.
func transaction(ctx context.Context, conn *pgx.Conn, rnd *rand.Rand, keys, i int, noteXID bool, xid *int64) (int, error) {
	changes := 0
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(ctx)
	if noteXID {
		if err := tx.QueryRow(ctx, `SELECT txid_current()`).Scan(xid); err != nil {
			return 0, err
		}
	}
	stmts := 1 + rnd.IntN(5)
	if i%250 == 125 {
		stmts = 0
		tag, err := tx.Exec(ctx, `INSERT INTO accounts (id, note) SELECT g, 'bulk' FROM generate_series($1::int, $1::int + 1999) g
			ON CONFLICT (id) DO UPDATE SET n = accounts.n + 1`, keys+rnd.IntN(4)*2000)
		if err != nil {
			return changes, err
		}
		changes += int(tag.RowsAffected())
	}
	for range stmts {
		id := rnd.IntN(keys)
		var sql string
		switch rnd.IntN(10) {
		case 0, 1, 2, 3:
			sql = `INSERT INTO accounts (id, note) VALUES ($1::int, md5($1::int::text)) ON CONFLICT DO NOTHING`
		case 4, 5, 6, 7, 8:
			sql = `UPDATE accounts SET n = n + 1, note = md5(random()::text) WHERE id = $1`
		default:
			sql = `DELETE FROM accounts WHERE id = $1`
		}
		tag, err := tx.Exec(ctx, sql, id)
		if err != nil {
			return changes, err
		}
		changes += int(tag.RowsAffected())
	}
	return changes, tx.Commit(ctx)
}

// reconnect connects to url again, trying for a minute; nil when stop
// closed first.
func reconnect(ctx context.Context, url string, stop <-chan struct{}) (*pgx.Conn, error) {
	deadline := time.Now().Add(time.Minute)
	for {
		conn, err := pgx.Connect(ctx, url)
		if err == nil {
			return conn, nil
		}
		if time.Now().After(deadline) {
			return nil, err
		}
		select {
		case <-stop:
			return nil, nil
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ended reports whether cons has nothing left to deliver: a fetch that
// returns nothing may only have met a cluster still settling (an ordered
// consumer made again on another node, say).
func ended(ctx context.Context, cons jetstream.Consumer) bool {
	ci, err := cons.Info(ctx)
	return err == nil && ci.NumPending == 0
}

// Chaos calls fn times times at random intervals, then closes the
// returned channel. It stops early when the test ends, and the test's
// cleanup waits for it, so that fn never runs after the test.
func Chaos(t testing.TB, times int, min, max time.Duration, fn func()) <-chan struct{} {
	done := make(chan struct{})
	quit := make(chan struct{})
	go func() {
		defer close(done)
		for range times {
			select {
			case <-quit:
				return
			case <-time.After(min + rand.N(max-min)):
			}
			fn()
		}
	}()
	t.Cleanup(func() { close(quit); <-done })
	return done
}

// CheckStream reads the whole stream from url (one server's, or a
// comma-separated list of a cluster's) and checks that it holds want
// events, each once, each partition's in commit order, and every
// transaction whole.
func CheckStream(t testing.TB, url string, want int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	st, err := js.Stream(ctx, "SLUICE")
	if err != nil {
		t.Fatal(err)
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{"SLUICE.changes.*"}})
	if err != nil {
		t.Fatal(err)
	}
	type pos struct {
		lsn uint64
		idx uint32
	}
	last := map[string]pos{}            // per partition subject
	txs := map[uint64]map[uint32]bool{} // the indexes seen of each transaction
	got := 0
	events := func(m jetstream.Msg) []*sluicev1.ChangeEvent {
		data, err := fragment.Payload(ctx, st, m.Headers(), m.Data())
		if err != nil {
			t.Fatal(err)
		}
		evs, err := change.Events(data)
		if err != nil {
			t.Fatal(err)
		}
		return evs
	}
	for got < want {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			for _, ev := range events(m) {
				p := pos{ev.CommitLsn, ev.CommitIdx}
				if txs[p.lsn][p.idx] {
					t.Fatalf("event (lsn %d idx %d) is in the stream twice", p.lsn, p.idx)
				}
				if txs[p.lsn] == nil {
					txs[p.lsn] = map[uint32]bool{}
				}
				txs[p.lsn][p.idx] = true
				if prev, ok := last[m.Subject()]; ok && (p.lsn < prev.lsn || p.lsn == prev.lsn && p.idx <= prev.idx) {
					t.Fatalf("on %s, event (lsn %d idx %d) follows (lsn %d idx %d)", m.Subject(), p.lsn, p.idx, prev.lsn, prev.idx)
				}
				last[m.Subject()] = p
				got++
			}
		}
		if n == 0 && ended(ctx, cons) {
			t.Fatalf("stream ended after %d of %d events", got, want)
		}
	}
	// And nothing more: a surplus after a batch that ended at want would
	// otherwise go unseen.
	if batch, err := cons.FetchNoWait(1000); err == nil {
		for m := range batch.Messages() {
			got += len(events(m))
		}
	}
	if got != want {
		t.Fatalf("the stream holds %d events, want %d", got, want)
	}
	for lsn, idxs := range txs {
		for i := range uint32(len(idxs)) {
			if !idxs[i] {
				t.Fatalf("transaction at lsn %d lacks its event %d of %d", lsn, i, len(idxs))
			}
		}
	}
}

// Fill puts n rows into accounts before capture ever runs: only a backfill
// can bring them to Redis.
func Fill(e *Env, n int) {
	e.Exec(AccountsSchema)
	e.Exec(`INSERT INTO accounts (id, n, note) SELECT g, g % 10, md5(g::text) FROM generate_series(1, $1) g`, n)
	e.Exec(`ANALYZE accounts`)
}

func OpenJobs(t testing.TB, e *Env) *jobs.Store {
	t.Helper()
	nc, err := nats.Connect(e.NATSURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	s, err := jobs.Open(context.Background(), js, topology.Topology{Stream: "SLUICE", Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

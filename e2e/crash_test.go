package e2e

import (
	"context"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluicehq/sluice/pkg/change"
	"github.com/sluicehq/sluice/pkg/fragment"
	"github.com/sluicehq/sluice/pkg/testenv"
)

var accounts = testenv.Table{Schema: "public", Name: "accounts", PK: []string{"id"}, KeyPrefix: "sequin"}

const accountsSchema = `CREATE TABLE accounts (id int PRIMARY KEY, n int NOT NULL DEFAULT 0, note text)`

// workload commits random transactions of inserts, updates and deletes on
// ids in [0, keys), with an occasional transaction of 2,000 rows, until stop
// is closed, and returns how many row changes it committed.
func workload(t testing.TB, url string, keys int, seed uint64, stop <-chan struct{}) int {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rnd := rand.New(rand.NewPCG(seed, seed))
	changes := 0
	for i := 0; ; i++ {
		select {
		case <-stop:
			return changes
		default:
		}
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		stmts := 1 + rnd.IntN(5)
		if i%250 == 125 {
			stmts = 0
			tag, err := tx.Exec(ctx, `INSERT INTO accounts (id, note) SELECT g, 'bulk' FROM generate_series($1::int, $1::int + 1999) g
				ON CONFLICT (id) DO UPDATE SET n = accounts.n + 1`, keys+rnd.IntN(4)*2000)
			if err != nil {
				t.Fatal(err)
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
				t.Fatal(err)
			}
			changes += int(tag.RowsAffected())
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// chaos calls fn times times at random intervals, then closes the
// returned channel.
func chaos(times int, min, max time.Duration, fn func()) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range times {
			time.Sleep(min + rand.N(max-min))
			fn()
		}
	}()
	return done
}

// Killing capture with SIGKILL at random moments loses no change and
// publishes none twice: afterwards the stream holds every change exactly
// once, in commit order, and Redis equals Postgres.
func TestCaptureKilled(t *testing.T) {
	e := newEnv(t)
	e.exec(accountsSchema)
	cfg := e.config([]string{"accounts"}, true)
	start(t, "sluice-redis-writer", "--config", cfg, "--sink", "cache")
	capture := e.runPipeline(cfg)

	// Each restart waits for the killed one's slot to be released, then
	// streams for a random while before the next kill.
	const kills = 8
	done := chaos(kills, 300*time.Millisecond, 1200*time.Millisecond, func() {
		capture.Signal(syscall.SIGKILL)
		capture.wait(10 * time.Second)
		capture = start(t, "sluice-capture", "--config", cfg)
	})
	// Besides the mixed workload, one transaction of 100,000 rows, streamed
	// while capture is being killed.
	big := make(chan int64, 1)
	go func() {
		conn, err := pgx.Connect(context.Background(), e.pg.URL)
		if err != nil {
			big <- -1
			return
		}
		defer conn.Close(context.Background())
		time.Sleep(200 * time.Millisecond)
		tag, err := conn.Exec(context.Background(), `INSERT INTO accounts (id, note) SELECT g, 'big' FROM generate_series(1000000, 1099999) g`)
		if err != nil {
			big <- -1
			return
		}
		big <- tag.RowsAffected()
	}()
	changes := workload(t, e.pg.URL, 400, 1, done)
	n := <-big
	if n != 100000 {
		t.Fatalf("the big transaction inserted %d rows", n)
	}
	changes += int(n)
	t.Logf("%d changes, capture killed %d times", changes, kills)
	e.waitMatch(90*time.Second, accounts)
	checkStream(t, e.nats.URL(), changes)
}

// checkStream reads the whole stream and checks that it holds want events,
// each once, each partition's in commit order, and every transaction whole.
func checkStream(t testing.TB, url string, want int) {
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
	for got < want {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			data, err := fragment.Payload(ctx, st, m.Headers(), m.Data())
			if err != nil {
				t.Fatal(err)
			}
			evs, err := change.Events(data)
			if err != nil {
				t.Fatal(err)
			}
			for _, ev := range evs {
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
		if n == 0 {
			t.Fatalf("stream ended after %d of %d events", got, want)
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

// Killing writers with SIGKILL mid-batch loses nothing: their unacknowledged
// messages are redelivered, to them or to the other writer, and the
// versioned writes keep every key at its last committed value.
func TestWriterKilled(t *testing.T) {
	e := newEnv(t)
	e.exec(accountsSchema)
	cfg := e.config([]string{"accounts"}, true)
	e.runPipeline(cfg)
	steady := start(t, "sluice-redis-writer", "--config", cfg, "--sink", "cache")
	victim := start(t, "sluice-redis-writer", "--config", cfg, "--sink", "cache")

	const kills = 10
	n := 0
	done := chaos(kills, 100*time.Millisecond, 500*time.Millisecond, func() {
		victim.Signal(syscall.SIGKILL)
		victim.wait(10 * time.Second)
		if n++; n%3 == 0 { // and, now and then, the other one
			steady.Signal(syscall.SIGKILL)
			steady.wait(10 * time.Second)
			steady = start(t, "sluice-redis-writer", "--config", cfg, "--sink", "cache")
		}
		victim = start(t, "sluice-redis-writer", "--config", cfg, "--sink", "cache")
	})
	// Few keys, many updates: stale values would show.
	changes := workload(t, e.pg.URL, 50, 2, done)
	t.Logf("%d changes, writers killed %d times", changes, kills+kills/3)
	e.waitMatch(90*time.Second, accounts)
}

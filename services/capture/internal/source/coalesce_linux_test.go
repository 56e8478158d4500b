package source

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/sluicehq/sluice/pkg/testenv"
	"github.com/sluicehq/sluice/services/capture/internal/pgoutput"
	"github.com/sluicehq/sluice/services/capture/internal/pgvalue"
)

// While behind, the socket wakes capture only for coalesceBytes; a small
// transaction, far less than that, still arrives at once, and the socket
// wakes for any byte again.
func TestCoalescingNeverHoldsASmallTransaction(t *testing.T) {
	ctx := context.Background()
	pg := testenv.NewPostgres(t, testenv.PostgresOptions{})
	pg.Exec(t, `CREATE TABLE orders (id int PRIMARY KEY, note text)`)
	src, err := Connect(ctx, cfg(pg.URL, "public.orders"), pgvalue.SessionParams)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(ctx)
	if _, err := src.EnsurePublication(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := src.EnsureSlot(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := src.StartStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close(ctx)
	if st.co == nil {
		t.Fatal("a TCP replication connection has no coalescer")
	}
	lowat := func() int {
		var n int
		var err error
		if !control(st.conn.Conn(), func(fd uintptr) { n, err = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVLOWAT) }) || err != nil {
			t.Fatalf("read SO_RCVLOWAT: %v", err)
		}
		return n
	}

	st.Behind(true)
	if n := lowat(); n != coalesceBytes {
		t.Fatalf("SO_RCVLOWAT %d while behind, want %d", n, coalesceBytes)
	}
	pg.Exec(t, `INSERT INTO orders VALUES (1, 'small')`)
	// Without the watch, each wait would last until its deadline.
	for committed := false; !committed; {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		began := time.Now()
		msg, err := st.Receive(rctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if waited := time.Since(began); waited > 5*time.Second {
			t.Fatalf("a message of a small transaction waited %s", waited)
		}
		if x, ok := msg.(*XLogData); ok {
			m, err := pgoutput.Parse(x.Data)
			if err != nil {
				t.Fatal(err)
			}
			_, committed = m.(*pgoutput.Commit)
		}
	}
	if n := lowat(); n != 1 {
		t.Fatalf("SO_RCVLOWAT %d after a pause, want 1", n)
	}
}

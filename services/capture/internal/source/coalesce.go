package source

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// While capture is far behind the server, the walsender sends each change
// on its own and capture reads them as they come, about two at a time: a
// fifth of capture's CPU went to reading while catching up. A coalescer
// then has the socket wake capture only once coalesceBytes have arrived
// (SO_RCVLOWAT), so that one read takes many changes. As soon as
// coalesceWait passes without a message (the server paused with less than
// that on its way), it lets the socket wake capture for any byte again:
// a pause costs at most twice that in latency, and only while behind.
type coalescer struct {
	conn     net.Conn
	on       atomic.Bool
	received atomic.Uint64 // messages Receive returned
	mu       sync.Mutex
	stop     chan struct{} // ends the running watch
}

const (
	coalesceBytes = 32 << 10
	coalesceWait  = time.Millisecond
)

// newCoalescer returns the coalescer of conn, nil where the socket cannot
// (TLS, which hides it; systems other than Linux).
func newCoalescer(conn net.Conn) *coalescer {
	if _, ok := conn.(*net.TCPConn); !ok || !canSetLowat {
		return nil
	}
	return &coalescer{conn: conn}
}

// behind turns coalescing on or off.
func (c *coalescer) behind(behind bool) {
	if c.on.Load() == behind {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case !behind:
		c.offLocked()
	case !c.on.Load() && setLowat(c.conn, coalesceBytes):
		c.on.Store(true)
		c.stop = make(chan struct{})
		go c.watch(c.stop)
	}
}

// offLocked lets the socket wake capture for any byte again; lowering the
// mark wakes a reader at once when enough already waits.
func (c *coalescer) offLocked() {
	if !c.on.Load() {
		return
	}
	c.on.Store(false)
	close(c.stop)
	setLowat(c.conn, 1)
}

// watch turns coalescing off once coalesceWait passes without a message.
func (c *coalescer) watch(stop chan struct{}) {
	t := time.NewTicker(coalesceWait)
	defer t.Stop()
	last := c.received.Load()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if n := c.received.Load(); n != last {
				last = n
				continue
			}
			c.mu.Lock()
			if c.stop == stop {
				c.offLocked()
			}
			c.mu.Unlock()
			return
		}
	}
}

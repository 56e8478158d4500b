package testenv

import (
	"net"
	"time"
)

// Distant puts a server at addr one way away: a TCP proxy on a free local
// port passes every byte on, each direction, one way later, the way a
// server on another host is reached. It does not hold back throughput:
// what is sent meanwhile follows at its own time. It returns the proxy's
// port; t's cleanup closes it.
func Distant(t TB, addr string, oneWay time.Duration) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("distant proxy: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", addr)
			if err != nil {
				c.Close()
				continue
			}
			go delayed(s, c, oneWay)
			go delayed(c, s, oneWay)
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// delayed copies src to dst, each read written oneWay after it arrived,
// and closes both once src ends.
func delayed(dst, src net.Conn, oneWay time.Duration) {
	type chunk struct {
		due  time.Time
		data []byte
	}
	chunks := make(chan chunk, 4096)
	go func() {
		defer close(chunks)
		for {
			buf := make([]byte, 64<<10)
			n, err := src.Read(buf)
			if n > 0 {
				chunks <- chunk{time.Now().Add(oneWay), buf[:n]}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range chunks {
		time.Sleep(time.Until(c.due))
		if _, err := dst.Write(c.data); err != nil {
			break
		}
	}
	dst.Close()
	src.Close()
}

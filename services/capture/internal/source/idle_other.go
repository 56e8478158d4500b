//go:build !linux

package source

import "net"

// queued cannot tell, here, what waits in a socket's receive queue.
func queued(net.Conn) (int, bool) { return 0, false }

//go:build !linux

package source

import "net"

// queued cannot tell, here, what waits in a socket's receive queue.
func queued(net.Conn) (int, bool) { return 0, false }

// canSetLowat: elsewhere the socket is left as it is.
const canSetLowat = false

func setLowat(net.Conn, int) bool { return false }

package source

import (
	"net"
	"syscall"
)

// canSetLowat: Linux wakes a reader by SO_RCVLOWAT, and at once when the
// mark is lowered below what waits.
const canSetLowat = true

// setLowat sets the socket's SO_RCVLOWAT, and reports whether it could.
func setLowat(conn net.Conn, n int) bool {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVLOWAT, n)
	}); err != nil {
		return false
	}
	return serr == nil
}

package source

import (
	"net"
	"syscall"
	"unsafe"
)

// control runs f on the socket of a TCP or Unix connection, and reports
// whether it could (TLS hides its socket behind its own buffers).
func control(conn net.Conn, f func(fd uintptr)) bool {
	var sc syscall.Conn
	switch c := conn.(type) {
	case *net.TCPConn:
		sc = c
	case *net.UnixConn:
		sc = c
	default:
		return false
	}
	raw, err := sc.SyscallConn()
	return err == nil && raw.Control(f) == nil
}

// queued reports how many bytes wait in conn's socket receive queue, and
// whether it could tell.
func queued(conn net.Conn) (int, bool) {
	var n int32
	var errno syscall.Errno
	if !control(conn, func(fd uintptr) {
		_, _, errno = syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCINQ, uintptr(unsafe.Pointer(&n)))
	}) || errno != 0 {
		return 0, false
	}
	return int(n), true
}

// canSetLowat: Linux wakes a reader by SO_RCVLOWAT, and at once when the
// mark is lowered below what waits.
const canSetLowat = true

// setLowat sets the socket's SO_RCVLOWAT, and reports whether it could.
func setLowat(conn net.Conn, n int) bool {
	var err error
	return control(conn, func(fd uintptr) {
		err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVLOWAT, n)
	}) && err == nil
}

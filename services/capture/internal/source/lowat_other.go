//go:build !linux

package source

import "net"

// canSetLowat: elsewhere the socket is left as it is.
const canSetLowat = false

func setLowat(net.Conn, int) bool { return false }

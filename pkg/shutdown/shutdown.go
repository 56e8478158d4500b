// Package shutdown turns SIGINT and SIGTERM into context cancellation: the
// first signal asks every part to drain its in-flight work and return; a
// second one exits at once.
package shutdown

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// Context returns a context cancelled by the first SIGINT or SIGTERM. After
// that, another signal exits the process immediately with status 1.
func Context(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(parent)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		select {
		case <-sigs:
			cancel()
		case <-ctx.Done():
			signal.Stop(sigs)
			return
		}
		sig := <-sigs
		fmt.Fprintf(os.Stderr, "second %s: exiting without draining\n", sig)
		os.Exit(1)
	}()
	return ctx, cancel
}

package topology

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// Retry backoff, and how often a run of transient failures is logged.
const (
	retryFirst = 100 * time.Millisecond
	retryMax   = 2 * time.Second
	warnEvery  = 10 * time.Second
)

// Create calls create until it succeeds, fails for good, or ctx ends, and
// returns its last result. JetStream objects are created while the cluster
// may still be electing its leaders (a service started with the cluster, a
// node restarting): those failures are retried with backoff, with a warning
// naming what is being created at most every warnEvery; any other error
// (an invalid configuration, a partition count other than the stream's) is
// returned at once. create must be safe to repeat (CreateOrUpdate calls
// are). When ctx ends, the last error is returned, or ctx's when there was
// none.
func Create[T any](ctx context.Context, log *zap.Logger, what string, create func(context.Context) (T, error)) (T, error) {
	var warned time.Time
	failures := 0
	for backoff := retryFirst; ; backoff = min(2*backoff, retryMax) {
		v, err := create(ctx)
		if err == nil {
			if failures > 0 && !warned.IsZero() {
				log.Info("jetstream answered; "+what+" done", zap.Int("failed_attempts", failures))
			}
			return v, nil
		}
		if ctx.Err() != nil || !Transient(err) {
			return v, err
		}
		failures++
		if time.Since(warned) >= warnEvery {
			log.Warn("jetstream is not available (electing leaders, or a node is down); retrying: "+what,
				zap.Error(err), zap.Int("failed_attempts", failures))
			warned = time.Now()
		}
		select {
		case <-ctx.Done():
			return v, err
		case <-time.After(backoff):
		}
	}
}

// Transient reports whether a JetStream request failed for a reason that
// passes once the cluster has its leaders again: no answer in time, no
// server listening, a cluster without a leader or with too few peers up.
func Transient(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrDisconnected) ||
		errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, jetstream.ErrNoStreamResponse) {
		return true
	}
	var je jetstream.JetStreamError
	if !errors.As(err, &je) || je.APIError() == nil {
		return false
	}
	switch je.APIError().ErrorCode {
	case 10004, // incomplete results
		10005, // no suitable peers for placement
		10007, // cluster not assigned to this server
		10008, // JetStream system temporarily unavailable
		10009, // cluster can not handle request (no leader)
		10023, // insufficient resources (peers down)
		// "JetStream not enabled": also what the client makes of no
		// responders to an account request, as while a node restarts.
		jetstream.JSErrCodeJetStreamNotEnabled,
		10118, 10119, 10194, 10195, // stream or consumer offline
		10202: // cluster member change in progress
		return true
	}
	return false
}

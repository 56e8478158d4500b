package source

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5/pgconn"
)

// bound gives a catalog query postgres.timeout to be answered: a server
// that hung, or a connection dropped without a word, would otherwise keep
// capture waiting forever. Waits that are long by nature (a slot's
// creation waits for running transactions; backfill reads) are not
// bounded.
func (s *Source) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if s.cfg.Timeout <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, s.cfg.Timeout)
}

// Unanswered reports whether err is a query, a connection attempt or a
// replication connection that Postgres left unanswered past
// postgres.timeout.
func Unanswered(err error) bool {
	var silent *silentError
	return pgconn.Timeout(err) || errors.As(err, &silent)
}

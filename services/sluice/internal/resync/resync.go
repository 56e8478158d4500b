// Package resync is `sluice resync`: ask capture to start over from a new
// replication slot and backfill every sink, and follow it to the end.
//
// Capture carries the resync out (it owns the slot): when it refuses to
// stream because the slot is lost or the database is not the stream's
// source, or, while it streams, within seconds of the request.
package resync

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"go.uber.org/zap"

	jobs "github.com/sluicehq/sluice/pkg/backfill"
	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/lineage"
	"github.com/sluicehq/sluice/pkg/topology"
	"github.com/sluicehq/sluice/services/sluice/internal/backfill"
)

// takeUp bounds the wait for capture to take the request up.
const takeUp = 2 * time.Minute

// Run asks for a resync and waits until capture made the new slot, every
// backfill it started ended, and every sink applied them.
func Run(ctx context.Context, out io.Writer, cfg *config.Config, log *zap.Logger) error {
	nc, js, err := topology.Dial(cfg.NATS, "sluice resync", log)
	if err != nil {
		return err
	}
	defer nc.Close()
	topo := topology.New(cfg.NATS)
	lin, err := lineage.Open(ctx, js, topo)
	if err != nil {
		return err
	}
	asked := time.Now().UTC()
	if err := lin.SetResync(ctx, lineage.Resync{Requested: asked}); err != nil {
		return err
	}
	fmt.Fprintln(out, "resync asked for; waiting for capture to make a new replication slot")
	deadline := time.After(takeUp)
	var r lineage.Resync
	for r.Done.IsZero() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("stopped waiting; the request stays and capture carries it out: %w", ctx.Err())
		case <-deadline:
			return errors.New("capture did not take the resync up within 2m: is sluice-capture running? The request stays; capture carries it out when it starts")
		case <-time.After(500 * time.Millisecond):
		}
		if r, _, err = lin.Resync(ctx); err != nil {
			return err
		}
		if r.Requested.Before(asked) {
			r = lineage.Resync{} // not this request's outcome
		}
	}
	if r.Error != "" {
		return fmt.Errorf("capture could not resync: %s", r.Error)
	}
	fmt.Fprintf(out, "new slot made; backfilling every sink's tables (backfill %s)\n", strings.Join(r.Backfills, ", "))
	store, err := jobs.Open(ctx, js, topo)
	if err != nil {
		return err
	}
	var failed []error
	for _, err := range backfill.Wait(ctx, store, r.Backfills) {
		if err != nil {
			failed = append(failed, err)
		}
	}
	if err := errors.Join(failed...); err != nil {
		return err
	}
	st, err := js.Stream(ctx, topo.Stream)
	if err != nil {
		return fmt.Errorf("read stream %s: %w", topo.Stream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return fmt.Errorf("read stream %s: %w", topo.Stream, err)
	}
	fmt.Fprintf(out, "rows in the stream (up to sequence %d); waiting for the sinks to apply them\n", info.State.LastSeq)
	for _, sink := range cfg.Sinks {
		if _, err := backfill.WaitApplied(ctx, js, topo, sink.Name, info.State.LastSeq, nil); err != nil {
			return fmt.Errorf("sink %s: %w", sink.Name, err)
		}
	}
	fmt.Fprintln(out, "resync done: every sink applied the backfill of its tables")
	return nil
}

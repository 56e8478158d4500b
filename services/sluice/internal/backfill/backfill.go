// Package backfill is `sluice backfill`: it asks capture to copy a table's
// current rows into one sink, and follows its progress.
package backfill

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	jobs "github.com/sluicehq/sluice/pkg/backfill"
	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/topology"
)

// Request is what the command was asked.
type Request struct {
	Sink, Table, Where string
	Cancel, Detach     bool
}

// Run creates (or cancels) a backfill and, unless detached, follows it
// until it ends. Interrupting the command stops following, not the
// backfill.
func Run(ctx context.Context, out io.Writer, cfg *config.Config, log *zap.Logger, r Request) error {
	sink, err := cfg.Sink(r.Sink)
	if err != nil {
		return err
	}
	table := config.QualifyTable(r.Table)
	if !slices.Contains(sink.Tables, table) {
		return fmt.Errorf("--table: %s is not among the tables of sink %s (%s)", table, sink.Name, strings.Join(sink.Tables, ", "))
	}
	if r.Where != "" && !r.Cancel {
		if err := checkWhere(ctx, cfg.Postgres.URL, table, r.Where); err != nil {
			return err
		}
	}
	nc, js, err := topology.Dial(cfg.NATS.URL, "sluice backfill", log)
	if err != nil {
		return err
	}
	defer nc.Close()
	store, err := jobs.Open(ctx, js, topology.New(cfg.NATS))
	if err != nil {
		return err
	}
	if r.Cancel {
		cancelled, err := store.Cancel(ctx, sink.Name, table)
		if err != nil {
			return err
		}
		if len(cancelled) == 0 {
			return fmt.Errorf("no active backfill of %s into sink %s", table, sink.Name)
		}
		for _, j := range cancelled {
			fmt.Fprintf(out, "cancelled backfill %s of %s into sink %s after %d rows\n", j.ID, j.Table, j.Sink, j.Done)
		}
		return nil
	}
	j, err := store.Create(ctx, sink.Name, table, r.Where)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "backfill %s of %s into sink %s created\n", j.ID, table, sink.Name)
	if r.Detach {
		return nil
	}
	return follow(ctx, out, store, j.ID)
}

// checkWhere has Postgres plan the condition, so a mistake is an error
// now rather than a failed backfill later.
func checkWhere(ctx context.Context, url, table, where string) error {
	if _, err := jobs.CheckWhere(where); err != nil {
		return err // before connecting: nothing of it reaches Postgres
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("connect to postgres: %w", err)
	}
	defer conn.Close(ctx)
	return jobs.CheckWhereIn(ctx, conn, table, where)
}

// follow shows the job's progress until it ends: a bar redrawn in place on
// a terminal, a line every few seconds otherwise.
func follow(ctx context.Context, out io.Writer, store *jobs.Store, id string) error {
	tty := isTerminal(out)
	every := 2 * time.Second
	if tty {
		every = 250 * time.Millisecond
	}
	began := time.Now()
	var last time.Time
	for {
		j, _, err := store.Get(context.WithoutCancel(ctx), id)
		if err != nil {
			return err
		}
		if !j.State.Active() || time.Since(last) >= every {
			line := progress(j)
			if tty {
				fmt.Fprintf(out, "\r\033[K%s", line)
			} else {
				fmt.Fprintln(out, line)
			}
			last = time.Now()
		}
		if !j.State.Active() {
			if tty {
				fmt.Fprintln(out)
			}
			switch j.State {
			case jobs.Done:
				fmt.Fprintf(out, "done: %d rows in %s\n", j.Done, time.Since(began).Round(100*time.Millisecond))
				return nil
			case jobs.Failed:
				return fmt.Errorf("backfill %s failed: %s", j.ID, j.Error)
			default:
				return fmt.Errorf("backfill %s was %s after %d rows", j.ID, j.State, j.Done)
			}
		}
		select {
		case <-ctx.Done():
			if tty {
				fmt.Fprintln(out)
			}
			fmt.Fprintf(out, "stopped following; the backfill goes on in capture (sluice backfill --cancel stops it)\n")
			return nil
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Wait waits until each of the jobs ids ends, or ctx is done, and returns
// for each one nil when it is done, else why not.
func Wait(ctx context.Context, store *jobs.Store, ids []string) map[string]error {
	ended := map[string]error{}
	for _, id := range ids {
		ended[id] = fmt.Errorf("backfill %s did not end", id)
	}
	for left := len(ids); left > 0; {
		left = 0
		for _, id := range ids {
			j, _, err := store.Get(context.WithoutCancel(ctx), id)
			switch {
			case err != nil:
				ended[id] = err
			case j.State == jobs.Done:
				ended[id] = nil
			case j.State.Active():
				left++
			default:
				ended[id] = fmt.Errorf("backfill %s %s: %s", id, j.State, j.Error)
			}
		}
		if left == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return ended
		case <-time.After(100 * time.Millisecond):
		}
	}
	return ended
}

// progress renders a job's state on one line.
func progress(j jobs.Job) string {
	if j.State == jobs.Pending {
		return fmt.Sprintf("backfill %s: waiting for capture to start it", j.ID)
	}
	const width = 30
	frac := 0.0
	if j.Total > 0 {
		frac = min(1, float64(j.Done)/float64(j.Total))
	}
	if j.State == jobs.Done {
		frac = 1
	}
	filled := int(frac * width)
	bar := strings.Repeat("=", filled) + strings.Repeat(" ", width-filled)
	eta := "?"
	if d := j.ETA(); d > 0 {
		eta = d.Round(time.Second).String()
	}
	return fmt.Sprintf("[%s] %3.0f%%  %d of ~%d rows  %.0f rows/s  ETA %s", bar, frac*100, j.Done, j.Total, j.Rate, eta)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

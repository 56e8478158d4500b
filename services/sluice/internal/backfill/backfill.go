// Package backfill is `sluice backfill`: it asks capture to copy a table's
// current rows into one sink, and follows its progress.
package backfill

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	jobs "github.com/sluicehq/sluice/pkg/backfill"
	"github.com/sluicehq/sluice/pkg/backlog"
	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/topology"
)

// Request is what the command was asked.
type Request struct {
	Sink, Table, Where string
	Cancel, Detach     bool
	// ApplyTimeout bounds the wait for the sink to apply the rows once
	// they are in the stream; 0: until interrupted.
	ApplyTimeout time.Duration
}

// Run creates (or cancels) a backfill and, unless detached, follows it
// until it ends and the sink has applied its rows. Interrupting the
// command stops following, not the backfill.
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
	nc, js, err := topology.Dial(cfg.NATS, "sluice backfill", log)
	if err != nil {
		return err
	}
	defer nc.Close()
	topo := topology.New(cfg.NATS)
	store, err := jobs.Open(ctx, js, topo)
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
	began := time.Now()
	// The sink's dead letters before, to tell those it adds meanwhile.
	letters, lettersKnown := deadLetters(ctx, js, topo, sink.Name)
	j, err := store.Create(ctx, sink.Name, table, r.Where)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "backfill %s of %s into sink %s created\n", j.ID, table, sink.Name)
	if r.Detach {
		return nil
	}
	tty := isTerminal(out)
	j, done, err := follow(ctx, out, store, j.ID, tty)
	if err != nil || !done {
		return err
	}
	last, applied, err := awaitSink(ctx, out, js, topo, j, r.ApplyTimeout, tty)
	if err != nil || !applied {
		return err
	}
	// Acknowledged is applied, except for the changes the writers parked
	// for another attempt or gave up on: say so rather than "done".
	parked, err := parkedRetries(ctx, js, topo, j.Sink)
	if err != nil {
		return untold(j, err)
	}
	var added uint64
	if lettersKnown && last.DeadLetters > letters {
		added = last.DeadLetters - letters
	}
	if msg := exceptions(j.Sink, parked, added); msg != "" {
		return fmt.Errorf("backfill %s: %d rows in the stream, but %s", j.ID, j.Done, msg)
	}
	fmt.Fprintf(out, "done: %d rows in %s, applied by sink %s\n", j.Done, time.Since(began).Round(100*time.Millisecond), j.Sink)
	return nil
}

// awaitSink waits, once capture marked job j done (its rows are in the
// stream), until its sink has applied the stream up to there, and returns
// where the sink stood last and whether it did. Interrupted, it says how
// things stand and returns no error: the backfill is complete.
func awaitSink(ctx context.Context, out io.Writer, js jetstream.JetStream, topo topology.Topology, j jobs.Job, timeout time.Duration, tty bool) (backlog.Sink, bool, error) {
	seq, err := lastSeq(ctx, js, topo)
	if err != nil {
		return backlog.Sink{}, false, untold(j, err)
	}
	fmt.Fprintf(out, "rows in the stream (up to sequence %d); waiting for sink %s to apply them\n", seq, j.Sink)
	wctx := ctx
	if timeout > 0 {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	var shown time.Time
	last, err := WaitApplied(wctx, js, topo, j.Sink, seq, func(s backlog.Sink) {
		if time.Since(shown) < every(tty) {
			return
		}
		shown = time.Now()
		if tty {
			fmt.Fprintf(out, "\r\033[K%s", applying(s))
		} else {
			fmt.Fprintln(out, applying(s))
		}
	})
	if tty && !shown.IsZero() {
		fmt.Fprintln(out)
	}
	switch {
	case ctx.Err() != nil:
		fmt.Fprintf(out, "stopped waiting; backfill %s is complete, and sink %s has %d messages pending (sluice status shows its backlog)\n", j.ID, j.Sink, last.Pending())
		return last, false, nil
	case wctx.Err() != nil:
		return last, false, fmt.Errorf("backfill %s is complete, but sink %s had not applied it after %s: %d messages pending, %s", j.ID, j.Sink, timeout, last.Pending(), writersNote(last))
	case err != nil:
		return last, false, untold(j, err)
	}
	return last, true, nil
}

// untold is the error of a complete backfill whose application by the
// sink could not be read.
func untold(j jobs.Job, err error) error {
	return fmt.Errorf("backfill %s is complete, but whether sink %s applied it cannot be told: %w", j.ID, j.Sink, err)
}

// every is how often progress shows: redrawn in place on a terminal, a
// line every few seconds otherwise.
func every(tty bool) time.Duration {
	if tty {
		return 250 * time.Millisecond
	}
	return 2 * time.Second
}

// WaitApplied waits until the sink has acknowledged every message of the
// stream up to sequence seq, calling each with where the sink stands
// while it has not, and returns where it stood last. It returns ctx's
// error when ctx ends first.
func WaitApplied(ctx context.Context, js jetstream.JetStream, topo topology.Topology, sink string, seq uint64, each func(backlog.Sink)) (backlog.Sink, error) {
	last := backlog.Sink{Name: sink}
	st, err := js.Stream(ctx, topo.Stream)
	if err != nil {
		return last, fmt.Errorf("read stream %s: %w", topo.Stream, err)
	}
	for {
		sinks, err := backlog.Read(ctx, js, st, topo, []string{sink})
		if ctx.Err() != nil {
			return last, ctx.Err()
		}
		if err != nil {
			return last, err
		}
		last = sinks[0]
		if last.Applied(seq) {
			return last, nil
		}
		if each != nil {
			each(last)
		}
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// applying renders the wait for the sink on one line.
func applying(s backlog.Sink) string {
	return fmt.Sprintf("sink %s: %d messages pending, %s", s.Name, s.Pending(), writersNote(s))
}

// writersNote says whether anyone is applying the sink's messages.
func writersNote(s backlog.Sink) string {
	switch n := len(s.Writers); n {
	case 0:
		return "no writer is running"
	case 1:
		return "1 writer"
	default:
		return fmt.Sprintf("%d writers", n)
	}
}

// exceptions says which acknowledged changes the sink did not apply, or
// "" when there are none.
func exceptions(sink string, parked, letters uint64) string {
	var parts []string
	if parked > 0 {
		parts = append(parts, fmt.Sprintf("%d changes of sink %s wait for another attempt", parked, sink))
	}
	if letters > 0 {
		parts = append(parts, fmt.Sprintf("%d went to its dead letters meanwhile (sluice dlq list --sink %s)", letters, sink))
	}
	if len(parts) == 0 {
		return ""
	}
	return strings.Join(parts, " and ") + ": some rows may be missing from the sink"
}

// lastSeq is the stream's last sequence.
func lastSeq(ctx context.Context, js jetstream.JetStream, topo topology.Topology) (uint64, error) {
	st, err := js.Stream(ctx, topo.Stream)
	if err != nil {
		return 0, fmt.Errorf("read stream %s: %w", topo.Stream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("read stream %s: %w", topo.Stream, err)
	}
	return info.State.LastSeq, nil
}

// deadLetters counts the sink's dead letters; false when it cannot tell.
func deadLetters(ctx context.Context, js jetstream.JetStream, topo topology.Topology, sink string) (uint64, bool) {
	st, err := js.Stream(ctx, topo.Stream)
	if err != nil {
		return 0, false
	}
	sinks, err := backlog.Read(ctx, js, st, topo, []string{sink})
	if err != nil {
		return 0, false
	}
	return sinks[0].DeadLetters, true
}

// parkedRetries counts the sink's changes waiting for another attempt.
func parkedRetries(ctx context.Context, js jetstream.JetStream, topo topology.Topology, sink string) (uint64, error) {
	st, err := js.Stream(ctx, topo.RetryStream())
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return 0, nil // no writer ever ran
	}
	if err != nil {
		return 0, fmt.Errorf("read stream %s: %w", topo.RetryStream(), err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(topo.RetrySubject(sink)))
	if err != nil {
		return 0, fmt.Errorf("read stream %s: %w", topo.RetryStream(), err)
	}
	return info.State.Subjects[topo.RetrySubject(sink)], nil
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

// follow shows the job's progress until it ends, and returns it and
// whether it is done; not done and no error when interrupted.
func follow(ctx context.Context, out io.Writer, store *jobs.Store, id string, tty bool) (jobs.Job, bool, error) {
	var last time.Time
	for {
		j, _, err := store.Get(context.WithoutCancel(ctx), id)
		if err != nil {
			return j, false, err
		}
		if !j.State.Active() || time.Since(last) >= every(tty) {
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
				return j, true, nil
			case jobs.Failed:
				return j, false, fmt.Errorf("backfill %s failed: %s", j.ID, j.Error)
			default:
				return j, false, fmt.Errorf("backfill %s was %s after %d rows", j.ID, j.State, j.Done)
			}
		}
		select {
		case <-ctx.Done():
			if tty {
				fmt.Fprintln(out)
			}
			fmt.Fprintf(out, "stopped following; the backfill goes on in capture (sluice backfill --cancel stops it)\n")
			return j, false, nil
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

// Package dlq is `sluice dlq`: list, replay and drop a sink's dead letters.
//
// Replaying a letter writes its row as Postgres holds it now, not the old
// change the letter carries: capture reads the letters' rows again by key
// (a backfill by key, ordered against live changes by its watermarks) and
// deletes the keys of rows that are gone. However old the letter, it can
// neither bring back a deleted row nor put back an older value.
package dlq

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"go.uber.org/zap"

	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/deadletter"
	"github.com/sluicehq/sluice/pkg/topology"
)

// Run carries out one dlq action ("list", "replay" or "drop") on the
// letters of sink, all of them or those whose sequence is in seqs.
func Run(ctx context.Context, out io.Writer, cfg *config.Config, log *zap.Logger, action, sink string, seqs []uint64, all bool) error {
	if _, err := cfg.Sink(sink); err != nil {
		return err
	}
	switch action {
	case "list":
		return list(ctx, out, cfg, log, sink)
	case "replay":
		return replay(ctx, out, cfg, log, sink, seqs)
	case "drop":
		if len(seqs) == 0 && !all {
			return errors.New("drop needs --seq N (repeatable) or --all")
		}
		return drop(ctx, out, cfg, log, sink, seqs)
	}
	return fmt.Errorf("unknown dlq action %q (list, replay, drop)", action)
}

func open(ctx context.Context, cfg *config.Config, log *zap.Logger) (*deadletter.Box, func(), error) {
	nc, js, err := topology.Dial(cfg.NATS, "sluice dlq", log)
	if err != nil {
		return nil, nil, err
	}
	box, err := deadletter.Open(ctx, js, topology.New(cfg.NATS))
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return box, nc.Close, nil
}

// letters returns a sink's letters, and a function that closes the
// connection.
func letters(ctx context.Context, cfg *config.Config, log *zap.Logger, sink string) (*deadletter.Box, []deadletter.Letter, func(), error) {
	box, closeFn, err := open(ctx, cfg, log)
	if err != nil {
		return nil, nil, nil, err
	}
	ls, err := box.List(ctx, sink)
	if err != nil {
		closeFn()
		return nil, nil, nil, err
	}
	return box, ls, closeFn, nil
}

func list(ctx context.Context, out io.Writer, cfg *config.Config, log *zap.Logger, sink string) error {
	_, ls, closeFn, err := letters(ctx, cfg, log, sink)
	if err != nil {
		return err
	}
	defer closeFn()
	if len(ls) == 0 {
		fmt.Fprintf(out, "sink %s has no dead letters\n", sink)
		return nil
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "SEQ\tTIME\tATTEMPTS\tKEY\tERROR")
	for _, l := range ls {
		fmt.Fprintf(w, "%d\t%s\t%d\t%s\t%s\n", l.Seq, l.Time.UTC().Format(time.RFC3339), l.Attempts, l.Key, strings.ReplaceAll(l.Error, "\n", " "))
	}
	return w.Flush()
}

func drop(ctx context.Context, out io.Writer, cfg *config.Config, log *zap.Logger, sink string, seqs []uint64) error {
	box, ls, closeFn, err := letters(ctx, cfg, log, sink)
	if err != nil {
		return err
	}
	defer closeFn()
	n := 0
	for _, l := range ls {
		if len(seqs) > 0 && !slices.Contains(seqs, l.Seq) {
			continue
		}
		if err := box.Delete(ctx, l); err != nil {
			return err
		}
		n++
	}
	fmt.Fprintf(out, "dropped %d letter(s) of sink %s\n", n, sink)
	return nil
}

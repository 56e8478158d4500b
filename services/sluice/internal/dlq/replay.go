package dlq

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	jobs "github.com/sluicehq/sluice/pkg/backfill"
	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/deadletter"
	"github.com/sluicehq/sluice/pkg/topology"
	sluicev1 "github.com/sluicehq/sluice/proto/sluice/v1"
	"github.com/sluicehq/sluice/services/sluice/internal/backfill"
)

// keysPerJob bounds a backfill by key: a job is one message in NATS.
const keysPerJob = 2000

// replay has capture read the rows of the sink's letters (all, or those
// in seqs) again, and removes the letters once their rows are in the
// stream.
func replay(ctx context.Context, out io.Writer, cfg *config.Config, log *zap.Logger, sink string, seqs []uint64) error {
	s, err := cfg.Sink(sink)
	if err != nil {
		return err
	}
	nc, js, err := topology.Dial(cfg.NATS.URL, "sluice dlq", log)
	if err != nil {
		return err
	}
	defer nc.Close()
	topo := topology.New(cfg.NATS)
	box, err := deadletter.Open(ctx, js, topo)
	if err != nil {
		return err
	}
	store, err := jobs.Open(ctx, js, topo)
	if err != nil {
		return err
	}
	letters, err := box.List(ctx, sink)
	if err != nil {
		return err
	}
	keys := map[string][][]string{} // table → keys to read
	byTable := map[string][]deadletter.Letter{}
	var failed []error
	for _, l := range letters {
		if len(seqs) > 0 && !slices.Contains(seqs, l.Seq) {
			continue
		}
		var ev sluicev1.ChangeEvent
		if err := proto.Unmarshal(l.Data, &ev); err != nil || len(l.Data) == 0 {
			failed = append(failed, fmt.Errorf("letter %d: its change cannot be read (%v); drop it, and `sluice backfill` its table", l.Seq, err))
			continue
		}
		table := ev.Schema + "." + ev.Table
		switch {
		case ev.Action == sluicev1.Action_ACTION_TRUNCATE:
			failed = append(failed, fmt.Errorf("letter %d: a TRUNCATE of %s is not replayed; drop it, and `sluice backfill` the table", l.Seq, table))
			continue
		case !slices.Contains(s.Tables, table):
			failed = append(failed, fmt.Errorf("letter %d: %s is no longer among the tables of sink %s", l.Seq, table, sink))
			continue
		}
		for _, pk := range [][]string{ev.PkValues, ev.OldPkValues} {
			if len(pk) > 0 && !slices.ContainsFunc(keys[table], func(k []string) bool { return slices.Equal(k, pk) }) {
				keys[table] = append(keys[table], pk)
			}
		}
		byTable[table] = append(byTable[table], l)
	}
	var ids []string
	idTable := map[string]string{}
	for table, ks := range keys {
		for from := 0; from < len(ks); from += keysPerJob {
			j, err := store.CreateKeys(ctx, sink, table, ks[from:min(from+keysPerJob, len(ks))])
			if err != nil {
				return err
			}
			ids = append(ids, j.ID)
			idTable[j.ID] = table
		}
	}
	if len(ids) > 0 {
		fmt.Fprintf(out, "reading the rows of %d letter(s) again from Postgres (backfill %s)\n", len(letters), strings.Join(ids, ", "))
	}
	ended := backfill.Wait(ctx, store, ids)
	replayed := 0
	for table, ls := range byTable {
		done := true
		for id, t := range idTable {
			if t == table && ended[id] != nil {
				done = false
				failed = append(failed, fmt.Errorf("%s: %w", table, ended[id]))
			}
		}
		if !done {
			continue
		}
		for _, l := range ls {
			if err := box.Delete(ctx, l); err != nil {
				return err
			}
			replayed++
		}
	}
	fmt.Fprintf(out, "replayed %d letter(s) of sink %s\n", replayed, sink)
	if len(failed) > 0 {
		return fmt.Errorf("%d letter(s) stay: %w", len(failed), errors.Join(failed...))
	}
	return nil
}

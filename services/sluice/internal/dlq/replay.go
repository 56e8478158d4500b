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

// A backfill by key is one message in NATS: its keys are bounded in
// number and in bytes, well under the server's max_payload (1 MiB by
// default).
const (
	keysPerJob     = 2000
	keyBytesPerJob = 256 << 10
)

// replay has capture read the rows of the sink's letters (all, or those
// in seqs) again, and removes the letters once their rows are in the
// stream.
func replay(ctx context.Context, out io.Writer, cfg *config.Config, log *zap.Logger, sink string, seqs []uint64) error {
	s, err := cfg.Sink(sink)
	if err != nil {
		return err
	}
	nc, js, err := topology.Dial(cfg.NATS, "sluice dlq", log)
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
	seen := map[string]bool{}       // table and key
	byTable := map[string][]deadletter.Letter{}
	var failed []error
	stay := 0 // letters that are not replayed
	for _, l := range letters {
		if len(seqs) > 0 && !slices.Contains(seqs, l.Seq) {
			continue
		}
		var ev sluicev1.ChangeEvent
		if err := proto.Unmarshal(l.Data, &ev); err != nil || len(l.Data) == 0 {
			failed = append(failed, fmt.Errorf("letter %d: its change cannot be read (%v); drop it, and `sluice backfill` its table", l.Seq, err))
			stay++
			continue
		}
		table := ev.Schema + "." + ev.Table
		switch {
		case ev.Action == sluicev1.Action_ACTION_TRUNCATE:
			failed = append(failed, fmt.Errorf("letter %d: a TRUNCATE of %s is not replayed; drop it, and `sluice backfill` the table", l.Seq, table))
			stay++
			continue
		case !slices.Contains(s.Tables, table):
			failed = append(failed, fmt.Errorf("letter %d: %s is no longer among the tables of sink %s", l.Seq, table, sink))
			stay++
			continue
		}
		for _, pk := range [][]string{ev.PkValues, ev.OldPkValues} {
			if k := table + "\x00" + strings.Join(pk, "\x00"); len(pk) > 0 && !seen[k] {
				seen[k] = true
				keys[table] = append(keys[table], pk)
			}
		}
		byTable[table] = append(byTable[table], l)
	}
	var ids []string
	idTable := map[string]string{}
	for table, ks := range keys {
		for len(ks) > 0 {
			n, size := 0, 0
			for n < len(ks) && n < keysPerJob && (n == 0 || size < keyBytesPerJob) {
				for _, v := range ks[n] {
					size += len(v) + 3 // quoted, and a comma
				}
				n++
			}
			j, err := store.CreateKeys(ctx, sink, table, ks[:n])
			if err != nil {
				return err
			}
			ids = append(ids, j.ID)
			idTable[j.ID] = table
			ks = ks[n:]
		}
	}
	if len(ids) > 0 {
		n := 0
		for _, ls := range byTable {
			n += len(ls)
		}
		fmt.Fprintf(out, "reading the rows of %d letter(s) again from Postgres (backfill %s)\n", n, strings.Join(ids, ", "))
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
			stay += len(ls)
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
		return fmt.Errorf("%d letter(s) stay: %w", stay, errors.Join(failed...))
	}
	return nil
}

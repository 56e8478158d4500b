package backfiller

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nuid"
	"go.uber.org/zap"

	"github.com/sluicehq/sluice/pkg/backfill"
	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/services/capture/internal/event"
	"github.com/sluicehq/sluice/services/capture/internal/pgoutput"
	"github.com/sluicehq/sluice/services/capture/internal/pgvalue"
	"github.com/sluicehq/sluice/services/capture/internal/source"
)

const (
	// Chunks start small and grow while their query stays fast.
	firstChunk, minChunk, maxChunk = 500, 100, 20000
	fastQuery, slowQuery           = 100 * time.Millisecond, 500 * time.Millisecond
	// chunkTimeout bounds the wait for a chunk's events to be in the
	// stream; past it (a session restarted, say) the chunk is read again.
	chunkTimeout = time.Minute
	maxAttempts  = 5
)

// Worker runs the backfill jobs, one at a time, oldest first.
type Worker struct {
	cfg    *config.Config
	jobs   *backfill.Store
	src    *source.Source // its own connection: sessions use theirs
	types  *pgvalue.Types
	chunks *Chunks
	log    *zap.Logger
}

// NewWorker returns a worker reading through src.
func NewWorker(cfg *config.Config, jobs *backfill.Store, src *source.Source, chunks *Chunks, log *zap.Logger) *Worker {
	return &Worker{cfg: cfg, jobs: jobs, src: src, types: pgvalue.NewTypes(src), chunks: chunks, log: log}
}

// Run runs jobs until ctx is done. A job that fails maxAttempts times in a
// row is marked failed, with its error.
func (w *Worker) Run(ctx context.Context) error {
	if err := w.initial(ctx); err != nil {
		return err
	}
	changed, err := w.jobs.Watch(ctx)
	if err != nil {
		return err
	}
	failures := map[string]int{}
	for ctx.Err() == nil {
		job, err := w.next(ctx)
		if err != nil || job == nil {
			select {
			case <-ctx.Done():
			case <-changed:
			case <-time.After(5 * time.Second):
			}
			continue
		}
		err = w.run(ctx, job.ID)
		if err == nil || ctx.Err() != nil {
			continue
		}
		failures[job.ID]++
		w.log.Warn("backfill failed; retrying", zap.String("backfill", job.ID), zap.String("table", job.Table), zap.Int("attempt", failures[job.ID]), zap.Error(err))
		if failures[job.ID] >= maxAttempts {
			w.finish(ctx, job.ID, backfill.Failed, err.Error())
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(failures[job.ID]) * time.Second):
		}
	}
	return nil
}

// initial creates the initial backfills of the sinks that ask for one, the
// first time capture sees them.
func (w *Worker) initial(ctx context.Context) error {
	for _, s := range w.cfg.Sinks {
		if !s.InitialBackfill {
			continue
		}
		seen, err := w.jobs.Seen(ctx, s.Name)
		if err != nil || seen {
			return err
		}
		for _, t := range s.Tables {
			j, err := w.jobs.Create(ctx, s.Name, t, "")
			if err != nil {
				return err
			}
			w.log.Info("initial backfill created", zap.String("backfill", j.ID), zap.String("sink", s.Name), zap.String("table", t))
		}
	}
	return nil
}

func (w *Worker) next(ctx context.Context) (*backfill.Job, error) {
	jobs, err := w.jobs.List(ctx)
	if err != nil {
		return nil, err
	}
	for _, j := range jobs {
		if j.State.Active() {
			return &j, nil
		}
	}
	return nil, nil
}

// run carries one job on from its cursor until it is done or cancelled.
func (w *Worker) run(ctx context.Context, id string) error {
	if err := w.src.Reconnect(ctx); err != nil { // Postgres may have restarted
		return err
	}
	job, rev, err := w.jobs.Get(ctx, id)
	if err != nil || !job.State.Active() {
		return err
	}
	schema, table := config.SplitTable(job.Table)
	if refused, err := w.refuse(ctx, job); refused || err != nil {
		return err
	}
	if job.State == backfill.Pending {
		sh, err := w.src.Shape(ctx, schema, table)
		if err != nil {
			return err
		}
		if len(job.Keys) == 0 {
			if job.Total, err = w.src.Estimate(ctx, sh, job.Where); err != nil {
				return err
			}
		}
		job.State = backfill.Running
		if rev, err = w.jobs.Update(ctx, job, rev); err != nil {
			return err
		}
		w.log.Info("backfill started", zap.String("backfill", job.ID), zap.String("sink", job.Sink), zap.String("table", job.Table), zap.Int64("estimated_rows", job.Total))
	}
	size := firstChunk
	for {
		// The table's shape is read for each chunk: it may change meanwhile.
		sh, err := w.src.Shape(ctx, schema, table)
		if err != nil {
			return err
		}
		rel, err := w.relation(ctx, sh)
		if err != nil {
			return err
		}
		ch := &Chunk{ID: nuid.Next(), Job: job.ID, Sink: job.Sink, Table: job.Table, Rel: rel, Acked: make(chan struct{})}
		if _, err := w.src.Watermark(ctx, lowMark(ch.ID, job.Table)); err != nil {
			return err
		}
		if err := w.src.Settle(ctx); err != nil {
			return err
		}
		began := time.Now()
		var rows []pgoutput.Tuple
		var cursor []string
		var read int
		if len(job.Keys) > 0 {
			rows, ch.Missing, cursor, err = w.byKey(ctx, sh, job)
			read = len(rows) + len(ch.Missing)
		} else {
			rows, cursor, err = w.src.Chunk(ctx, sh, job.Where, job.Cursor, size)
			read = len(rows)
		}
		took := time.Since(began)
		if err != nil {
			return err
		}
		if read == 0 {
			// Close the window the low watermark opened.
			if _, err := w.src.Watermark(ctx, highMark(ch.ID)); err != nil {
				return err
			}
			w.finish(ctx, job.ID, backfill.Done, "")
			w.log.Info("backfill done", zap.String("backfill", job.ID), zap.String("table", job.Table), zap.Int64("rows", job.Done))
			return nil
		}
		ch.Rows = rows
		w.chunks.add(ch)
		_, err = w.src.Watermark(ctx, highMark(ch.ID))
		if err == nil {
			err = w.await(ctx, ch)
		}
		w.chunks.remove(ch.ID)
		if errors.Is(err, errNotConfirmed) {
			w.log.Warn("backfill chunk not confirmed; reading it again", zap.String("backfill", job.ID))
			continue
		}
		if err != nil {
			return err
		}

		// Progress, saved only now that the chunk is in the stream.
		job.Cursor = cursor
		job.Done += int64(read)
		rate := float64(read) / time.Since(began).Seconds()
		if job.Rate == 0 {
			job.Rate = rate
		} else {
			job.Rate = 0.7*job.Rate + 0.3*rate
		}
		if rev, err = w.jobs.Update(ctx, job, rev); errors.Is(err, backfill.ErrChanged) {
			// Cancelled meanwhile? Keep its state, with this progress.
			cur, r, gerr := w.jobs.Get(ctx, job.ID)
			if gerr != nil {
				return gerr
			}
			cur.Cursor, cur.Done, cur.Rate = job.Cursor, job.Done, job.Rate
			if rev, err = w.jobs.Update(ctx, cur, r); err != nil {
				return err
			}
			if !cur.State.Active() {
				w.log.Info("backfill stopped", zap.String("backfill", job.ID), zap.String("state", string(cur.State)))
				return nil
			}
			if cur.Where != job.Where {
				if refused, err := w.refuse(ctx, cur); refused || err != nil {
					return err
				}
			}
			job = cur
		} else if err != nil {
			return err
		}
		switch {
		case took < fastQuery:
			size = min(2*size, maxChunk)
		case took > slowQuery:
			size = max(size/2, minChunk)
		}
	}
}

// refuse checks job's condition, and fails the job when it is invalid.
// Jobs come from the bucket, which anyone with NATS access can write: the
// condition is checked whenever a job is taken up or changed, not only
// when the CLI created it.
func (w *Worker) refuse(ctx context.Context, job backfill.Job) (bool, error) {
	if job.Where == "" {
		return false, nil
	}
	var invalid *backfill.InvalidWhereError
	if err := w.src.CheckWhere(ctx, job.Table, job.Where); errors.As(err, &invalid) {
		w.finish(ctx, job.ID, backfill.Failed, err.Error())
		w.log.Error("backfill refused", zap.String("backfill", job.ID), zap.String("table", job.Table), zap.Error(err))
		return true, nil
	} else if err != nil {
		return false, err
	}
	return false, nil
}

// keysPerChunk bounds the rows a backfill by key reads at once.
const keysPerChunk = 500

// byKey reads the next chunk of a backfill by key: the rows found, the
// keys of those gone, and the cursor after them (the index of the next
// key).
func (w *Worker) byKey(ctx context.Context, sh *source.Shape, job backfill.Job) (rows []pgoutput.Tuple, missing [][]string, cursor []string, err error) {
	from := 0
	if len(job.Cursor) == 1 {
		if from, err = strconv.Atoi(job.Cursor[0]); err != nil {
			return nil, nil, nil, fmt.Errorf("backfill %s: cursor %q", job.ID, job.Cursor)
		}
	}
	if from >= len(job.Keys) {
		return nil, nil, nil, nil
	}
	keys := job.Keys[from:min(from+keysPerChunk, len(job.Keys))]
	var found []bool
	if rows, found, err = w.src.Rows(ctx, sh, keys); err != nil {
		return nil, nil, nil, err
	}
	for i, k := range keys {
		if !found[i] {
			missing = append(missing, k)
		}
	}
	return rows, missing, []string{strconv.Itoa(from + len(keys))}, nil
}

var errNotConfirmed = errors.New("chunk not confirmed")

func (w *Worker) await(ctx context.Context, ch *Chunk) error {
	select {
	case <-ch.Acked:
		return nil
	case <-time.After(chunkTimeout):
		return errNotConfirmed
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (w *Worker) relation(ctx context.Context, sh *source.Shape) (*event.Relation, error) {
	oids := make([]uint32, len(sh.Relation.Columns))
	for i, c := range sh.Relation.Columns {
		oids[i] = c.TypeOID
	}
	types, err := w.types.Resolve(ctx, oids)
	if err != nil {
		return nil, fmt.Errorf("table %s.%s: %w", sh.Relation.Namespace, sh.Relation.Name, err)
	}
	return event.NewRelation(&sh.Relation, sh.PK, types)
}

// finish puts a job into a final state, whatever else changed meanwhile.
func (w *Worker) finish(ctx context.Context, id string, state backfill.State, msg string) {
	for range 5 {
		j, rev, err := w.jobs.Get(ctx, id)
		if err != nil || !j.State.Active() {
			return
		}
		j.State, j.Error = state, msg
		if _, err := w.jobs.Update(ctx, j, rev); !errors.Is(err, backfill.ErrChanged) {
			return
		}
	}
}

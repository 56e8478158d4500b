package rediswriter

import (
	"context"
	"fmt"
	"slices"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/deadletter"
	"github.com/sluicehq/sluice/pkg/topology"
	sluicev1 "github.com/sluicehq/sluice/proto/sluice/v1"
	"github.com/sluicehq/sluice/services/redis-writer/internal/command"
	"github.com/sluicehq/sluice/services/redis-writer/internal/store"
)

// ReplayResult counts what a replay did.
type ReplayResult struct {
	Applied int     // written (or older than the key, so skipped) and removed
	Failed  []error // left in the dead-letter stream
}

// Replay applies a sink's dead letters, all or those whose sequence is in
// seqs, with the sink's current configuration, and removes each one that
// Redis accepted. Versioned writes make this safe at any time: a letter
// older than what a key holds now changes nothing.
func Replay(ctx context.Context, cfg *config.Config, sinkName string, seqs []uint64, log *zap.Logger) (ReplayResult, error) {
	var res ReplayResult
	sink, err := cfg.Sink(sinkName)
	if err != nil {
		return res, err
	}
	render, err := command.NewRenderer(sink)
	if err != nil {
		return res, err
	}
	store.LogTo(log)
	st, err := store.Open(ctx, sink.Destination)
	if err != nil {
		return res, err
	}
	defer st.Close()
	nc, js, err := topology.Dial(cfg.NATS.URL, "sluice dlq", log)
	if err != nil {
		return res, err
	}
	defer nc.Close()
	box, err := deadletter.Open(ctx, js, topology.New(cfg.NATS))
	if err != nil {
		return res, err
	}
	letters, err := box.List(ctx, sinkName)
	if err != nil {
		return res, err
	}
	for _, l := range letters {
		if len(seqs) > 0 && !slices.Contains(seqs, l.Seq) {
			continue
		}
		if err := replayOne(ctx, render, st, l); err != nil {
			res.Failed = append(res.Failed, fmt.Errorf("letter %d: %w", l.Seq, err))
			continue
		}
		if err := box.Delete(ctx, l); err != nil {
			return res, err
		}
		res.Applied++
	}
	return res, nil
}

func replayOne(ctx context.Context, render *command.Renderer, st *store.Store, l deadletter.Letter) error {
	var ev sluicev1.ChangeEvent
	if err := proto.Unmarshal(l.Data, &ev); err != nil {
		return fmt.Errorf("decode event: %w", err)
	}
	cmds, err := render.Append(nil, &ev)
	if err != nil || len(cmds) == 0 {
		return err
	}
	errs, _ := st.Apply(ctx, cmds)
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

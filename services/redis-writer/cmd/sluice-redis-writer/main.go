// Command sluice-redis-writer writes one sink's changes to Redis.
package main

import (
	"context"
	"errors"
	"flag"
	"os"

	"go.uber.org/zap"

	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/program"
	rediswriter "github.com/sluicehq/sluice/services/redis-writer"
)

func main() {
	const name = "sluice-redis-writer"
	fs := flag.NewFlagSet(name, flag.ExitOnError)
	sink := fs.String("sink", "", "the sink to write (its name in the config)")
	program.Command{
		Name:  name,
		Flags: fs,
		Scope: func() config.Scope {
			if *sink == "" {
				program.Exit(name, errors.New("--sink is required"))
			}
			return config.Writer(*sink)
		},
		Run: func(ctx context.Context, cfg *config.Config, log *zap.Logger) error {
			if err := program.RequireNATS(name, cfg); err != nil {
				return err
			}
			w, err := rediswriter.New(cfg, *sink, log)
			if err != nil {
				return err
			}
			return w.Run(ctx)
		},
	}.Main(os.Args[1:])
}

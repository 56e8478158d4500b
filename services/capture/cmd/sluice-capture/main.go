// Command sluice-capture streams Postgres changes into JetStream.
package main

import (
	"context"
	"flag"
	"os"

	"go.uber.org/zap"

	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/program"
	"github.com/sluicehq/sluice/services/capture"
)

func main() {
	const name = "sluice-capture"
	fs := flag.NewFlagSet(name, flag.ExitOnError)
	program.Command{
		Name:  name,
		Flags: fs,
		Scope: func() config.Scope { return config.Capture },
		Run: func(ctx context.Context, cfg *config.Config, log *zap.Logger) error {
			if err := program.RequireNATS(name, cfg); err != nil {
				return err
			}
			return capture.New(cfg, log).Run(ctx)
		},
	}.Main(os.Args[1:])
}

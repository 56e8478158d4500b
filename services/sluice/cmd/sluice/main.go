// Command sluice is the operator's tool: `sluice dev` runs the whole
// pipeline in one process, `sluice demo` shows it working on throwaway
// servers.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"go.uber.org/zap"

	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/program"
	"github.com/sluicehq/sluice/services/sluice/internal/demo"
	"github.com/sluicehq/sluice/services/sluice/internal/dev"
)

const usage = `Usage: sluice <command> [flags]

Commands:
  dev   --config FILE   run capture, one writer per sink and (without nats.url)
                        an embedded NATS server, in one process
  demo                  start a throwaway Postgres and Redis, run 'sluice dev'
                        against them, make changes, and show both sides
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmd, args := os.Args[1], os.Args[2:]
	switch cmd {
	case "dev":
		fs := flag.NewFlagSet("sluice dev", flag.ExitOnError)
		program.Main("sluice dev", fs, args, func(ctx context.Context, cfg *config.Config, log *zap.Logger) error {
			return dev.Run(ctx, cfg, log)
		})
	case "demo":
		fs := flag.NewFlagSet("sluice demo", flag.ExitOnError)
		keep := fs.Bool("keep", false, "leave the servers running until Ctrl-C, to look around")
		if err := fs.Parse(args); err != nil {
			os.Exit(2)
		}
		if err := demo.Run(context.Background(), os.Stdout, *keep); err != nil {
			program.Exit("sluice demo", err)
		}
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "sluice: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
}

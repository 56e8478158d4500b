// Command sluice is the operator's tool: `sluice dev` runs the whole
// pipeline in one process, `sluice demo` shows it working on throwaway
// servers.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"

	"go.uber.org/zap"

	"github.com/sluicehq/sluice/pkg/buildinfo"
	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/program"
	"github.com/sluicehq/sluice/services/sluice/internal/backfill"
	"github.com/sluicehq/sluice/services/sluice/internal/configcheck"
	"github.com/sluicehq/sluice/services/sluice/internal/demo"
	"github.com/sluicehq/sluice/services/sluice/internal/dev"
	"github.com/sluicehq/sluice/services/sluice/internal/dlq"
	"github.com/sluicehq/sluice/services/sluice/internal/resync"
	"github.com/sluicehq/sluice/services/sluice/internal/status"
)

// seqList collects repeated --seq flags.
type seqList []uint64

func (s *seqList) String() string { return fmt.Sprint(*s) }

func (s *seqList) Set(v string) error {
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return fmt.Errorf("not a sequence number: %q", v)
	}
	*s = append(*s, n)
	return nil
}

const usage = `Usage: sluice <command> [flags]

Commands:
  dev   --config FILE   run capture, one writer per sink and (without nats.url)
                        an embedded NATS server, in one process
  demo                  start a throwaway Postgres and Redis, run 'sluice dev'
                        against them, make changes, and show both sides
  backfill --config FILE --sink NAME --table T [--where SQL] [--detach]
           [--apply-timeout D]
                        copy the table's current rows into the sink (READ events)
                        and follow the progress until the sink has applied them;
                        --cancel stops an active one
  status --config FILE [--output text|json]
                        the slot, the stream, each sink's backlog (in stream
                        messages), dead letters and writers with their
                        partitions, the active backfills and the last few that
                        ended within 24 hours; json for scripts
  resync --config FILE  after the slot was lost or the database replaced:
                        have capture make a new slot and backfill every sink
  dlq list   --config FILE --sink NAME               a sink's dead letters
  dlq replay --config FILE --sink NAME [--seq N]...  write their rows again as Postgres holds them now
  dlq drop   --config FILE --sink NAME (--seq N... | --all)
  config check --config FILE [--service capture|writer --sink NAME]
                        validate the file as that service reads it, resolving
                        its ${VAR} references, without connecting to anything
  version               the build: version, revision and Go version
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
		// One process holding every part has a heap large enough for Go's
		// default collector to run rarely; a higher GOGC gained nothing
		// measurable there and raised its peak RSS by 40%.
		program.Command{Name: "sluice dev", Flags: fs, MemoryLimit: dev.MemoryLimit, GCPercent: 100, Run: dev.Run}.Main(args)
	case "demo":
		fs := flag.NewFlagSet("sluice demo", flag.ExitOnError)
		keep := fs.Bool("keep", false, "leave the servers running until Ctrl-C, to look around")
		if err := fs.Parse(args); err != nil {
			os.Exit(2)
		}
		if err := demo.Run(context.Background(), os.Stdout, *keep); err != nil {
			program.Exit("sluice demo", err)
		}
	case "backfill":
		fs := flag.NewFlagSet("sluice backfill", flag.ExitOnError)
		var r backfill.Request
		fs.StringVar(&r.Sink, "sink", "", "the sink to fill")
		fs.StringVar(&r.Table, "table", "", "the table to copy (schema.table or table)")
		fs.StringVar(&r.Where, "where", "", "an SQL condition: copy only the rows it selects")
		fs.BoolVar(&r.Cancel, "cancel", false, "cancel the active backfill of --table into --sink")
		fs.BoolVar(&r.Detach, "detach", false, "create the backfill and return, without following it")
		fs.DurationVar(&r.ApplyTimeout, "apply-timeout", 0, "with the rows in the stream, stop waiting for the sink to apply them after this long, and fail (0: wait until interrupted)")
		program.Main("sluice backfill", fs, args, func(ctx context.Context, cfg *config.Config, log *zap.Logger) error {
			if r.Sink == "" || r.Table == "" {
				return errors.New("--sink and --table are required")
			}
			if err := program.RequireNATS("sluice backfill", cfg); err != nil {
				return err
			}
			return backfill.Run(ctx, os.Stdout, cfg, log, r)
		})
	case "status":
		fs := flag.NewFlagSet("sluice status", flag.ExitOnError)
		output := fs.String("output", status.Text, "text, or json for scripts")
		program.Main("sluice status", fs, args, func(ctx context.Context, cfg *config.Config, log *zap.Logger) error {
			if err := status.CheckOutput(*output); err != nil {
				return err
			}
			if err := program.RequireNATS("sluice status", cfg); err != nil {
				return err
			}
			return status.Run(ctx, os.Stdout, cfg, log, *output)
		})
	case "resync":
		fs := flag.NewFlagSet("sluice resync", flag.ExitOnError)
		program.Main("sluice resync", fs, args, func(ctx context.Context, cfg *config.Config, log *zap.Logger) error {
			if err := program.RequireNATS("sluice resync", cfg); err != nil {
				return err
			}
			return resync.Run(ctx, os.Stdout, cfg, log)
		})
	case "dlq":
		if len(args) == 0 {
			fmt.Fprint(os.Stderr, usage)
			os.Exit(2)
		}
		action := args[0]
		fs := flag.NewFlagSet("sluice dlq "+action, flag.ExitOnError)
		sink := fs.String("sink", "", "the sink")
		all := fs.Bool("all", false, "drop: every letter of the sink")
		var seqs seqList
		fs.Var(&seqs, "seq", "a letter's sequence number (repeatable)")
		program.Main("sluice dlq", fs, args[1:], func(ctx context.Context, cfg *config.Config, log *zap.Logger) error {
			if *sink == "" {
				return errors.New("--sink is required")
			}
			if err := program.RequireNATS("sluice dlq", cfg); err != nil {
				return err
			}
			return dlq.Run(ctx, os.Stdout, cfg, log, action, *sink, seqs, *all)
		})
	case "config":
		if len(args) == 0 || args[0] != "check" {
			fmt.Fprint(os.Stderr, usage)
			os.Exit(2)
		}
		fs := flag.NewFlagSet("sluice config check", flag.ExitOnError)
		path := fs.String("config", "sluice.yaml", "the configuration file")
		service := fs.String("service", "all", "the service whose part to check: capture, writer or all")
		sink := fs.String("sink", "", "with --service writer: the writer's sink")
		if err := fs.Parse(args[1:]); err != nil {
			os.Exit(2)
		}
		scope, err := configcheck.Scope(*service, *sink)
		if err == nil {
			err = configcheck.Run(os.Stdout, *path, scope)
		}
		if err != nil {
			program.Exit("sluice config check", err)
		}
	case "version", "--version":
		fmt.Println("sluice", buildinfo.Get())
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "sluice: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
}

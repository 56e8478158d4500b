// Package program is the common start of every Sluice command: the --config
// flag, the config file, the logger, and the signals that stop it.
package program

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime/debug"
	"runtime/pprof"

	"go.uber.org/zap"

	"github.com/sluicehq/sluice/pkg/admin"
	"github.com/sluicehq/sluice/pkg/buildinfo"
	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/logging"
	"github.com/sluicehq/sluice/pkg/shutdown"
)

// Run is a command's work. It returns when ctx is cancelled (after draining)
// or on failure.
type Run func(ctx context.Context, cfg *config.Config, log *zap.Logger) error

// Command is one of Sluice's commands.
type Command struct {
	Name  string
	Flags *flag.FlagSet
	// Scope is the part of the config file the command reads, asked once
	// its flags are parsed; nil reads all of it.
	Scope func() config.Scope
	// MemoryLimit is the soft memory limit of a command that runs several
	// parts in one process; nil: ServiceMemoryLimit.
	MemoryLimit func(cfg *config.Config) int64
	// GCPercent is the collector's GOGC; 0: ServiceGCPercent.
	GCPercent int
	Run       Run
}

// Main is Command{name, fs, nil, run}.Main(args): a command that reads
// the whole config file.
func Main(name string, fs *flag.FlagSet, args []string, run Run) {
	Command{Name: name, Flags: fs, Run: run}.Main(args)
}

// Main parses args with the command's flags, to which it adds --config,
// --http and --version, loads its part of the config and runs it until
// SIGINT or SIGTERM. While it drains, /readyz fails and the other
// endpoints keep answering. Any failure is printed as one line, "name:
// error", and exits with status 1.
func (c Command) Main(args []string) {
	name, fs := c.Name, c.Flags
	path := fs.String("config", "sluice.yaml", "the configuration file")
	httpAddr := fs.String("http", "", "serve /metrics, /healthz and /readyz on this address (overrides http.listen)")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		os.Exit(2)
	}
	if *showVersion {
		fmt.Println(name, buildinfo.Get())
		os.Exit(0)
	}
	buildinfo.Register()
	if fs.NArg() > 0 {
		Exit(name, fmt.Errorf("unexpected argument %q", fs.Arg(0)))
	}
	scope := config.Everything
	if c.Scope != nil {
		scope = c.Scope()
	}
	cfg, err := config.Load(*path, scope)
	if err != nil {
		Exit(name, fmt.Errorf("config %s: %w", *path, err))
	}
	log, err := logging.New(cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		Exit(name, err)
	}
	log = log.Named(name)
	if os.Getenv("GOMEMLIMIT") == "" {
		// A safety net under 100 MiB: the services' live heap is a few tens
		// of MiB (bounded by what they hold in flight), and the collector
		// would otherwise let garbage double it. GOMEMLIMIT overrides it.
		limit := int64(ServiceMemoryLimit)
		if c.MemoryLimit != nil {
			limit = c.MemoryLimit(cfg)
		}
		debug.SetMemoryLimit(limit)
	}
	if os.Getenv("GOGC") == "" {
		// With the limit above as the bound, the collector need not run
		// whenever the heap doubles: on a live heap of ~15 MiB that was
		// several times a second, and with the scavenger returning the
		// pages in between, over a third of a busy service's CPU. GOGC
		// overrides it.
		gc := ServiceGCPercent
		if c.GCPercent != 0 {
			gc = c.GCPercent
		}
		debug.SetGCPercent(gc)
	}
	ctx, cancel := shutdown.Context(context.Background())
	if path := os.Getenv("SLUICE_CPUPROFILE"); path != "" {
		stop, err := cpuProfile(path)
		if err != nil {
			Exit(name, err)
		}
		defer stop()
	}
	if *httpAddr != "" {
		cfg.HTTP.Listen = *httpAddr
	}
	if cfg.HTTP.Listen != "" {
		srv, err := admin.Start(cfg.HTTP.Listen, cfg.HTTP.PProf)
		if err != nil {
			Exit(name, err)
		}
		defer srv.Close()
		go func() { <-ctx.Done(); srv.Drain() }()
		log.Info("serving /metrics, /healthz and /readyz", zap.String("address", srv.Addr()))
	}
	err = c.Run(ctx, cfg, log)
	cancel()
	_ = log.Sync()
	if err != nil {
		Exit(name, err)
	}
}

// cpuProfile writes a CPU profile to path until stop is called: set
// SLUICE_CPUPROFILE to find where a service spends its time.
func cpuProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// ServiceMemoryLimit is a service's soft memory limit.
const ServiceMemoryLimit = 80 << 20

// ServiceGCPercent is a service's GOGC: the heap grows to five times what
// is live before a collection, up to the memory limit.
const ServiceGCPercent = 400

// Exit prints "name: err" on one line and exits with status 1.
func Exit(name string, err error) {
	fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
	os.Exit(1)
}

// RequireNATS is the check of the commands that need an external server.
func RequireNATS(name string, cfg *config.Config) error {
	if cfg.NATS.URL == "" {
		return fmt.Errorf("nats.url: is required by %s (only `sluice dev` embeds a NATS server)", name)
	}
	return nil
}

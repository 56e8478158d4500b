// Package dev runs the whole pipeline in one process: capture, one writer
// per sink and, when the config names no NATS server, an embedded one.
package dev

import (
	"context"
	"sync"

	"go.uber.org/zap"

	"github.com/sluicehq/sluice/pkg/broker"
	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/program"
	"github.com/sluicehq/sluice/services/capture"
	rediswriter "github.com/sluicehq/sluice/services/redis-writer"
)

// Run runs until ctx is cancelled, then lets every part drain and returns
// nil; if a part fails, it stops the others and returns that failure.
func Run(ctx context.Context, cfg *config.Config, log *zap.Logger) error {
	if cfg.NATS.URL == "" {
		srv, err := broker.Start(broker.Options{Dir: cfg.NATS.DataDir})
		if err != nil {
			return err
		}
		defer srv.Shutdown()
		log.Info("embedded nats server started", zap.String("url", srv.URL()), zap.String("data_dir", srv.Dir()))
		cfg = embedded(cfg, srv)
	}
	parts := []func(context.Context) error{capture.New(cfg, log.Named("capture")).Run}
	for _, s := range cfg.Sinks {
		w, err := rediswriter.New(cfg, s.Name, log.Named("writer"))
		if err != nil {
			return err
		}
		parts = append(parts, w.Run)
	}
	return runAll(ctx, parts)
}

// embedded is cfg with the parts connecting to srv: in process, without a
// socket (sockets were a quarter of its CPU); other commands reach
// it at its URL.
func embedded(cfg *config.Config, srv *broker.Server) *config.Config {
	c := *cfg
	c.NATS.URL, c.NATS.InProcess = srv.URL(), srv
	return &c
}

// MemoryLimit is a service's soft memory limit for each part dev runs:
// capture, each writer and the embedded server. One service's limit for
// them all made the collector run most of the time.
func MemoryLimit(cfg *config.Config) int64 {
	parts := 1 + len(cfg.Sinks)
	if cfg.NATS.URL == "" {
		parts++
	}
	return int64(parts) * program.ServiceMemoryLimit
}

// runAll runs parts until ctx is cancelled or one fails; it returns the
// first failure after every part has returned.
func runAll(ctx context.Context, parts []func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for _, run := range parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := run(ctx); err != nil {
				once.Do(func() { first = err })
				cancel()
			}
		}()
	}
	wg.Wait()
	return first
}

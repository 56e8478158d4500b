package dev

import (
	"testing"

	"github.com/sluicehq/sluice/pkg/broker"
	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/program"
)

// Each part dev runs in its process gets a service's memory limit.
func TestMemoryLimit(t *testing.T) {
	cfg := &config.Config{Sinks: []config.Sink{{Name: "a"}, {Name: "b"}}}
	if got := MemoryLimit(cfg); got != 4*program.ServiceMemoryLimit {
		t.Errorf("embedded server, two sinks: %d MiB", got>>20)
	}
	cfg.NATS.URL = "nats://127.0.0.1:4222"
	if got := MemoryLimit(cfg); got != 3*program.ServiceMemoryLimit {
		t.Errorf("external server, two sinks: %d MiB", got>>20)
	}
}

// The parts reach the embedded server in process; its URL stays, for the
// commands that run in other processes.
func TestEmbedded(t *testing.T) {
	srv, err := broker.Start(broker.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	cfg := &config.Config{}
	c := embedded(cfg, srv)
	if c.NATS.InProcess != srv || c.NATS.URL != srv.URL() {
		t.Errorf("nats: %+v", c.NATS)
	}
	if cfg.NATS.URL != "" || cfg.NATS.InProcess != nil {
		t.Error("the loaded config was changed")
	}
}

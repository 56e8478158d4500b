package dev

import (
	"testing"

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

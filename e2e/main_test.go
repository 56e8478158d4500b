// Package e2e runs the Sluice binaries as separate processes against real
// Postgres, NATS JetStream and Redis servers: the pipeline, capture,
// backfills and sinks (package faults injects failures).
package e2e

import (
	"os"
	"testing"

	"github.com/sluicehq/sluice/e2e/harness"
)

func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }

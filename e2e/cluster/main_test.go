// Package cluster runs the Sluice binaries as separate processes against a
// JetStream cluster of three nats-server processes, and kills, pauses and
// restarts its nodes under a workload. A package of its own, so that it
// runs beside the other end-to-end packages.
package cluster

import (
	"os"
	"testing"

	"github.com/sluicehq/sluice/e2e/harness"
)

func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }

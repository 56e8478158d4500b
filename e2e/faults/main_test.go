// Package faults runs the Sluice binaries as separate processes against
// real servers, and injects the failures of production into them: killed
// and paused processes, Redis outages, evictions and resets, large rows. A
// package of its own, so that it runs beside package e2e.
package faults

import (
	"os"
	"testing"

	"github.com/sluicehq/sluice/e2e/harness"
)

func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }
